"""``http`` probe: GET the target, pass when the status is one of ``spec.expect_status``.

A few pooled :class:`httpx.AsyncClient` serve every http monitor of an engine, each monitor
always the same one (by its id): httpcore's pool does work proportional to its connections times
its requests on every request and release, so one pool of 1000 connections collapses under a few
thousand checks per second (``bench/probe_throughput.py``); :data:`POOL_SHARDS` small pools do
not. Redirects are not
followed unless asked for (a health URL that redirects is usually a misconfiguration); TLS
certificates are verified by default; proxy and certificate settings from the environment are
ignored (a health check must reach the target itself).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx

from monitors.probe import BODY_EXCERPT_CHARS, MonitorSpec, ProbeResult, timeout_reason

USER_AGENT = "cpdops-monitor/0.1"
POOL_SHARDS = 16
MAX_BODY_BYTES = 64 * 1024
"""Read at most this much of a body (so a keep-alive connection can be reused); the rest is
dropped together with the connection."""


class HttpProbe:
    """GET ``spec.target`` with shared clients; never raises for a failing target.

    ``max_connections`` bounds each pool's connections (so a hanging target never waits for
    another's); idle keep-alive connections are at most ``max_connections`` over all pools.
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient | None = None,
        verify: bool | ssl.SSLContext = True,
        follow_redirects: bool = False,
        max_connections: int = 1000,
        shards: int = POOL_SHARDS,
    ) -> None:
        self._owns_client = client is None
        if client is not None:
            self._clients = [client]
            return
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max(1, max_connections // max(1, shards)),
        )
        self._clients = [
            httpx.AsyncClient(
                verify=verify,
                follow_redirects=follow_redirects,
                trust_env=False,
                headers={"User-Agent": USER_AGENT},
                limits=limits,
            )
            for _ in range(max(1, shards))
        ]

    async def check(self, spec: MonitorSpec) -> ProbeResult:
        at = datetime.now(UTC)
        started = time.perf_counter()
        client = self._clients[hash(spec.id) % len(self._clients)]
        try:
            async with client.stream(
                "GET", spec.target, timeout=httpx.Timeout(spec.timeout_s)
            ) as response:
                excerpt = await _read_excerpt(response)
        except httpx.TimeoutException:
            return ProbeResult.failure(
                timeout_reason(spec.timeout_s), duration_s=time.perf_counter() - started, at=at
            )
        except Exception as exc:  # any transport failure is a failed check, not an error
            return ProbeResult.failure(
                describe_error(exc), duration_s=time.perf_counter() - started, at=at
            )
        duration = time.perf_counter() - started
        code = response.status_code
        return ProbeResult(
            ok=code in spec.expect_status,
            duration_s=duration,
            reason=f"HTTP {code}",
            status_code=code,
            body_excerpt=excerpt,
            at=at,
        )

    async def aclose(self) -> None:
        if self._owns_client:
            for client in self._clients:
                await client.aclose()


async def _read_excerpt(response: httpx.Response) -> str:
    head = bytearray()
    seen = 0
    async for chunk in response.aiter_bytes():
        if len(head) < BODY_EXCERPT_CHARS:
            head += chunk[: BODY_EXCERPT_CHARS - len(head)]
        seen += len(chunk)
        if seen >= MAX_BODY_BYTES:
            break
    return bytes(head).decode("utf-8", errors="replace")


def describe_error(exc: BaseException) -> str:
    """A short human reason for a transport failure: ``connection refused``, ``TLS error: …``."""
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause.reason or cause}"
        if isinstance(cause, socket.gaierror):
            return f"name resolution failed: {cause.strerror or cause}"
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return f"invalid URL: {exc}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"protocol error: {exc}"
    if isinstance(exc, httpx.ConnectError):
        return f"connect error: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it was raised from, exception groups included (depth-first)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(reversed(current.exceptions))
        nxt = current.__cause__ or current.__context__
        if nxt is not None:
            stack.append(nxt)
