"""Small fast targets for the monitor benchmarks, one kind per process, on 127.0.0.1 only.

    python bench/responders.py http|tcp|sip [PORT]

Prints ``{"port": N}`` once listening (PORT 0 or absent: a free port), then serves until
SIGTERM. ``http`` answers every request ``200 ok`` (keep-alive unless the client asks to close);
``tcp`` accepts and closes at once; ``sip`` answers every UDP request with ``SIP/2.0 200 OK``,
echoing Via, From, To, Call-ID and CSeq (the headers a reply must carry, RFC 3261 §8.2.6).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys

HOST = "127.0.0.1"
HTTP_REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
HTTP_CLOSE = HTTP_REPLY.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
SIP_ECHO = (b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq")


def announce(port: int) -> None:
    sys.stdout.write(json.dumps({"port": port}) + "\n")
    sys.stdout.flush()


class HttpServer(asyncio.Protocol):
    """Minimal HTTP/1.1: one fixed reply per request head, no body expected."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end].lower(), self.buffer[end + 4 :]
            if b"connection: close" in head or head.endswith(b"http/1.0"):
                self.transport.write(HTTP_CLOSE)
                self.transport.close()
                return
            self.transport.write(HTTP_REPLY)


async def serve_http(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HttpServer, HOST, port, backlog=4096, reuse_address=True)
    announce(server.sockets[0].getsockname()[1])
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


def serve_tcp(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(4096)
    announce(sock.getsockname()[1])
    while True:
        conn, _ = sock.accept()
        conn.close()


def sip_reply(request: bytes) -> bytes | None:
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    if not head or head[0].startswith(b"SIP/"):
        return None
    lines = [b"SIP/2.0 200 OK"]
    for line in head[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in SIP_ECHO:
            lines.append(line)
    lines += [b"Server: cpdops-bench", b"Content-Length: 0", b"", b""]
    return b"\r\n".join(lines)


def serve_sip(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((HOST, port))
    announce(sock.getsockname()[1])
    while True:
        data, peer = sock.recvfrom(65535)
        reply = sip_reply(data)
        if reply is not None:
            sock.sendto(reply, peer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("http", "tcp", "sip"))
    parser.add_argument("port", type=int, nargs="?", default=0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.kind == "http":
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        asyncio.run(serve_http(args.port))
    elif args.kind == "tcp":
        serve_tcp(args.port)
    else:
        serve_sip(args.port)


if __name__ == "__main__":
    main()
