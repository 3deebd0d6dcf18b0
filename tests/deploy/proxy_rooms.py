"""Room-mode scale-out through a real load balancer (run by tests/deploy/nginx-rooms.sh).

Starts two peerjsd nodes (--rooms token --port 0 --host 127.0.0.1 --proxied
--allow-discovery) and nginx with config/nginx.conf (or HAProxy with config/haproxy.cfg),
whose node ports, listen address and file paths are substituted in a temp copy (every
substitution must match, so the shipped file stays the source of truth). Then, through the
proxy only:
  - GET /peerjs/id without a token answers (the PeerJS client's first request);
  - --rooms (default 100) rooms x 4 peers connect (ids p0..p3 in every room, a forged X-Forwarded-For on
    every upgrade) and all get OPEN;
  - asking both nodes directly (/peerjs/peers?token=ROOM, /metrics): each room's 4 peers
    are on one node, and the other node has none of them;
  - each node holds at least 25% of the rooms (the nodes' ports, and so nginx's hash ring,
    change every run: with 100 rooms a node falls below 25% about once in 10^5 runs even
    with a 45/55 ring, against once in 200 with 40 rooms);
  - every peer sends an OFFER to each of the 3 others; each receives exactly those 3, with the
    right src and its payload untouched, nothing from another room;
  - the nodes saw the proxy's address (127.0.0.1), never the forged one (--proxied takes the
    last X-Forwarded-For entry, which the proxy appends);
  - after the peers leave, SIGTERM stops node1 (exit 0), and at once peers of rooms that
    lived on node1 connect through the proxy and land, whole rooms, on node2 (nginx: passive
    failover; HAProxy: `option redispatch` before the health checks mark node1 down);
  - SIGTERM stops node2 with exit 0.
One line per check; exit 1 on the first failure. All processes are stopped on exit;
KEEP_LOGS=DIR keeps the generated proxy config and every log.
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wslite  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FORGED = "203.0.113.7"
PROCS = []


def ok(text):
    print(f"ok   {text}", flush=True)


class Failure(Exception):
    pass


def check(condition, text):
    if not condition:
        raise Failure(text)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv, log_path, **kwargs):
    log = open(log_path, "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)
    PROCS.append(proc)
    return proc


def stop_all():
    for proc in PROCS:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 5
    for proc in PROCS:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_node(binary, tmp, name):
    log_path = os.path.join(tmp, f"{name}.log")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "info"}
    proc = spawn([binary, "--rooms", "token", "--port", "0", "--host", "127.0.0.1", "--proxied",
                  "--allow-discovery"], log_path, env=env)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(log_path) as f:
            first = f.readline()
        if first.endswith("\n"):
            line = json.loads(first)
            check(line.get("message") == "listening", f"{name}: first log line is not 'listening': {first}")
            return proc, int(line["addr"].rsplit(":", 1)[1]), log_path
        check(proc.poll() is None, f"{name}: exited at start: {open(log_path).read()}")
        time.sleep(0.05)
    raise Failure(f"{name}: no listening line within 10s")


def substitute(text, replacements, source):
    for old, new, count in replacements:
        found = text.count(old)
        check(found == count, f"{source}: expected {count}x {old!r} to substitute, found {found}")
        text = text.replace(old, new)
    return text


def nginx_config(tmp, listen, node_ports):
    source = os.path.join(ROOT, "config", "nginx.conf")
    temp_paths = "".join(f"\n    {d}_temp_path {tmp}/{d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    replacements = [
        ("listen 80;", f"listen 127.0.0.1:{listen};", 1),
        ("listen [::]:80;", "", 1),
        ("server 127.0.0.1:9001 ", f"server 127.0.0.1:{node_ports[0]} ", 1),
        ("server 127.0.0.1:9002 ", f"server 127.0.0.1:{node_ports[1]} ", 1),
        ("pid /run/nginx-peerjsd.pid;", f"pid {tmp}/nginx.pid;", 1),
        ("/var/log/nginx/", f"{tmp}/", 2),
        ("\nhttp {", "\nhttp {" + temp_paths, 1),
    ]
    if os.geteuid() != 0:
        replacements.append(("user www-data;", "", 1))
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(substitute(open(source).read(), replacements, "config/nginx.conf"))
    return path


def haproxy_config(tmp, listen, node_ports):
    source = os.path.join(ROOT, "config", "haproxy.cfg")
    replacements = [
        ("bind :::80 v4v6", f"bind 127.0.0.1:{listen}", 1),
        ("server node1 127.0.0.1:9001", f"server node1 127.0.0.1:{node_ports[0]}", 1),
        ("server node2 127.0.0.1:9002", f"server node2 127.0.0.1:{node_ports[1]}", 1),
    ]
    if os.geteuid() != 0:
        replacements += [("    user haproxy\n", "", 1), ("    group haproxy\n", "", 1)]
    path = os.path.join(tmp, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(substitute(open(source).read(), replacements, "config/haproxy.cfg"))
    return path


def check_nginx_site_include(tmp, node_ports):
    """The other way config/nginx.conf says it can be used: its BEGIN/END http block as
    /etc/nginx/conf.d/peerjsd.conf under Debian's own nginx.conf (checked with nginx -t; needs
    root, as Debian's main file names its user, pid and logs)."""
    debian = "/etc/nginx/nginx.conf"
    if os.geteuid() != 0 or not os.path.exists(debian):
        print(f"skip nginx -t of the BEGIN/END http block under {debian} (needs root and Debian's nginx)", flush=True)
        return
    text = open(os.path.join(ROOT, "config", "nginx.conf")).read()
    check(text.count("# ---- BEGIN http") == 1 and text.count("# ---- END http") == 1,
          "config/nginx.conf: want one BEGIN http and one END http marker")
    block = text[text.index("# ---- BEGIN http"):]
    block = block[: block.index("\n", block.index("# ---- END http"))]
    block = substitute(block, [("/var/log/nginx/", f"{tmp}/", 1)], "config/nginx.conf BEGIN/END http")
    os.makedirs(os.path.join(tmp, "conf.d"))
    with open(os.path.join(tmp, "conf.d", "peerjsd.conf"), "w") as f:
        f.write(block)
    main = substitute(open(debian).read(), [("include /etc/nginx/conf.d/*.conf;", f"include {tmp}/conf.d/*.conf;", 1)], debian)
    with open(os.path.join(tmp, "debian-nginx.conf"), "w") as f:
        f.write(main)
    test = subprocess.run(["nginx", "-t", "-c", os.path.join(tmp, "debian-nginx.conf")], capture_output=True, text=True)
    warnings = [l for l in test.stderr.splitlines() if "[warn]" in l or "[emerg]" in l or "[alert]" in l]
    check(test.returncode == 0 and not warnings, f"nginx -t with the block in Debian's nginx.conf: {test.stderr}")
    ok(f"nginx -t: the BEGIN/END http block as conf.d/peerjsd.conf under {debian}: syntax ok, no warnings")


