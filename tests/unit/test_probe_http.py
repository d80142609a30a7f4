"""The http probe and its HTTP/1.1 client against real servers on 127.0.0.1, started here.

Each test runs its own event loop with ``asyncio.run``; the servers are asyncio servers on that
loop that write exactly the bytes a case needs (keep-alive, chunked, close-delimited, too long,
closing a kept-alive connection, never answering) and count connections and requests."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from monitors.probe import MonitorSpec, ProbeResult, timeout_reason
from monitors.probes.http import MAX_BODY_BYTES, USER_AGENT, HttpProbe, describe_error
from monitors.probes.httpclient import HttpClient, HttpProtocolError

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"

Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """An asyncio server; ``handler(server, reader, writer, n)`` serves connection ``n``."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.host = host
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self.stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Server:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/health", scheme: str = "http") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(self, reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        self.requests.append(head)
        return head

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        self.stopped.set()
        for writer in self._writers:
            writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self._server.wait_closed()


def replies(*answers: bytes, close: bool = False) -> Handler:
    """Answer each request of a connection with the next of ``answers`` (the last repeats)."""

    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        i = 0
        while await server.read_request(reader) is not None:
            writer.write(answers[min(i, len(answers) - 1)])
            await writer.drain()
            i += 1
            if close:
                return

    return handler


def spec(url: str, timeout_s: float = 2.0, **options: Any) -> MonitorSpec:
    return MonitorSpec(
        id="m", name="m", tenant="t", host="h", kind="http", target=url, timeout_s=timeout_s,
        options=options,
    )  # fmt: skip


async def checks(
    server: Server, times: int = 1, path: str = "/health", probe: HttpProbe | None = None,
    **options: Any,
) -> list[ProbeResult]:  # fmt: skip
    probe = probe or HttpProbe()
    try:
        return [await probe.check(spec(server.url(path), **options)) for _ in range(times)]
    finally:
        await probe.aclose()


def run(handler: Handler, case: Callable[[Server], Awaitable[Any]], host: str = "127.0.0.1") -> Any:
    async def main() -> Any:
        server = await Server(handler, host).start()
        try:
            return await case(server)
        finally:
            await server.close()

    return asyncio.run(main())


# ------------------------------------------------------------------ framing and keep-alive


def test_keep_alive_reuses_one_connection_and_sends_the_headers() -> None:
    async def case(server: Server) -> None:
        results = await checks(server, times=3, path="/health?x=1")
        assert [(r.ok, r.reason, r.status_code, r.body_excerpt) for r in results] == [
            (True, "HTTP 200", 200, "ok\n")
        ] * 3
        assert server.connections == 1
        first = server.requests[0].decode().split("\r\n")
        assert first[0] == "GET /health?x=1 HTTP/1.1"
        assert f"Host: 127.0.0.1:{server.port}" in first
        assert f"User-Agent: {USER_AGENT}" in first
        assert "Connection: keep-alive" in first

    run(replies(OK), case)


def test_chunked_body_split_across_writes_is_read_and_the_connection_reused() -> None:
    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while await server.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhel")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(b"lo\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n")
            await writer.drain()

    async def case(server: Server) -> None:
        results = await checks(server, times=2, body_contains="hello, world")
        assert [(r.ok, r.body_excerpt) for r in results] == [(True, "hello, world")] * 2
        assert server.connections == 1

    run(handler, case)


def test_content_length_zero_and_204_need_no_body() -> None:
    empty = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"

    async def checks_codes(server: Server) -> None:
        probe = HttpProbe()
        try:
            got = [await probe.check(spec(server.url())) for _ in range(3)]
        finally:
            await probe.aclose()
        assert [(r.status_code, r.body_excerpt) for r in got] == [(200, ""), (204, ""), (204, "")]
        assert not got[1].ok  # 204 is not in expect_status (200)
        assert server.connections == 1

    run(replies(empty, no_content), checks_codes)


def test_interim_100_reply_is_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + OK

    async def case(server: Server) -> None:
        assert [r.reason for r in await checks(server, times=2)] == ["HTTP 200"] * 2
        assert server.connections == 1

    run(replies(answer), case)


