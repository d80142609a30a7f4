"""A small asyncio HTTP/1.1 client for the http probe: ``GET`` only, keep-alive pooling.

httpx/httpcore cost 0.5–1.7 ms of CPU per request on the engine's loop thread, more than a whole
core at 2,000 checks/s (``docs/benchmarks.md``). This client does one thing: send a ``GET``
with ``Host``, ``User-Agent``, ``Accept`` and ``Connection: keep-alive``, and read the reply in
the connection's :class:`asyncio.Protocol` (no stream layer, one future per request).

* Connections are pooled per ``(scheme, host, port, tls_verify)`` and reused while the server
  keeps them alive; at most ``max_idle`` idle connections in all, ``max_idle_per_host`` each.
* The body is delimited by ``Content-Length``, ``Transfer-Encoding: chunked`` or the end of the
  connection; at most ``max_body`` bytes are kept. A connection whose body was not read to its
  end (too long, close-delimited, ``Connection: close``, garbage) is closed, never reused.
* A reused connection that the server had already closed (no byte of a reply came back) is
  retried once on a new connection.
* HTTPS by :mod:`ssl`; the caller passes the verifying context, ``tls_verify=False`` uses one
  that checks neither the certificate nor the name.
* Hostnames are resolved by the loop's resolver, every address tried in order; IPv4 and IPv6
  literals are not resolved.
* No timeouts of its own: the caller wraps :meth:`HttpClient.get` in ``asyncio.timeout``; a
  request cancelled half-way closes its connection.

Errors: :class:`InvalidURL` and :class:`HttpProtocolError` (both ``ValueError``), the
``OSError`` family from the socket (``ConnectionRefusedError``, ``socket.gaierror``,
``ssl.SSLError``…), :class:`TooManyRedirects`. Several failed connect attempts raise an
``OSError`` whose ``__cause__`` is an ``ExceptionGroup`` of them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

REDIRECT_CODES = frozenset((301, 302, 303, 307, 308))


class InvalidURL(ValueError):
    """The URL is not an ``http://`` or ``https://`` URL with a host."""


class HttpProtocolError(ValueError):
    """The server's reply is not HTTP/1.x, or the connection ended in the middle of it."""


class TooManyRedirects(ValueError):
    """More redirects than allowed were followed."""


class _Stale(Exception):
    """A reused connection was closed by the server before any byte of a reply."""


