"""``http`` probe: GET the target, pass when the status is one of ``spec.expect_status`` and the
conditions of the options hold.

Options (unknown keys are errors):

* ``body_contains``: text that must appear in the first 64 KiB of the body;
* ``max_latency_s``: the check fails when the response took longer than this (seconds);
* ``tls_verify``: ``false`` skips certificate verification (a self-signed health endpoint);
* ``expect_tenant``: the tenant the target must be: a JSON body that names another tenant
  (``{"tenant": ...}``, as SmartCPD's ``/health`` does) fails the check, whatever its status —
  a published port can answer as another tenant after a Docker daemon crash (a leftover port
  proxy forwards to an address now given to another container). A body that names no tenant
  is not judged on it. The generated monitors of a tenant's instances set it.

Every http monitor of a probe shares one :class:`~monitors.probes.httpclient.HttpClient`, a
small asyncio HTTP/1.1 client with keep-alive pools per (scheme, host, port, tls_verify):
httpx/httpcore cost more CPU per check than the 2,000 checks/s of SPEC §8 allow on the engine's
one loop thread (``docs/benchmarks.md``). Redirects are not followed unless asked for (a health
URL that redirects is usually a misconfiguration); TLS certificates are verified by default;
proxy and certificate settings from the environment are ignored (a health check must reach the
target itself). The whole check (connect, request, reply) has ``spec.timeout_s``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from monitors.probe import BODY_EXCERPT_CHARS, MonitorSpec, ProbeResult, timeout_reason
from monitors.probes.httpclient import (
    HttpClient,
    HttpProtocolError,
    InvalidURL,
    TooManyRedirects,
    default_ssl_context,
)

USER_AGENT = "cpdops-monitor/0.1"
MAX_BODY_BYTES = 64 * 1024
"""Read at most this much of a body (so a keep-alive connection can be reused); the rest is
dropped together with the connection."""
OPTION_KEYS = ("body_contains", "max_latency_s", "tls_verify", "expect_tenant")


@dataclass(frozen=True)
class HttpOptions:
    """``spec.options`` of an http monitor."""

    body_contains: str | None = None
    max_latency_s: float | None = None
    tls_verify: bool = True
    expect_tenant: str | None = None

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
        tenant = options.get("expect_tenant")
        if tenant is not None and (not isinstance(tenant, str) or not tenant):
            raise ValueError("option 'expect_tenant' must be a non-empty string")
        return cls(body, float(latency) if latency is not None else None, verify, tenant)


def tenant_problem(body: bytes, expected: str | None) -> str | None:
    """Pure: why an answer is not ``expected``'s — its JSON body names another tenant — or
    None (no tenant expected, or the body names none: it cannot be judged on it)."""
    if expected is None:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    reported = data.get("tenant") if isinstance(data, dict) else None
    if not isinstance(reported, str) or not reported or reported == expected:
        return None
    return f"answers as tenant {reported!r}, expected {expected!r}"


def validate(spec: MonitorSpec) -> None:
    """Raise ``ValueError`` saying what is wrong with ``spec``'s target or options."""
    HttpOptions.from_options(spec.options)
    url = urlsplit(spec.target.strip())
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"target must be an http:// or https:// URL, got {spec.target!r}")


class HttpProbe:
    """GET ``spec.target`` with a shared keep-alive client; never raises for a failing target.

    ``client`` replaces the probe's own (which ``aclose`` then leaves open); ``verify`` is the
    verifying TLS context (``True``: certifi's CAs); ``max_connections`` bounds the idle
    keep-alive connections kept over all targets. Connections in use are not bounded here (the
    engine bounds concurrent checks).
    """

    def __init__(
        self,
        *,
        client: HttpClient | None = None,
        verify: bool | ssl.SSLContext = True,
        follow_redirects: bool = False,
        max_connections: int = 1000,
    ) -> None:
        self._owns_client = client is None
        self._follow_redirects = follow_redirects
        self._verify_default = verify is not False
        if client is None:
            context = verify if isinstance(verify, ssl.SSLContext) else default_ssl_context()
            client = HttpClient(
                user_agent=USER_AGENT,
                verify=context,
                max_body=MAX_BODY_BYTES,
                max_idle=max(1, max_connections),
                max_idle_per_host=max(1, max_connections),
            )
        self._client = client

    async def check(self, spec: MonitorSpec) -> ProbeResult:
        at = datetime.now(UTC)
        started = time.perf_counter()
        try:
            opts = HttpOptions.from_options(spec.options)
        except ValueError as exc:
            return ProbeResult.failure(f"invalid configuration: {exc}", duration_s=0.0, at=at)
        try:
            async with asyncio.timeout(spec.timeout_s):
                response = await self._client.get(
                    spec.target.strip(),
                    tls_verify=opts.tls_verify and self._verify_default,
                    follow_redirects=self._follow_redirects,
                )
        except TimeoutError:
            return ProbeResult.failure(
                timeout_reason(spec.timeout_s), duration_s=time.perf_counter() - started, at=at
            )
        except Exception as exc:  # any transport failure is a failed check, not an error
            return ProbeResult.failure(
                describe_error(exc), duration_s=time.perf_counter() - started, at=at
            )
        duration = time.perf_counter() - started
        code = response.status_code
        body = response.body
        problems = []
        if opts.body_contains is not None and opts.body_contains.encode("utf-8") not in body:
            problems.append(f"body does not contain {opts.body_contains!r}")
        if opts.max_latency_s is not None and duration > opts.max_latency_s:
            problems.append(f"took {duration:.3f}s (max_latency_s {opts.max_latency_s})")
        wrong_tenant = tenant_problem(body[:MAX_BODY_BYTES], opts.expect_tenant)
        if wrong_tenant is not None:
            problems.append(wrong_tenant)
        return ProbeResult(
            ok=code in spec.expect_status and not problems,
            duration_s=duration,
            reason="; ".join([f"HTTP {code}", *problems]),
            status_code=code,
            body_excerpt=body[:BODY_EXCERPT_CHARS].decode("utf-8", errors="replace"),
            at=at,
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


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
    if isinstance(exc, InvalidURL):
        return f"invalid URL: {exc}"
    if isinstance(exc, HttpProtocolError):
        return f"protocol error: {exc}"
    if isinstance(exc, TooManyRedirects):
        return str(exc)
    if isinstance(exc, OSError):
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