def test_close_delimited_body_is_read_and_not_reused() -> None:
    answer = b"HTTP/1.1 503 Service Unavailable\r\n\r\ndown for maintenance"

    async def case(server: Server) -> None:
        results = await checks(server, times=2, body_contains="maintenance")
        assert [(r.ok, r.reason, r.body_excerpt) for r in results] == [
            (False, "HTTP 503", "down for maintenance")
        ] * 2
        assert server.connections == 2

    run(replies(answer, close=True), case)


def test_connection_close_header_is_honoured() -> None:
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nok\n"

    async def case(server: Server) -> None:
        assert [r.reason for r in await checks(server, times=2)] == ["HTTP 200"] * 2
        assert server.connections == 2

    run(replies(answer), case)


@pytest.mark.parametrize("chunked", [False, True])
def test_body_larger_than_max_is_cut_and_the_connection_dropped(chunked: bool) -> None:
    size = 3 * MAX_BODY_BYTES
    body = b"x" * (size - 6) + b"needle"
    if chunked:
        half = size // 2
        framed = b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:])
        )
        answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"
    else:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body

    async def case(server: Server) -> None:
        client = HttpClient(user_agent="t", max_body=MAX_BODY_BYTES)
        try:
            response = await client.get(server.url())
            assert len(response.body) == MAX_BODY_BYTES
            assert client.idle_connections() == 0
            again = await client.get(server.url())
            assert len(again.body) == MAX_BODY_BYTES
        finally:
            await client.aclose()
        assert server.connections == 2
        # the probe: the needle is past the first MAX_BODY_BYTES, so it is not seen
        (result,) = await checks(server, body_contains="needle")
        assert not result.ok and result.reason == "HTTP 200; body does not contain 'needle'"

    run(replies(answer), case)


def test_kept_alive_connection_closed_by_the_server_is_retried_once() -> None:
    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        # answer the first request of a connection; close it on the second without a reply
        if await server.read_request(reader) is not None:
            writer.write(OK)
            await writer.drain()
        await server.read_request(reader)

    async def case(server: Server) -> None:
        assert [r.reason for r in await checks(server, times=3)] == ["HTTP 200"] * 3
        assert server.connections == 3
        assert len(server.requests) == 5  # 1 + (1 refused + 1 answered) × 2

    run(handler, case)


def test_idle_connection_closed_by_the_server_is_not_used() -> None:
    async def case(server: Server) -> None:
        probe = HttpProbe()
        try:
            assert (await probe.check(spec(server.url()))).ok
            await asyncio.sleep(0.05)  # the server closed it meanwhile
            assert (await probe.check(spec(server.url()))).ok
        finally:
            await probe.aclose()
        assert server.connections == 2
        assert len(server.requests) == 2

    run(replies(OK, close=True), case)


def test_new_connection_closed_without_reply_is_a_protocol_error() -> None:
    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader)

    async def case(server: Server) -> None:
        (result,) = await checks(server)
        assert not result.ok
        assert result.reason == "protocol error: server closed the connection without a reply"
        assert server.connections == 1

    run(handler, case)


def test_garbage_reply_is_a_protocol_error() -> None:
    async def case(server: Server) -> None:
        (result,) = await checks(server)
        assert result.reason.startswith("protocol error: not an HTTP/1.x status line")

    run(replies(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), case)


def test_idle_connections_are_bounded() -> None:
    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while await server.read_request(reader) is not None:
            await asyncio.sleep(0.05)  # so that the requests overlap
            writer.write(OK)

    async def case(server: Server) -> None:
        probe = HttpProbe(max_connections=2)
        try:
            results = await asyncio.gather(*(probe.check(spec(server.url())) for _ in range(5)))
            assert all(r.ok for r in results)
            assert probe._client.idle_connections() == 2
        finally:
            await probe.aclose()
        assert server.connections == 5

    run(handler, case)


