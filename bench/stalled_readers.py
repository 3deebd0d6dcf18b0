#!/usr/bin/env python3
"""Memory of a peerjsd holding many peers that stop reading after one large frame each.

Starts peerjsd (release build) with the flags given after `--`, connects PEERS WebSocket peers
whose sockets have a 2 KB receive buffer, has each of them read OPEN and then never read again,
sends each one frame of FRAME bytes from a few sender peers, and prints the server's RSS every
half second: while the frames wait (bounded by --max-outbound-bytes per peer), after
--write-timeout closes the stalled peers, and after everyone has gone.

    python3 bench/stalled_readers.py --peers 19000 --frame 250000 -- --max-message-size 262144

Needs ~PEERS+50 open files (the machine's limit is 20,000 per process) and nothing else than
Python 3. Standard library only.
"""

import argparse
import asyncio
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BINARY = os.path.join(HERE, "..", "target", "release", "peerjsd")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def text_frame(text):
    """A client text frame, masked with the all-zero key (legal, and no copy to mask)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x81, 0x80 | 127]) + struct.pack(">Q", n)
    return head + b"\0\0\0\0" + payload


async def connect(port, peer_id, source, rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        (
            f"GET /peerjs?key=peerjs&id={peer_id}&token=t{peer_id} HTTP/1.1\r\nHost: x\r\n"
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    head = await reader.readexactly(2)
    await reader.readexactly(head[1] & 0x7F)  # {"type":"OPEN"}
    return reader, writer


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=19000)
    ap.add_argument("--frame", type=int, default=250_000, help="bytes of each large frame")
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--port", type=int, default=9411)
    ap.add_argument("server_args", nargs="*", help="extra peerjsd flags, after --")
    args = ap.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1:] * 2)

    server = subprocess.Popen(
        [BINARY, "--port", str(args.port), "--host", "127.0.0.1", "--rate-limit", "0",
         "--max-connections-per-ip", "0", "--log-format", "text", *args.server_args],
        stdout=open(os.environ.get("SERVER_LOG", os.devnull), "w"), stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
    )
    pid = server.pid
    started = time.monotonic()

    def line(what):
        print(f"{time.monotonic() - started:7.1f} s  RSS {rss_kib(pid) / 1024:8.1f} MiB  fds {fds(pid):6}  {what}", flush=True)

    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", args.port), timeout=0.1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        line("started")
        # Sources 127.0.0.2.. spread the client ports (and TIME_WAITs of earlier runs).
        source = lambda n: f"127.0.{1 + n // 250}.{2 + n % 250}"
        sinks = []
        batch = 200
        for start in range(0, args.peers, batch):
            sinks += await asyncio.gather(*(connect(args.port, f"sink{n}", source(n), rcvbuf=2048)
                                            for n in range(start, min(start + batch, args.peers))))
        line(f"{len(sinks)} peers connected (they read nothing more)")
        senders = [await connect(args.port, f"src{n}", "127.0.0.1") for n in range(args.senders)]
        pad = "x" * args.frame

        async def send_all(k):
            _, writer = senders[k]
            for n in range(k, args.peers, args.senders):
                writer.write(text_frame(json.dumps({"type": "OFFER", "dst": f"sink{n}", "payload": pad})))
                await writer.drain()

        sending = asyncio.gather(*(send_all(k) for k in range(args.senders)))
        peak = 0
        while not sending.done():
            await asyncio.sleep(0.5)
            peak = max(peak, rss_kib(pid))
            line("sending")
        line(f"all {args.peers} frames sent; peak so far {peak / 1024:.1f} MiB")
        for _ in range(60):
            await asyncio.sleep(0.5)
            peak = max(peak, rss_kib(pid))
            line("waiting for --write-timeout")
            if fds(pid) < args.peers // 2:
                break
        for _ in range(4):
            await asyncio.sleep(0.5)
            line("stalled peers closed")
        for _, writer in sinks + senders:
            writer.close()
        await asyncio.sleep(2)
        line("all clients closed")
        print(f"peak RSS {peak / 1024:.1f} MiB for {args.peers} stalled peers, "
              f"{peak / args.peers:.1f} KiB per peer (frame {args.frame} bytes)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
