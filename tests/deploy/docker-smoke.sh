#!/usr/bin/env bash
# Runs the container's runtime contract without Docker.
#
# Reads the final stage of ./Dockerfile (tests/deploy/dockerfile_contract.py: ENTRYPOINT, CMD,
# ENV, USER, EXPOSE, STOPSIGNAL, HEALTHCHECK and the COPYs that place the binary and config
# file), checks its rules (exec-form ENTRYPOINT, no flags and no PORT/PEERJSD_* settings baked
# in, numeric non-root USER, EXPOSE 9000, STOPSIGNAL SIGTERM, same Debian release in both
# stages, every COPY source kept by .dockerignore), then runs target/release/peerjsd exactly
# as the image would — that argv, only that environment (plus the variables under test), as
# the image's uid when run as root — and checks:
#   - PORT=9100 and PEERJSD_ROOMS=token are honoured (the "listening" log line);
#   - the HEALTHCHECK command, run as the container runs it, succeeds against the server and
#     fails once it is gone;
#   - SIGTERM (the STOPSIGNAL) closes an open PeerJS socket with 1001 and exits 0 within the
#     shutdown timeout;
#   - arguments appended as with `docker run IMAGE --port 0` reach the server and beat the
#     environment;
#   - with PEERJSD_SSLKEY/PEERJSD_SSLCERT the HEALTHCHECK speaks https (skipped while the
#     build does not serve TLS yet).
#
# What it cannot check (no Docker engine here): that the image builds (the rust:1-bookworm
# builder, the dependency-caching stub, apt-get in debian:bookworm-slim); that the image's
# own curl, /bin/sh and glibc behave like this host's (both are Debian 12 here); PID 1
# signal handling inside a PID namespace (peerjsd installs its own SIGTERM handler, so the
# kernel's PID 1 default does not apply); the Docker daemon's healthcheck scheduling
# (--interval/--retries/--start-period); the port publishing of EXPOSE. The image itself is
# linted by hadolint (see scripts/test).
#
# Usage: tests/deploy/docker-smoke.sh   (SMOKE_PORT=9100 by default; a busy port is replaced
# by a free one). Needs cargo, python3, curl; openssl for the TLS check; root for the uid switch.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONDONTWRITEBYTECODE=1

pass() { printf 'ok   %s\n' "$*"; }
skip() { printf 'skip %s\n' "$*"; }
fail() {
  printf 'FAIL %s\n' "$*"
  exit 1
}

for tool in python3 curl setpriv; do
  command -v "$tool" >/dev/null || fail "$tool not found (apt-get install -y python3 curl util-linux)"
done

# --- the contract, from the Dockerfile ------------------------------------------------------
contract=$(python3 tests/deploy/dockerfile_contract.py Dockerfile .dockerignore) ||
  fail "Dockerfile rules (see above)"
eval "$contract"
pass "Dockerfile: exec-form ENTRYPOINT ${ENTRYPOINT[*]}, no baked-in flags or PORT/PEERJSD_* overrides, USER $IMAGE_UID:$IMAGE_GID, EXPOSE ${EXPOSED[*]}, STOPSIGNAL $STOP_SIGNAL, HEALTHCHECK, one Debian release, COPY sources kept by .dockerignore"

# Image paths -> paths in this checkout.
local_path() {
  local entry
  for entry in "${PATHMAP[@]}"; do
    if [ "${entry%%=*}" = "$1" ]; then
      printf '%s\n' "$PWD/${entry#*=}"
      return
    fi
  done
  printf '%s\n' "$1"
}