def test_redirects_are_reported_unless_followed() -> None:
    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while (head := await server.read_request(reader)) is not None:
            if head.startswith(b"GET /loop "):
                writer.write(b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n")
            elif head.startswith(b"GET /old "):
                writer.write(b"HTTP/1.1 301 Moved\r\nLocation: /new\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(OK)

    async def case(server: Server) -> None:
        (plain,) = await checks(server, path="/old")
        assert (plain.ok, plain.reason) == (False, "HTTP 301")
        (followed,) = await checks(server, path="/old", probe=HttpProbe(follow_redirects=True))
        assert (followed.ok, followed.reason) == (True, "HTTP 200")
        assert server.requests[-1].startswith(b"GET /new HTTP/1.1")
        (looping,) = await checks(server, path="/loop", probe=HttpProbe(follow_redirects=True))
        assert (looping.ok, looping.reason) == (False, "more than 10 redirects")

    run(handler, case)


# ------------------------------------------------------------------ failures and addresses


def test_server_that_never_answers_times_out() -> None:
    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.stopped.wait()

    async def case(server: Server) -> None:
        probe = HttpProbe()
        try:
            result = await probe.check(spec(server.url(), timeout_s=0.3))
            assert probe._client.idle_connections() == 0
        finally:
            await probe.aclose()
        assert (result.ok, result.reason) == (False, timeout_reason(0.3))
        assert 0.3 <= result.duration_s < 1.0

    run(handler, case)


def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main() -> ProbeResult:
        probe = HttpProbe()
        try:
            return await probe.check(spec(f"http://127.0.0.1:{port}/"))
        finally:
            await probe.aclose()

    result = asyncio.run(main())
    assert (result.ok, result.reason, result.status_code) == (False, "connection refused", None)


def test_every_address_refused_is_connection_refused() -> None:
    errors = [ConnectionRefusedError(111, "refused ::1"), ConnectionRefusedError(111, "refused")]
    exc = OSError("all 2 connection attempts failed")
    exc.__cause__ = ExceptionGroup("connect", errors)
    assert describe_error(exc) == "connection refused"
    assert describe_error(HttpProtocolError("x")) == "protocol error: x"


def test_unresolvable_name() -> None:
    async def main() -> ProbeResult:
        probe = HttpProbe()
        try:
            return await probe.check(spec("http://no-such-host.invalid/", timeout_s=10))
        finally:
            await probe.aclose()

    result = asyncio.run(main())
    assert not result.ok and result.reason.startswith("name resolution failed: "), result.reason


def test_hostname_and_ipv6_literal() -> None:
    async def by_name(server: Server) -> None:
        (result,) = await checks(server, path="/x")
        assert result.ok, result.reason
        probe = HttpProbe()
        try:
            named = await probe.check(spec(f"http://localhost:{server.port}/x"))
        finally:
            await probe.aclose()
        assert named.ok, named.reason
        assert f"Host: localhost:{server.port}".encode() in server.requests[-1]

    run(replies(OK), by_name)

    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def v6(server: Server) -> None:
        (result,) = await checks(server)
        assert result.ok, result.reason
        assert f"Host: [::1]:{server.port}".encode() in server.requests[0]

    try:
        run(replies(OK), v6, host="::1")
    except OSError as exc:  # no ::1 on this machine
        pytest.skip(f"no IPv6 loopback: {exc}")


# ------------------------------------------------------------------ https


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_self_signed_with_and_without_verification(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        server = await Server(replies(OK)).start(server_ctx)
        url = server.url(scheme="https")
        probe = HttpProbe()
        try:
            verified = await probe.check(spec(url))
            assert not verified.ok
            assert verified.reason.startswith("TLS error: CERTIFICATE_VERIFY_FAILED"), verified
            for _ in range(2):
                insecure = await probe.check(spec(url, tls_verify=False))
                assert (insecure.ok, insecure.reason, insecure.body_excerpt) == (
                    True,
                    "HTTP 200",
                    "ok\n",
                )
            assert probe._client.idle_connections() == 1
        finally:
            await probe.aclose()
        trusted = HttpProbe(verify=trusting)
        try:
            result = await trusted.check(spec(url))
            assert result.ok, result.reason
            wrong_name = await trusted.check(spec(f"https://localhost:{server.port}/"))
            assert wrong_name.ok, wrong_name.reason  # the SAN lists localhost too
        finally:
            await trusted.aclose()
            await server.close()
        assert server.connections == 3  # the failed handshake never reached the handler

    asyncio.run(main())


def test_plain_http_to_a_tls_port_fails_cleanly(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    async def main() -> ProbeResult:
        server = await Server(replies(OK)).start(server_ctx)
        probe = HttpProbe()
        try:
            return await probe.check(spec(server.url(), timeout_s=2))
        finally:
            await probe.aclose()
            await server.close()

    result = asyncio.run(main())
    assert not result.ok and result.status_code is None
