#!/usr/bin/env python3
"""What one Prometheus scrape of /metrics costs the server, with few and with many open sockets.

Starts a peerjsd binary (release build by default, or --binary, e.g. an older build to compare
with) on a free port, pinned to CPU 0, opens PEERS idle WebSocket peers (each completes the
upgrade and reads OPEN; spread over 127.0.0.2… so that per-address limits do not apply), then
scrapes /metrics (Prometheus text) on CONNS kept-alive connections, pipelining DEPTH requests
each, for SECONDS, and prints the server's CPU per scrape (utime+stime from /proc/<pid>/stat,
10 ms ticks, over the window) and the scrape rate. Run once with --peers 0 and once with
--peers 16000, for each binary.

    python3 bench/scrape_cost.py --peers 16000
    python3 bench/scrape_cost.py --peers 16000 --binary /tmp/peerjsd-before

Needs ~PEERS+50 open files (the machine's limit is 20,000 per process). Standard library only.
"""

import argparse
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BINARY = os.path.join(HERE, "..", "target", "release", "peerjsd")
SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain;version=0.0.4\r\n\r\n"


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_peer(port, n):
    source = f"127.0.0.{2 + n // 400}"
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(
        (
            f"GET /peerjs?key=peerjs&id=idle{n}&token=t HTTP/1.1\r\nHost: x\r\n"
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ).encode()
    )
    seen = b""
    while b'{"type":"OPEN"}' not in seen:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"peer {n} closed: {seen!r}")
        seen += chunk
    return s


def scrape_window(port, conns, depth, seconds):
    """Pipelines `depth` scrapes on each of `conns` connections until `seconds` pass; returns
    the number of complete answers."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    answered = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for s in socks:
            s.sendall(SCRAPE * depth)
        for s in socks:
            got = 0
            buf = b""
            while got < depth:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise RuntimeError("server closed a scrape connection")
                buf += chunk
                # Each answer ends with the OpenMetrics EOF line.
                got = buf.count(b"# EOF\n")
            answered += depth
    for s in socks:
        s.close()
    return answered


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=BINARY)
    ap.add_argument("--peers", type=int, default=0)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()

    port = free_port()
    server = subprocess.Popen(
        [
            "taskset", "-c", "0", args.binary, "--port", str(port), "--host", "127.0.0.1",
            "--max-connections-per-ip", "0", "--alive-timeout", "600000", "--rate-limit", "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        peers = [open_peer(port, n) for n in range(args.peers)]
        # A first scrape so that any one-time work is out of the window.
        scrape_window(port, 1, 1, 0.001)
        open_fds = fds(server.pid)
        before = cpu_ticks(server.pid)
        started = time.monotonic()
        answered = scrape_window(port, args.conns, args.depth, args.seconds)
        elapsed = time.monotonic() - started
        ticks = cpu_ticks(server.pid) - before
        cpu_ms = ticks * 10.0
        print(
            f"{os.path.basename(args.binary)}: {open_fds} fds, {answered} scrapes in {elapsed:.1f} s "
            f"({answered / elapsed:.0f}/s on {args.conns} connections x {args.depth} pipelined): "
            f"server CPU {cpu_ms:.0f} ms = {1000 * cpu_ms / answered:.1f} us/scrape, "
            f"{cpu_ms / elapsed / 10:.0f}% of a core"
        )
        del peers
    finally:
        server.terminate()
        server.wait(timeout=15)


if __name__ == "__main__":
    sys.exit(main())