@dataclass(frozen=True, slots=True)
class Response:
    status_code: int
    headers: dict[bytes, bytes]
    """Lower-case names; a repeated header keeps its last value."""
    body: bytes
    """At most ``max_body`` bytes of the (de-chunked) body."""
    url: str


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _EOF, _DONE = range(8)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; the reply is parsed as the bytes arrive."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.requests = 0
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, dict[bytes, bytes], bytes, bool]] | None = None
        self._state = _DONE
        self._got_bytes = False
        self._body = bytearray()
        self._status = 0
        self._headers: dict[bytes, bytes] = {}
        self._reusable = False
        self._remaining = 0

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._state == _EOF:
            self._finish(reusable=False)
        elif not self._got_bytes and self.requests > 1:
            waiter.set_exception(_Stale())
        elif exc is not None:
            waiter.set_exception(exc)
        elif not self._got_bytes:
            waiter.set_exception(HttpProtocolError("server closed the connection without a reply"))
        else:
            waiter.set_exception(HttpProtocolError("server closed the connection mid-reply"))

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost decides

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self._got_bytes = True
        self._buf += data
        try:
            self._parse()
        except HttpProtocolError as exc:
            self._waiter.set_exception(exc)
            self.close()

    # -- requests

    def request(self, data: bytes) -> asyncio.Future[tuple[int, dict[bytes, bytes], bytes, bool]]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._state = _HEAD
        self._got_bytes = False
        self._buf.clear()
        self._body = bytearray()
        self.requests += 1
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- parsing

    def _finish(self, *, reusable: bool) -> None:
        self._state = _DONE
        assert self._waiter is not None
        self._waiter.set_result((self._status, self._headers, bytes(self._body), reusable))

    def _keep(self, chunk: bytes | bytearray) -> bool:
        """Keep what fits of ``chunk``; true when the body is now as long as allowed."""
        room = self.max_body - len(self._body)
        self._body += chunk[:room]
        return len(chunk) >= room

    def _parse(self) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > 65536:
                        raise HttpProtocolError("reply head longer than 64 KiB")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                if not self._head(head):
                    continue  # 1xx: the real reply follows
                if self._state == _DONE:
                    self._finish(reusable=self._reusable and not buf)
                    return
            elif state == _LENGTH:
                take = bytes(buf[: self._remaining])
                del buf[: len(take)]
                self._remaining -= len(take)
                full = self._keep(take)
                if self._remaining == 0:
                    self._finish(reusable=self._reusable and not buf)
                elif full:
                    self._finish(reusable=False)  # the rest is not worth reading
                return
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise HttpProtocolError("chunk size line too long")
                    return
                line = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    self._remaining = int(line, 16)
                except ValueError:
                    raise HttpProtocolError(f"bad chunk size {line!r}") from None
                self._state = _CHUNK_DATA if self._remaining else _TRAILER
            elif state == _CHUNK_DATA:
                take = bytes(buf[: self._remaining])
                del buf[: len(take)]
                self._remaining -= len(take)
                if not take:
                    return
                if self._keep(take):
                    self._finish(reusable=False)  # full: the rest is not worth reading
                    return
                if self._remaining:
                    return
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise HttpProtocolError("chunk not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._finish(reusable=self._reusable and not buf)
                    return
            elif state == _EOF:
                full = self._keep(buf)
                buf.clear()
                if full:
                    self._finish(reusable=False)
                return
            else:
                return

    def _head(self, head: bytes) -> bool:
        """Parse a reply head and set the body state; false for a 1xx interim reply."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HttpProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            return False
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise HttpProtocolError(f"bad header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        self._status, self._headers = status, headers
        conn = headers.get(b"connection", b"").lower()
        if parts[0] == b"HTTP/1.0":
            self._reusable = b"keep-alive" in conn
        else:
            self._reusable = b"close" not in conn
        if status in (204, 304):
            self._state = _DONE
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self._state = _CHUNK_SIZE
        elif b"content-length" in headers:
            try:
                self._remaining = int(headers[b"content-length"])
            except ValueError:
                raise HttpProtocolError("bad Content-Length") from None
            if self._remaining < 0:
                raise HttpProtocolError("bad Content-Length")
            self._state = _LENGTH if self._remaining else _DONE
        else:
            self._state = _EOF
            self._reusable = False
        return True


_Key = tuple[str, str, int, bool]


class HttpClient:
    """``GET`` over pooled keep-alive HTTP/1.1 connections, on the running loop."""

    def __init__(
        self,
        *,
        user_agent: str,
        verify: ssl.SSLContext | None = None,
        max_body: int = 64 * 1024,
        max_idle: int = 1000,
        max_idle_per_host: int = 100,
    ) -> None:
        self._user_agent = user_agent
        self._verify = verify if verify is not None else default_ssl_context()
        self._insecure: ssl.SSLContext | None = None
        self._max_body = max_body
        self._max_idle = max_idle
        self._max_idle_per_host = max_idle_per_host
        self._idle: dict[_Key, deque[_Connection]] = {}
        self._idle_count = 0

    async def get(
        self, url: str, *, tls_verify: bool = True, follow_redirects: bool = False,
        max_redirects: int = 10,
    ) -> Response:  # fmt: skip
        """``GET url``; with ``follow_redirects`` follow up to ``max_redirects`` redirects."""
        for _ in range(max_redirects + 1):
            response = await self._get(url, tls_verify)
            location = response.headers.get(b"location")
            if not follow_redirects or response.status_code not in REDIRECT_CODES or not location:
                return response
            url = urljoin(url, location.decode("latin-1"))
        raise TooManyRedirects(f"more than {max_redirects} redirects")

    async def _get(self, url: str, tls_verify: bool) -> Response:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
        if scheme not in ("http", "https") or not host:
            raise InvalidURL(f"not an http(s) URL: {url!r}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise InvalidURL(f"bad port in {url!r}") from exc
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        authority = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            authority += f":{port}"
        try:
            data = (
                f"GET {target} HTTP/1.1\r\nHost: {authority}\r\n"
                f"User-Agent: {self._user_agent}\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n"
            ).encode("ascii")
        except UnicodeEncodeError:
            raise InvalidURL(f"not an ASCII URL: {url!r}") from None
        key = (scheme, host, port, tls_verify)
        conn = self._take(key)
        if conn is None:
            conn = await self._connect(key)
        try:
            try:
                status, headers, body, reusable = await conn.request(data)
            except _Stale:
                conn = await self._connect(key)
                status, headers, body, reusable = await conn.request(data)
        except BaseException:
            conn.abort()
            raise
        if reusable and not conn.closed:
            self._put(key, conn)
        else:
            conn.close()
        return Response(status, headers, body, url)

    # -- the pool

    def _take(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _put(self, key: _Key, conn: _Connection) -> None:
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = deque()
        if len(idle) >= self._max_idle_per_host or self._idle_count >= self._max_idle:
            self._prune()
            if len(idle) >= self._max_idle_per_host or self._idle_count >= self._max_idle:
                conn.close()
                return
        idle.append(conn)
        self._idle_count += 1

    def _prune(self) -> None:
        """Drop the closed connections from the idle lists."""
        for key in list(self._idle):
            alive = deque(c for c in self._idle[key] if not c.closed)
            self._idle_count -= len(self._idle[key]) - len(alive)
            if alive:
                self._idle[key] = alive
            else:
                del self._idle[key]

    async def _connect(self, key: _Key) -> _Connection:
        scheme, host, port, tls_verify = key
        loop = asyncio.get_running_loop()
        ctx: ssl.SSLContext | None = None
        if scheme == "https":
            ctx = self._verify if tls_verify else self._insecure_context()
        addresses: list[tuple[socket.AddressFamily, Any]] | None = _numeric(host, port)
        if addresses is None:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = [(family, addr) for family, _, _, _, addr in infos]
        errors: list[OSError] = []
        max_body = self._max_body

        def factory() -> _Connection:
            return _Connection(max_body)

        for family, addr in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                errors.append(exc)
                continue
            except BaseException:
                sock.close()
                raise
            _, conn = await loop.create_connection(
                factory,
                sock=sock,
                ssl=ctx,
                server_hostname=host if ctx is not None else None,
            )
            return conn
        if len(errors) == 1:
            raise errors[0]
        raise OSError(f"all {len(errors)} connection attempts failed") from ExceptionGroup(
            "connect", errors
        )

    def _insecure_context(self) -> ssl.SSLContext:
        if self._insecure is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            self._insecure = ctx
        return self._insecure

    def idle_connections(self) -> int:
        """How many idle connections are pooled (closed ones not yet dropped included)."""
        return self._idle_count

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        self._idle_count = 0
        await asyncio.sleep(0)  # let the transports run their close callbacks


def default_ssl_context() -> ssl.SSLContext:
    """Verifying context: certifi's CA bundle when installed (as httpx did), else the system's."""
    try:
        import certifi
    except ImportError:
        ctx = ssl.create_default_context()
    else:
        ctx = ssl.create_default_context(cafile=certifi.where())
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _numeric(host: str, port: int) -> list[tuple[socket.AddressFamily, Any]] | None:
    """``host`` as a socket address when it is an IPv4 or IPv6 literal, else ``None``."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, (host, port))]
    return None
