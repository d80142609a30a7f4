"""``tcp`` probe: connect to ``host:port``; optionally send some bytes and expect a reply.

The target is ``tcp://host:port`` or ``host:port`` (IPv6 as ``[::1]:5432``). A check passes when
the connection is established and, if ``options["expect"]`` is set, the expected text shows up in
what the peer sends (read until it does, the peer closes, :data:`MAX_READ_BYTES` were read or the
time is up). ``options["send"]`` is written right after connecting. One connection per check; it
is closed at once.

Options (unknown keys are errors):

* ``send``: ``str`` (sent as UTF-8) or ``bytes``;
* ``expect``: ``str`` or ``bytes``, a substring of the peer's first bytes (e.g. ``"220 "`` for
  SMTP, ``"+PONG"`` for Redis after ``send: "PING\\r\\n"``).

Reasons: ``connected``, ``connection refused``, ``timeout after 5.0s``,
``expected '+PONG' not received`` (what was received is the ``body_excerpt``).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from monitors.probe import BODY_EXCERPT_CHARS, MonitorSpec, ProbeResult, timeout_reason

MAX_READ_BYTES = 64 * 1024
"""Give up looking for ``expect`` after this much data."""
OPTION_KEYS = ("send", "expect")


@dataclass(frozen=True)
class TcpOptions:
    """``spec.options`` of a tcp monitor."""

    send: bytes = b""
    expect: bytes = b""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TcpOptions:
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} (known: {', '.join(OPTION_KEYS)})")
        return cls(
            send=_as_bytes("send", options.get("send", b"")),
            expect=_as_bytes("expect", options.get("expect", b"")),
        )


def _as_bytes(key: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError(f"option {key!r} must be a string or bytes, got {type(value).__name__}")


def parse_target(target: str) -> tuple[str, int]:
    """``(host, port)`` of ``tcp://host:port`` or ``host:port``; ``ValueError`` if unusable."""
    text = target.strip()
    url = urlsplit(text if "://" in text else f"tcp://{text}")
    if url.scheme != "tcp":
        raise ValueError(f"target must be tcp://host:port or host:port, got {target!r}")
    if url.path not in ("", "/") or url.query or url.fragment or url.username:
        raise ValueError(f"target must be tcp://host:port or host:port, got {target!r}")
    try:
        port = url.port
    except ValueError:
        raise ValueError(f"target has an invalid port: {target!r}") from None
    if not url.hostname or port is None or port == 0:
        raise ValueError(f"target needs a host and a port: {target!r}")
    return url.hostname, port


def validate(spec: MonitorSpec) -> None:
    """Raise ``ValueError`` saying what is wrong with ``spec``'s target or options."""
    TcpOptions.from_options(spec.options)
    parse_target(spec.target)


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_socket_error(exc: BaseException) -> str:
    """A short reason for a failed connect/read/write: ``connection refused``, …"""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return f"name resolution failed: {exc.strerror or exc}"
    if isinstance(exc, UnicodeError):
        return "name resolution failed: invalid host name"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        return exc.strerror or errno.errorcode.get(exc.errno, str(exc))
    return f"{type(exc).__name__}: {exc}"


def inner_timeout(timeout_s: float) -> float:
    """A deadline slightly inside ``timeout_s``, so the probe (not the engine's cut-off) ends a
    slow check and can keep what it saw as evidence."""
    return timeout_s - min(0.05, timeout_s / 10)


class TcpProbe:
    """Connects to ``spec.target`` (see the module docstring); never raises for a failing target."""

    async def check(self, spec: MonitorSpec) -> ProbeResult:
        at = datetime.now(UTC)
        started = time.perf_counter()
        try:
            opts = TcpOptions.from_options(spec.options)
            host, port = parse_target(spec.target)
        except ValueError as exc:
            return ProbeResult.failure(f"invalid configuration: {exc}", duration_s=0.0, at=at)
        details: dict[str, Any] = {"remote": format_address(host, port)}
        received = bytearray()

        def result(ok: bool, reason: str) -> ProbeResult:
            return ProbeResult(
                ok=ok,
                duration_s=time.perf_counter() - started,
                reason=reason,
                body_excerpt=bytes(received[:BODY_EXCERPT_CHARS]).decode("utf-8", "replace"),
                at=at,
                details=details,
            )

        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(inner_timeout(spec.timeout_s)):
                reader, writer = await asyncio.open_connection(host, port)
                details["connect_s"] = time.perf_counter() - started
                if opts.send:
                    writer.write(opts.send)
                    await writer.drain()
                if not opts.expect:
                    return result(True, "connected")
                while opts.expect not in received and len(received) < MAX_READ_BYTES:
                    chunk = await reader.read(MAX_READ_BYTES - len(received))
                    if not chunk:
                        break
                    received += chunk
        except TimeoutError:
            if received:
                return result(False, f"expected {_show(opts.expect)} not received")
            return result(False, timeout_reason(spec.timeout_s))
        except (OSError, UnicodeError) as exc:  # UnicodeError: a host name IDNA refuses
            return result(False, describe_socket_error(exc))
        finally:
            if writer is not None:
                writer.close()
        if opts.expect in received:
            return result(True, "connected; expected reply received")
        return result(False, f"expected {_show(opts.expect)} not received")

    async def aclose(self) -> None:
        """Nothing pooled: every check closes its own connection."""


def _show(expect: bytes) -> str:
    text = expect.decode("utf-8", "replace")
    return repr(text if len(text) <= 60 else text[:57] + "...")
