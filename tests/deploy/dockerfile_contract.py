"""Reads the runtime contract out of the Dockerfile, for tests/deploy/docker-smoke.sh.

    python3 -B dockerfile_contract.py Dockerfile .dockerignore

Parses the final stage (ENTRYPOINT, CMD, ENV, USER, EXPOSE, STOPSIGNAL, HEALTHCHECK, COPY),
checks the rules the image must follow, and prints bash assignments for the smoke test to
`eval`:

    ENTRYPOINT=(…) CMD=(…) IMAGE_ENV=(K=V …) IMAGE_UID=… IMAGE_GID=… EXPOSED=(…)
    STOP_SIGNAL=… HC=(argv…) HC_TIMEOUT=<seconds> PATHMAP=(image_path=repo_path …)

PATHMAP maps the files the final stage copies to where they are in this checkout (a builder
stage's WORKDIR is the repo root), so the smoke test runs the same binary and config file.
On a rule violation it prints `FAIL …` lines to stderr and exits 1.
"""

import fnmatch
import json
import os
import re
import shlex
import sys


def instructions(text):
    """(keyword, rest) per instruction; comments dropped, continuation lines joined."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, rest = buf.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    return out


def stages(text):
    result = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(result))
            result.append({"base": words[0], "name": name, "workdir": "/", "ins": []})
        elif result:
            if keyword == "WORKDIR":
                result[-1]["workdir"] = os.path.join(result[-1]["workdir"], rest)
            result[-1]["ins"].append((keyword, rest))
    return result


def exec_form(rest, what, errors):
    try:
        value = json.loads(rest)
    except json.JSONDecodeError:
        errors.append(f"{what} is not in exec (JSON) form: {rest}")
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors.append(f"{what} is not a JSON list of strings: {rest}")
        return []
    return value


def parse_env(rest):
    words = shlex.split(rest)
    if words and "=" not in words[0]:  # legacy `ENV KEY value…`
        return [(words[0], " ".join(words[1:]))]
    return [tuple(w.split("=", 1)) for w in words]


def duration_seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def ignored(path, patterns):
    """Approximates Docker's .dockerignore matching (last matching pattern wins; a pattern
    matching a parent directory excludes everything below it)."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex_pattern = pattern.replace("**/", "*").replace("/**", "/*")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, regex_pattern) for p in prefixes):
            result = not negate
    return result


def main(dockerfile, dockerignore):
    errors = []
    all_stages = stages(open(dockerfile).read())
    if not all_stages:
        sys.exit("FAIL no FROM in the Dockerfile")
    final = all_stages[-1]
    by_name = {s["name"]: s for s in all_stages}
    entrypoint, cmd, env, user, exposed, stop, hc, hc_timeout, pathmap = (
        None, [], [], None, [], None, None, 30.0, [])
    context_sources = []
    for keyword, rest in final["ins"]:
        if keyword == "ENTRYPOINT":
            entrypoint = exec_form(rest, "ENTRYPOINT", errors)
        elif keyword == "CMD":
            cmd = exec_form(rest, "CMD", errors)
        elif keyword == "ENV":
            env += parse_env(rest)
        elif keyword == "USER":
            user = rest
        elif keyword == "EXPOSE":
            exposed += rest.split()
        elif keyword == "STOPSIGNAL":
            stop = rest
        elif keyword == "HEALTHCHECK":
            match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(.+)", rest, re.S | re.I)
            if not match:
                errors.append(f"HEALTHCHECK without CMD: {rest}")
                continue
            for option in match.group(1).split():
                if option.startswith("--timeout="):
                    hc_timeout = duration_seconds(option.split("=", 1)[1])
            command = match.group(2).strip()
            hc = exec_form(command, "HEALTHCHECK CMD", errors) if command.startswith("[") else [
                "/bin/sh", "-c", command]
        elif keyword == "COPY":
            words = shlex.split(rest)
            options = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            *sources, dest = paths
            source_stage = next((o.split("=", 1)[1] for o in options if o.startswith("--from=")), None)
            for source in sources:
                target = os.path.join(dest, os.path.basename(source)) if dest.endswith("/") else dest
                if source_stage is None:
                    local = source
                    context_sources.append(source)
                elif source_stage in by_name:
                    workdir = by_name[source_stage]["workdir"].rstrip("/") + "/"
                    if not source.startswith(workdir):
                        errors.append(f"COPY --from={source_stage} {source}: outside its WORKDIR {workdir}")
                        continue
                    local = source[len(workdir):]
                else:
                    errors.append(f"COPY --from={source_stage}: not a stage of this Dockerfile")
                    continue
                pathmap.append(f"{target}={local}")

    # The rules the image must follow.
    if entrypoint is None:
        errors.append("no ENTRYPOINT in the final stage")
    elif not entrypoint:
        errors.append("empty ENTRYPOINT")
    elif any(a.startswith("-") for a in entrypoint[1:] + cmd):
        errors.append(f"ENTRYPOINT/CMD pass flags {entrypoint[1:] + cmd}: a flag beats the PEERJSD_* "
                      "environment, so the image must pass none")
    shadowing = [k for k, _ in env if k in ("PORT", "PEERSERVER_PATH", "ALLOWED_ORIGINS")
                 or (k.startswith("PEERJSD_") and k != "PEERJSD_CONFIG")]
    if shadowing:
        errors.append(f"ENV sets {shadowing}: that would beat a mounted config file")
    if user is None:
        errors.append("no USER: the image would run as root")
        uid = gid = ""
    else:
        uid, _, gid = user.partition(":")
        if not uid.isdigit() or uid == "0" or (gid and not gid.isdigit()):
            errors.append(f"USER {user}: want a numeric non-root uid[:gid]")
    if "9000" not in [e.split("/")[0] for e in exposed]:
        errors.append(f"EXPOSE {exposed}: want 9000")
    if stop != "SIGTERM":
        errors.append(f"STOPSIGNAL {stop}: want SIGTERM")
    if not hc:
        errors.append("no HEALTHCHECK")
    if not final["base"].startswith(("debian:", "gcr.io/distroless/")):
        errors.append(f"runtime base {final['base']}: expected a Debian slim or distroless image")
    codenames = {"bullseye": "debian11", "bookworm": "debian12", "trixie": "debian13"}
    releases = {next((c for c, n in codenames.items() if c in s["base"] or n in s["base"]), None)
                for s in all_stages}
    if None in releases or len(releases) != 1:
        errors.append(f"stages {[s['base'] for s in all_stages]} do not name one Debian release "
                      "(the binary must link against the runtime's glibc)")

    patterns = [l.strip() for l in open(dockerignore).read().splitlines()
                if l.strip() and not l.strip().startswith("#")]
    for stage in all_stages:
        for keyword, rest in stage["ins"]:
            if keyword in ("COPY", "ADD") and "--from=" not in rest:
                for source in shlex.split(rest)[:-1]:
                    if not source.startswith("--") and ignored(source.rstrip("/"), patterns):
                        errors.append(f"{keyword} {source}: excluded by .dockerignore")

    for e in errors:
        print(f"FAIL Dockerfile: {e}", file=sys.stderr)
    if errors:
        sys.exit(1)

    q = lambda items: "(" + " ".join(shlex.quote(i) for i in items) + ")"
    print(f"ENTRYPOINT={q(entrypoint)}")
    print(f"CMD={q(cmd)}")
    print(f"IMAGE_ENV={q([f'{k}={v}' for k, v in env])}")
    print(f"IMAGE_UID={shlex.quote(uid)}")
    print(f"IMAGE_GID={shlex.quote(gid or uid)}")
    print(f"EXPOSED={q(exposed)}")
    print(f"STOP_SIGNAL={shlex.quote(stop)}")
    print(f"HC={q(hc)}")
    print(f"HC_TIMEOUT={hc_timeout:g}")
    print(f"PATHMAP={q(pathmap)}")
    print(f"RUNTIME_BASE={shlex.quote(final['base'])}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
