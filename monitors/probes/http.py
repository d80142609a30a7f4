"""``http`` probe: GET the target, pass when the status is one of ``spec.expect_status`` and the
conditions of the options hold.

Options (unknown keys are errors):

* ``body_contains``: text that must appear in the first 64 KiB of the body;
* ``max_latency_s``: the check fails when the response took longer than this (seconds);
* ``tls_verify``: ``false`` skips certificate verification (a self-signed health endpoint).

A few pooled :class:`httpx.AsyncClient` serve every http monitor of an engine, each monitor
always the same one (by its id): httpcore's pool does work proportional to its connections times
its requests on every request and release, so one pool of 1000 connections collapses under a few
thousand checks per second (``bench/probe_throughput.py``); :data:`POOL_SHARDS` small pools do
not. One more client, made on first use, serves the monitors with ``tls_verify: false``.
Redirects are not
followed unless asked for (a health URL that redirects is usually a misconfiguration); TLS
certificates are verified by default; proxy and certificate settings from the environment are
ignored (a health check must reach the target itself).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from monitors.probe import BODY_EXCERPT_CHARS, MonitorSpec, ProbeResult, timeout_reason

USER_AGENT = "cpdops-monitor/0.1"
POOL_SHARDS = 16
MAX_BODY_BYTES = 64 * 1024
"""Read at most this much of a body (so a keep-alive connection can be reused); the rest is
dropped together with the connection."""
OPTION_KEYS = ("body_contains", "max_latency_s", "tls_verify")


@dataclass(frozen=True)
class HttpOptions:
    """``spec.options`` of an http monitor."""

    body_contains: str | None = None
    max_latency_s: float | None = None
    tls_verify: bool = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> HttpOptions:
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} (known: {', '.join(OPTION_KEYS)})")
        body = options.get("body_contains")
        if body is not None and (not isinstance(body, str) or not body):
            raise ValueError("option 'body_contains' must be a non-empty string")
        latency = options.get("max_latency_s")
        if latency is not None and (
            isinstance(latency, bool) or not isinstance(latency, int | float) or latency <= 0
        ):
            raise ValueError(f"option 'max_latency_s' must be a number > 0, got {latency!r}")
        verify = options.get("tls_verify", True)
        if not isinstance(verify, bool):
            raise ValueError(f"option 'tls_verify' must be true or false, got {verify!r}")
        return cls(body, float(latency) if latency is not None else None, verify)


def validate(spec: MonitorSpec) -> None:
    """Raise ``ValueError`` saying what is wrong with ``spec``'s target or options."""
    HttpOptions.from_options(spec.options)
    url = urlsplit(spec.target.strip())
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"target must be an http:// or https:// URL, got {spec.target!r}")


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
        self._follow_redirects = follow_redirects
        self._insecure: httpx.AsyncClient | None = None
        if client is not None:
            self._clients = [client]
            return
        self._limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max(1, max_connections // max(1, shards)),
        )
        self._clients = [self._make_client(verify) for _ in range(max(1, shards))]

    def _make_client(self, verify: bool | ssl.SSLContext) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=verify,
            follow_redirects=self._follow_redirects,
            trust_env=False,
            headers={"User-Agent": USER_AGENT},
            limits=self._limits,
        )

    def _client_for(self, spec: MonitorSpec, opts: HttpOptions) -> httpx.AsyncClient:
        if opts.tls_verify or not self._owns_client:
            return self._clients[hash(spec.id) % len(self._clients)]
        if self._insecure is None:
            self._insecure = self._make_client(False)
        return self._insecure

    async def check(self, spec: MonitorSpec) -> ProbeResult:
        at = datetime.now(UTC)
        started = time.perf_counter()
        try:
            opts = HttpOptions.from_options(spec.options)
        except ValueError as exc:
            return ProbeResult.failure(f"invalid configuration: {exc}", duration_s=0.0, at=at)
        found = opts.body_contains is None
        try:
            async with self._client_for(spec, opts).stream(
                "GET", spec.target, timeout=httpx.Timeout(spec.timeout_s)
            ) as response:
                excerpt, body = await _read_body(response)
                if opts.body_contains is not None:
                    found = opts.body_contains.encode("utf-8") in body
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
        problems = []
        if not found:
            problems.append(f"body does not contain {opts.body_contains!r}")
        if opts.max_latency_s is not None and duration > opts.max_latency_s:
            problems.append(f"took {duration:.3f}s (max_latency_s {opts.max_latency_s})")
        return ProbeResult(
            ok=code in spec.expect_status and not problems,
            duration_s=duration,
            reason="; ".join([f"HTTP {code}", *problems]),
            status_code=code,
            body_excerpt=excerpt,
            at=at,
        )

    async def aclose(self) -> None:
        if self._owns_client:
            for client in self._clients:
                await client.aclose()
        if self._insecure is not None:
            await self._insecure.aclose()
            self._insecure = None


async def _read_body(response: httpx.Response) -> tuple[str, bytes]:
    """The excerpt kept as evidence, and the first :data:`MAX_BODY_BYTES` of the body."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk[: MAX_BODY_BYTES - len(body)]
        if len(body) >= MAX_BODY_BYTES:
            break
    head = bytes(body[:BODY_EXCERPT_CHARS]).decode("utf-8", errors="replace")
    return head, bytes(body)


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