def start_proxy(kind, tmp, node_ports):
    listen = free_port()
    if kind == "nginx":
        conf = nginx_config(tmp, listen, node_ports)
        test = subprocess.run(["nginx", "-t", "-p", tmp, "-c", conf], capture_output=True, text=True)
        lines = [l for l in test.stderr.splitlines() if l.strip()]
        check(test.returncode == 0, f"nginx -t: {test.stderr}")
        warnings = [l for l in lines if "[warn]" in l or "[emerg]" in l or "[alert]" in l]
        check(not warnings, f"nginx -t printed warnings: {warnings}")
        ok(f"nginx -t -c <config/nginx.conf, ports/paths substituted>: {' / '.join(l.split(': ', 1)[-1] for l in lines)}")
        check_nginx_site_include(tmp, node_ports)
        proxy = spawn(["nginx", "-p", tmp, "-c", conf, "-g", "daemon off;"], os.path.join(tmp, "nginx.out"))
    else:
        conf = haproxy_config(tmp, listen, node_ports)
        test = subprocess.run(["haproxy", "-c", "-f", conf], capture_output=True, text=True)
        check(test.returncode == 0, f"haproxy -c: {test.stdout}{test.stderr}")
        check("[WARNING]" not in test.stdout + test.stderr, f"haproxy -c printed warnings: {test.stdout}{test.stderr}")
        ok(f"haproxy -c -f <config/haproxy.cfg, ports substituted>: {(test.stdout + test.stderr).strip()}")
        proxy = spawn(["haproxy", "-db", "-f", conf], os.path.join(tmp, "haproxy.out"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        check(proxy.poll() is None, f"{kind} exited at start: {open(os.path.join(tmp, kind + '.out')).read()}")
        try:
            socket.create_connection(("127.0.0.1", listen), 0.2).close()
            return listen
        except OSError:
            time.sleep(0.05)
    raise Failure(f"{kind}: not listening on {listen} within 10s")


def http_get(port, target, headers=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{target}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def run(kind, binary, rooms, tmp):
    nodes = [start_node(binary, tmp, f"node{i + 1}") for i in range(2)]
    node_ports = [port for _, port, _ in nodes]
    ok(f"two nodes: peerjsd --rooms token --proxied on 127.0.0.1:{node_ports[0]} and :{node_ports[1]}")
    proxy = start_proxy(kind, tmp, node_ports)
    ok(f"{kind} listening on 127.0.0.1:{proxy}, upstream hash on the token")

    # The PeerJS client's first request: no token, any node may answer.
    for _ in range(6):
        status, body = http_get(proxy, "/peerjs/id")
        check(status == 200 and re.fullmatch(r"[0-9a-f-]{36}", body), f"GET /peerjs/id via {kind}: {status} {body!r}")
    # Both configs say that requests without a token go round-robin: check in the proxy's log.
    log_path = os.path.join(tmp, "peerjsd-access.log" if kind == "nginx" else "haproxy.out")
    deadline = time.monotonic() + 2
    while True:
        lines = [l for l in open(log_path) if "GET /peerjs/id" in l]
        if len(lines) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if kind == "nginx":
        served = [re.search(r'"127\.0\.0\.1:(\d+)"$', l.strip()) for l in lines]
        served = [node_ports.index(int(m.group(1))) + 1 for m in served if m]
    else:
        served = [int(m.group(1)) for m in (re.search(r" peerjsd/node(\d) ", l) for l in lines) if m]
    check(len(served) == 6 and set(served) == {1, 2},
          f"GET /peerjs/id without a token: {kind} log shows nodes {served}; want 6 requests over both nodes")
    ok(f"GET /peerjs/id without a token via {kind}: 200 and a UUID, 6 of 6, answered by both nodes "
       f"({served.count(1)} node1, {served.count(2)} node2: no token -> round-robin)")
    status, _ = http_get(proxy, "/metrics")
    check(status == 403, f"GET /metrics via {kind}: {status}, want 403")
    ok(f"GET /metrics via {kind}: 403 (scrape nodes directly)")

    # Connect every peer of every room through the proxy.
    names = [f"room-{r}" for r in range(rooms)]
    ids = ["p0", "p1", "p2", "p3"]
    sockets = {}

    async def join(room, peer):
        ws = await wslite.connect("127.0.0.1", proxy, f"/peerjs?key=peerjs&id={peer}&token={room}",
                                  headers={"X-Forwarded-For": FORGED})
        first = await asyncio.wait_for(ws.recv(), 5)
        check(first == '{"type":"OPEN"}', f"{room}/{peer}: first message {first!r}, want OPEN")
        sockets[(room, peer)] = ws

    await asyncio.gather(*(join(room, peer) for room in names for peer in ids))
    ok(f"{rooms} rooms x {len(ids)} peers connected through {kind}: {len(sockets)} OPEN")

    # Where did each room land? Ask both nodes directly.
    placement = {}
    for room in names:
        lists = [json.loads(http_get(port, f"/peerjs/peers?token={room}")[1]) for port in node_ports]
        holders = [i for i, listed in enumerate(lists) if listed]
        check(len(holders) == 1 and sorted(lists[holders[0]]) == ids,
              f"{room}: node1 lists {lists[0]}, node2 lists {lists[1]}; want all of {ids} on one node")
        placement[room] = holders[0]
    per_node = [sum(1 for n in placement.values() if n == i) for i in range(2)]
    ok(f"every room's {len(ids)} peers are on one node (GET /peerjs/peers?token=ROOM on both nodes, {rooms} rooms)")
    for i, port in enumerate(node_ports):
        metrics = json.loads(http_get(port, "/metrics")[1])["metrics"]
        check(metrics["activePeers"] == per_node[i] * len(ids) and metrics["activeRooms"] == per_node[i],
              f"node{i + 1} /metrics {metrics}: want {per_node[i]} rooms, {per_node[i] * len(ids)} peers")
    ok(f"/metrics agree: node1 {per_node[0]} rooms / {per_node[0] * len(ids)} peers, node2 {per_node[1]} rooms / {per_node[1] * len(ids)} peers")
    check(min(per_node) >= rooms / 4, f"rooms per node {per_node}: want each node at least 25% of {rooms}")
    ok(f"rooms spread over both nodes: {per_node[0]} and {per_node[1]} of {rooms} (each at least 25%)")

    # Signal: every peer offers to each other peer of its room.
    for (room, src), ws in sockets.items():
        for dst in ids:
            if dst != src:
                payload = {"type": "offer", "sdp": f"v=0 {room} {src}->{dst}", "connectionId": f"dc_{src}{dst}"}
                await ws.send_text(json.dumps({"type": "OFFER", "dst": dst, "payload": payload}))

    async def receive(room, peer, ws):
        got = []
        while len(got) < len(ids) - 1:
            text = await asyncio.wait_for(ws.recv(), 5)
            check(text is not None, f"{room}/{peer}: socket closed {ws.closed} while waiting for OFFERs")
            got.append(json.loads(text))
        for message in got:
            src = message.get("src")
            want = {"type": "OFFER", "src": src, "dst": peer,
                    "payload": {"type": "offer", "sdp": f"v=0 {room} {src}->{peer}", "connectionId": f"dc_{src}{peer}"}}
            check(message == want, f"{room}/{peer}: got {message}, want {want}")
        check(sorted(m["src"] for m in got) == [p for p in ids if p != peer],
              f"{room}/{peer}: OFFERs from {[m['src'] for m in got]}")

    await asyncio.gather(*(receive(room, peer, ws) for (room, peer), ws in sockets.items()))
    count = len(sockets) * (len(ids) - 1)
    ok(f"signaling through {kind}: {count} OFFERs, each peer got exactly its 3 with the right src and payload")

    # --proxied: the nodes saw the proxy's address, not the forged header.
    ips = []
    for _, _, log_path in nodes:
        for line in open(log_path):
            event = json.loads(line)
            if event.get("message") == "peer open":
                ips.append(event.get("ip"))
    check(len(ips) == len(sockets) and set(ips) == {"127.0.0.1"},
          f"peer open log lines: {len(ips)}, ips {sorted(set(map(str, ips)))}; want {len(sockets)} from 127.0.0.1")
    ok(f"--proxied: all {len(ips)} 'peer open' lines show ip 127.0.0.1 (the proxy's X-Forwarded-For entry), "
       f"never the forged {FORGED}")

    await asyncio.gather(*(ws.close() for ws in sockets.values()))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        active = [json.loads(http_get(port, "/metrics")[1])["metrics"]["activePeers"] for port in node_ports]
        if active == [0, 0]:
            break
        await asyncio.sleep(0.05)
    check(active == [0, 0], f"activePeers after every peer left: {active}")
    ok("peers left: activePeers 0 on both nodes")

    # Failover: stop node1; at once (before any health check could notice), peers of rooms
    # that lived there reach node2 through the proxy, all of a room's peers together.
    nodes[0][0].send_signal(signal.SIGTERM)
    code = nodes[0][0].wait(15)
    check(code == 0, f"node1 exit code after SIGTERM: {code}")
    moved = [room for room in names if placement[room] == 0][:5]
    sockets = {}
    await asyncio.gather(*(join(room, peer) for room in moved for peer in ids))
    for room in moved:
        listed = json.loads(http_get(node_ports[1], f"/peerjs/peers?token={room}")[1])
        check(sorted(listed) == ids, f"{room} after node1 stopped: node2 lists {listed}, want {ids}")
    await asyncio.gather(*(ws.close() for ws in sockets.values()))
    ok(f"failover: node1 stopped (SIGTERM, exit 0); at once {len(moved)} of its rooms x {len(ids)} peers "
       f"joined through {kind} and got OPEN, each room whole on node2")
    nodes[1][0].send_signal(signal.SIGTERM)
    code = nodes[1][0].wait(15)
    check(code == 0, f"node2 exit code after SIGTERM: {code}")
    ok("SIGTERM: node2 exits 0")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy", choices=["nginx", "haproxy"], default="nginx")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "peerjsd"))
    args = parser.parse_args()

    def terminated(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGHUP, terminated)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"peerjsd-{args.proxy}-") as tmp:
        os.chmod(tmp, 0o755)
        try:
            asyncio.run(run(args.proxy, args.bin, args.rooms, tmp))
        except (Failure, wslite.HandshakeError, asyncio.TimeoutError, OSError) as error:
            print(f"FAIL {type(error).__name__}: {error}" if not isinstance(error, Failure) else f"FAIL {error}", flush=True)
            for name in sorted(os.listdir(tmp)):
                if name.endswith((".log", ".out")):
                    tail = open(os.path.join(tmp, name), errors="replace").read().splitlines()[-5:]
                    print(f"---- {name} (last lines)\n" + "\n".join(tail), flush=True)
            return 1
        except KeyboardInterrupt:
            print("FAIL interrupted", flush=True)
            return 130
        finally:
            stop_all()
            if os.environ.get("KEEP_LOGS"):  # KEEP_LOGS=DIR keeps the configs and logs
                shutil.copytree(tmp, os.environ["KEEP_LOGS"], dirs_exist_ok=True)
    ok(f"{args.proxy}-rooms: all checks passed in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