cargo build --release --bin peerjsd --quiet
argv=("$(local_path "${ENTRYPOINT[0]}")" "${ENTRYPOINT[@]:1}" "${CMD[@]}")
[ -x "${argv[0]}" ] || fail "ENTRYPOINT ${ENTRYPOINT[0]} maps to ${argv[0]}, which is not an executable"
base_env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOSTNAME=peerjsd-smoke HOME=/nonexistent)
for kv in "${IMAGE_ENV[@]}"; do
  value=$(local_path "${kv#*=}")
  [[ "${kv#*=}" != /* || -e "$value" ]] || fail "ENV ${kv%%=*} names ${kv#*=}, which the image does not COPY"
  base_env+=("${kv%%=*}=$value")
done

# As the image's user when we can switch to it.
as_user=()
if [ "$(id -u)" = 0 ]; then
  as_user=(setpriv "--reuid=$IMAGE_UID" "--regid=$IMAGE_GID" --clear-groups --)
  "${as_user[@]}" test -x "${argv[0]}" || fail "uid $IMAGE_UID cannot execute ${argv[0]}"
else
  skip "running as uid $(id -u), not the image's uid $IMAGE_UID (run as root to switch)"
fi

tmp=$(mktemp -d)
chmod 755 "$tmp"
server_pid=
hold_pid=
cleanup() {
  [ -n "$hold_pid" ] && kill "$hold_pid" 2>/dev/null
  [ -n "$server_pid" ] && kill -KILL "$server_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=${SMOKE_PORT:-9100}
if ! port_free "$port"; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
  skip "port ${SMOKE_PORT:-9100} is busy on this machine; using $port for PORT"
fi

# start NAME ENV… -- ARGS…: runs the image's argv (+ARGS) with only the image's ENV (+ENV).
start() {
  local name=$1 extra_env=() extra_args=()
  shift
  while [ "$1" != -- ]; do
    extra_env+=("$1")
    shift
  done
  shift
  extra_args=("$@")
  "${as_user[@]}" env -i "${base_env[@]}" "${extra_env[@]}" "${argv[@]}" "${extra_args[@]}" \
    >"$tmp/$name.log" 2>"$tmp/$name.err" &
  server_pid=$!
  for _ in $(seq 100); do
    [ -s "$tmp/$name.log" ] && break
    kill -0 "$server_pid" 2>/dev/null || fail "$name: exited at start: $(cat "$tmp/$name.err")"
    sleep 0.1
  done
  first=$(head -n 1 "$tmp/$name.log")
  [ -n "$first" ] || fail "$name: no log line within 10s"
  listen_addr=$(python3 -c 'import json,sys; l = json.loads(sys.argv[1]); assert l["message"] == "listening", l; print(l["addr"])' "$first") ||
    fail "$name: first line is not the listening line: $first"
  listen_rooms=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("rooms"))' "$first")
  listen_port=${listen_addr##*:}
}

# healthcheck ENV…: the HEALTHCHECK command, run as the container runs it (its user, its env).
healthcheck() {
  timeout "$HC_TIMEOUT" "${as_user[@]}" env -i "${base_env[@]}" "$@" "${HC[@]}" >/dev/null 2>&1
}

# stop NAME: STOPSIGNAL, then the exit code and how long it took.
stop() {
  local name=$1 started rc
  started=$(date +%s%N)
  kill "-${STOP_SIGNAL#SIG}" "$server_pid"
  rc=0
  wait "$server_pid" || rc=$?
  server_pid=
  stop_ms=$((($(date +%s%N) - started) / 1000000))
  stop_rc=$rc
}

# The drain limit the image runs with: the config file's shutdown-timeout (default 10s).
config_file=
for kv in "${base_env[@]}"; do [ "${kv%%=*}" = PEERJSD_CONFIG ] && config_file=${kv#*=}; done
shutdown_timeout_ms=$(python3 - "$config_file" <<'EOF2'
import sys, tomllib
value = tomllib.load(open(sys.argv[1], "rb")).get("shutdown-timeout", "10s") if sys.argv[1] else "10s"
units = {"ms": 1, "s": 1000, "m": 60000}
for unit in ("ms", "s", "m"):
    if isinstance(value, str) and value.endswith(unit):
        print(int(float(value[: -len(unit)]) * units[unit]))
        break
else:
    print(int(value))
EOF2
)

# --- 1. environment honoured, healthcheck, drain on SIGTERM ---------------------------------
start env "PORT=$port" PEERJSD_ROOMS=token --
[ "$listen_port" = "$port" ] || fail "PORT=$port not honoured: listening on $listen_addr"
[ "$listen_rooms" = token ] || fail "PEERJSD_ROOMS=token not honoured: rooms=$listen_rooms"
pass "PORT=$port PEERJSD_ROOMS=token honoured: listening on $listen_addr, rooms=$listen_rooms"
if [ -n "${as_user[*]}" ]; then
  uid=$(awk '/^Uid:/ { print $2 }' "/proc/$server_pid/status")
  [ "$uid" = "$IMAGE_UID" ] || fail "server runs as uid $uid, want $IMAGE_UID"
  pass "server runs as uid $uid (USER $IMAGE_UID:$IMAGE_GID)"
fi
healthcheck "PORT=$port" PEERJSD_ROOMS=token || fail "HEALTHCHECK command failed against the running server"
body=$(curl -fsS "http://127.0.0.1:$port/health")
[[ "$body" == '{"status":"ok"'* ]] || fail "/health answered $body"
pass "HEALTHCHECK command succeeds (exit 0); /health: $body"

python3 tests/deploy/wslite.py hold 127.0.0.1 "$port" "/peerjs?key=peerjs&id=smoke1&token=room1" >"$tmp/hold.out" 2>&1 &
hold_pid=$!
for _ in $(seq 50); do
  grep -q '^open' "$tmp/hold.out" && break
  sleep 0.1
done
grep -q '^open' "$tmp/hold.out" || fail "PeerJS socket did not open: $(cat "$tmp/hold.out")"
stop env
wait "$hold_pid" || true
hold_pid=
[ "$stop_rc" = 0 ] || fail "$STOP_SIGNAL: exit code $stop_rc (want 0); stderr: $(cat "$tmp/env.err")"
[ "$stop_ms" -le "$((shutdown_timeout_ms + 1000))" ] || fail "$STOP_SIGNAL: took ${stop_ms}ms, shutdown timeout is ${shutdown_timeout_ms}ms"
grep -q '^close 1001' "$tmp/hold.out" || fail "open socket was not closed with 1001: $(cat "$tmp/hold.out")"
pass "$STOP_SIGNAL with a PeerJS socket open: it got close $(sed -n 's/^close //p' "$tmp/hold.out"); exit 0 after ${stop_ms}ms (limit ${shutdown_timeout_ms}ms)"
if healthcheck "PORT=$port"; then fail "HEALTHCHECK command succeeds with no server"; fi
pass "HEALTHCHECK command fails once the server is gone"

# --- 2. appended arguments (docker run IMAGE --port 0) reach the server and beat the env ----
start args "PORT=$port" -- --port 0
[ "$listen_port" != "$port" ] && [ "$listen_port" != 0 ] || fail "appended --port 0 did not beat PORT=$port: $listen_addr"
pass "appended args: 'docker run IMAGE --port 0' with PORT=$port listens on $listen_addr (flag beats env)"
stop args
[ "$stop_rc" = 0 ] || fail "$STOP_SIGNAL: exit code $stop_rc"
pass "$STOP_SIGNAL: exit 0 after ${stop_ms}ms"

# --- 3. TLS from the environment: the HEALTHCHECK switches to https -------------------------
if ! command -v openssl >/dev/null; then
  skip "TLS healthcheck: openssl not installed"
else
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
  chmod 644 "$tmp/key.pem" "$tmp/cert.pem"
  tls_env=("PORT=$port" "PEERJSD_SSLKEY=$tmp/key.pem" "PEERJSD_SSLCERT=$tmp/cert.pem")
  start tls "${tls_env[@]}" --
  if curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null; then
    skip "TLS healthcheck: this build accepts --sslkey/--sslcert but still serves plain http (TLS not landed yet)"
  else
    healthcheck "${tls_env[@]}" || fail "HEALTHCHECK command failed against the TLS server"
    pass "PEERJSD_SSLKEY/PEERJSD_SSLCERT: HEALTHCHECK command succeeds over https"
  fi
  stop tls
  [ "$stop_rc" = 0 ] || fail "$STOP_SIGNAL: exit code $stop_rc"
fi

pass "docker-smoke: the image's runtime contract holds (image build itself not tested: no Docker engine)"
