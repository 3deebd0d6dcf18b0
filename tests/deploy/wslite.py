"""A minimal asyncio WebSocket client (RFC 6455, client side only), standard library only.

Enough for the deployment tests: the upgrade handshake (with extra request headers, e.g. a
forged X-Forwarded-For), masked text frames out, text/close/ping frames in (pings answered).
No extensions, no TLS. Using only the standard library keeps the tests free of pip/npm
installs on CI.

As a script it holds one PeerJS peer open for tests/deploy/docker-smoke.sh:

    python3 -B wslite.py hold HOST PORT PATH_AND_QUERY

prints `open` when the server's OPEN arrives, then `close CODE REASON` when the server closes
the socket (or `eof` if the connection drops without a close frame), and exits.
"""

import asyncio
import base64
import hashlib
import os
import struct
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class HandshakeError(Exception):
    pass


class WebSocket:
    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        self.closed = None  # (code, reason) once a close frame arrived

    async def send_text(self, text):
        await self._send(0x1, text.encode())

    async def _send(self, opcode, payload):
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)
        await self.writer.drain()

    async def recv(self):
        """Next text message as str; None once the server closed (see .closed) or the
        connection ended."""
        message = b""
        while True:
            try:
                b0, b1 = await self.reader.readexactly(2)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            mask = await self.reader.readexactly(4) if b1 & 0x80 else None
            payload = await self.reader.readexactly(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.closed = (code, payload[2:].decode(errors="replace"))
                try:
                    await self._send(0x8, payload[:2])
                except ConnectionError:
                    pass
                return None
            if opcode == 0x9:
                await self._send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()

    async def close(self, code=1000):
        try:
            await self._send(0x8, struct.pack("!H", code))
        except ConnectionError:
            pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def connect(host, port, target, headers=None, timeout=5.0):
    """Opens ws://host:port{target}. Raises HandshakeError with the status line on refusal."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status, *fields = head.decode(errors="replace").split("\r\n")
    if not status.startswith("HTTP/1.1 101"):
        writer.close()
        raise HandshakeError(status)
    expected = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    accept = [f.split(":", 1)[1].strip() for f in fields if f.lower().startswith("sec-websocket-accept:")]
    if accept != [expected]:
        writer.close()
        raise HandshakeError(f"bad Sec-WebSocket-Accept {accept}")
    return WebSocket(reader, writer)


async def _hold(host, port, target):
    ws = await connect(host, port, target)
    first = await asyncio.wait_for(ws.recv(), 5)
    if first != '{"type":"OPEN"}':
        print(f"unexpected first message {first!r}", flush=True)
        return 1
    print("open", flush=True)
    while True:
        message = await ws.recv()
        if message is None:
            break
    if ws.closed:
        print(f"close {ws.closed[0]} {ws.closed[1]}", flush=True)
    else:
        print("eof", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "hold":
        sys.exit(__doc__)
    sys.exit(asyncio.run(_hold(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
