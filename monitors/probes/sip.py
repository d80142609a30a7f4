"""``sip`` probe: a SIP OPTIONS request (RFC 3261 §11) over UDP or TCP; pass on an accepted reply.

The target is a SIP URI, ``sip:host[:port][;transport=udp|tcp]`` (port 5060 and UDP by
default). Options (unknown keys are errors):

* ``transport``: ``"udp"`` or ``"tcp"``, wins over the URI's ``transport`` parameter;
* ``accept_codes``: the final reply codes that pass, as a list or a comma-separated string of
  codes and classes, e.g. ``["2xx", 404, 405, 483]`` or ``"2xx,404"``; default ``2xx``. (Many
  servers answer OPTIONS with 404/405/483; ``spec.expect_status`` is not used by this kind.)

The request carries a fresh Call-ID, From tag and Via branch. A reply belongs to it when its
Call-ID, CSeq (number and method) and top Via branch all match; anything else that arrives is
ignored, and so are provisional (1xx) replies. Over UDP the request is retransmitted as a
non-INVITE client transaction does (timer E: after 0.5 s, 1 s, 2 s, then every 4 s) until a
final reply or the timeout.

::

    check ──register(branch)──▶ one UDP socket per address family and event loop
          ◀──future(reply)────  reader callback: parse datagram, find waiter by Via branch,
                                match Call-ID + CSeq + branch, wake the check on a final reply;
                                ICMP port unreachable (IP_RECVERR error queue): the waiter
                                whose request the ICMP quotes gets "connection refused"

    check ──▶ TCP: one connection per check, replies split by Content-Length (StreamFramer)

Thousands of concurrent UDP checks share one socket. Over TCP each check connects, sends and
reads until the final reply, then closes. Host names are resolved with ``getaddrinfo`` (no
RFC 3263 NAPTR/SRV). ``sips:`` (TLS) is not supported.

A result keeps the reply as evidence: ``status_code``, the reason ``SIP 200 OK``, the start of
the reply in ``body_excerpt`` and ``details`` with ``status_line``, ``reason_phrase``,
``server``/``user_agent`` (when sent), ``latency_s`` (first send to final reply), ``transport``,
``remote``, ``local`` and ``retransmissions``.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import ipaddress
import itertools
import logging
import os
import re
import secrets
import socket
import struct
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from monitors.probe import BODY_EXCERPT_CHARS, MonitorSpec, ProbeResult, timeout_reason
from monitors.probes.tcp import describe_socket_error, format_address, inner_timeout

logger = logging.getLogger(__name__)

USER_AGENT = "cpdops"
DEFAULT_PORT = 5060
TRANSPORTS = ("udp", "tcp")
OPTION_KEYS = ("transport", "accept_codes")
T1_S = 0.5
T2_S = 4.0
MAX_MESSAGE_BYTES = 65535
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
BRANCH_MAGIC = "z9hG4bK"
COMPACT_FORMS = {
    "i": "call-id",
    "v": "via",
    "f": "from",
    "t": "to",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "e": "content-encoding",
    "k": "supported",
    "s": "subject",
    "o": "event",
    "u": "allow-events",
}
"""RFC 3261 §7.3.3 (and RFC 3265) compact header names → full names (lower case)."""

_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?", re.IGNORECASE)
_CSEQ = re.compile(r"([0-9]{1,10})\s+(\S+)")
_HOST = re.compile(r"[A-Za-z0-9.-]+")
_BRANCH_IN_PAYLOAD = re.compile(rb";branch=(z9hG4bK[^;,\s]+)", re.IGNORECASE)


class SipParseError(ValueError):
    """A SIP message (or stream) that cannot be read."""


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class SipTarget:
    """Where to send OPTIONS: from ``sip:[user@]host[:port][;transport=…]``."""

    host: str
    port: int = DEFAULT_PORT
    transport: str = "udp"
    user: str | None = None

    @property
    def hostport(self) -> str:
        return format_address(self.host, self.port)

    @property
    def request_uri(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"sip:{user}{self.hostport}"


def parse_target(target: str, transport: str | None = None) -> SipTarget:
    """Read a SIP URI; ``transport`` (from the options) overrides the URI parameter."""
    scheme, sep, rest = target.strip().partition(":")
    if not sep or scheme.lower() not in ("sip", "sips"):
        raise ValueError(f"target must be a SIP URI like sip:host:5060, got {target!r}")
    if scheme.lower() == "sips":
        raise ValueError("sips: (SIP over TLS) is not supported")
    rest = rest.partition("?")[0]
    hostpart, *params = rest.split(";")
    user: str | None = None
    if "@" in hostpart:
        user, _, hostpart = hostpart.rpartition("@")
    if hostpart.startswith("["):
        close = hostpart.find("]")
        if close < 0 or not _is_ipv6(hostpart[1:close]):
            raise ValueError(f"target has an invalid IPv6 address: {target!r}")
        host, portpart = hostpart[1:close], hostpart[close + 1 :]
    else:
        host, _, port_text = hostpart.partition(":")
        portpart = f":{port_text}" if port_text else ""
        if not _HOST.fullmatch(host):
            raise ValueError(f"target has an invalid host: {target!r}")
    port = DEFAULT_PORT
    if portpart:
        if not portpart.startswith(":") or not portpart[1:].isdigit():
            raise ValueError(f"target has an invalid port: {target!r}")
        port = int(portpart[1:])
        if not 0 < port < 65536:
            raise ValueError(f"target port out of range: {target!r}")
    uri_transport = "udp"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "transport":
            uri_transport = value.strip().lower()
    chosen = (transport or uri_transport).lower()
    if chosen not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {chosen!r}")
    return SipTarget(host=host, port=port, transport=chosen, user=user or None)


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


@dataclass(frozen=True)
class AcceptCodes:
    """The final reply codes that pass: exact codes and whole classes (``2`` for 2xx)."""

    codes: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset({2})

    def __contains__(self, code: object) -> bool:
        return isinstance(code, int) and (code in self.codes or code // 100 in self.classes)

    @classmethod
    def parse(cls, value: object) -> AcceptCodes:
        """From ``[200, "2xx", "404"]``, ``"2xx,404"`` or ``404``; ``ValueError`` if unusable."""
        items: Iterable[object]
        if isinstance(value, str):
            items = [part for part in (p.strip() for p in value.split(",")) if part]
        elif isinstance(value, int) and not isinstance(value, bool):
            items = [value]
        elif isinstance(value, list | tuple | set | frozenset):
            items = value
        else:
            raise ValueError(f"accept_codes must be a list of codes, got {value!r}")
        codes: set[int] = set()
        classes: set[int] = set()
        for item in items:
            text = str(item).strip().lower() if not isinstance(item, bool) else ""
            if re.fullmatch(r"[2-6]xx", text):
                classes.add(int(text[0]))
            elif text.isdigit() and 200 <= int(text) <= 699:
                codes.add(int(text))
            else:
                raise ValueError(
                    f"accept_codes: {item!r} is not a final reply code (200..699) or class (2xx)"
                )
        if not codes and not classes:
            raise ValueError("accept_codes must not be empty")
        return cls(codes=frozenset(codes), classes=frozenset(classes))


@dataclass(frozen=True)
class SipOptions:
    """``spec.options`` of a sip monitor."""

    transport: str | None = None
    accept: AcceptCodes = AcceptCodes()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SipOptions:
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} (known: {', '.join(OPTION_KEYS)})")
        transport = options.get("transport")
        if transport is not None and (
            not isinstance(transport, str) or transport.lower() not in TRANSPORTS
        ):
            raise ValueError(f"option 'transport' must be one of {TRANSPORTS}, got {transport!r}")
        accept = AcceptCodes()
        if options.get("accept_codes") is not None:
            accept = AcceptCodes.parse(options["accept_codes"])
        return cls(transport=transport.lower() if transport else None, accept=accept)


def validate(spec: MonitorSpec) -> None:
    """Raise ``ValueError`` saying what is wrong with ``spec``'s target or options."""
    opts = SipOptions.from_options(spec.options)
    parse_target(spec.target, opts.transport)


# ------------------------------------------------------------------ messages


@dataclass(frozen=True)
class OptionsRequest:
    """One OPTIONS request and the identifiers its reply must echo."""

    target: SipTarget
    transport: str
    local_host: str
    local_port: int
    call_id: str
    branch: str
    from_tag: str
    cseq: int

    @classmethod
    def new(
        cls, target: SipTarget, transport: str, local_host: str, local_port: int, cseq: int
    ) -> OptionsRequest:
        """A request with fresh random Call-ID, branch and tag."""
        return cls(
            target=target,
            transport=transport,
            local_host=local_host,
            local_port=local_port,
            call_id=f"{secrets.token_hex(12)}@{_host_text(local_host)}",
            branch=BRANCH_MAGIC + secrets.token_hex(10),
            from_tag=secrets.token_hex(6),
            cseq=cseq,
        )

    def encode(self) -> bytes:
        local = format_address(self.local_host, self.local_port)
        host = _host_text(self.local_host)
        uri = self.target.request_uri
        transport_param = ";transport=tcp" if self.transport == "tcp" else ""
        lines = (
            f"OPTIONS {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} {local};branch={self.branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:cpdops@{host}>;tag={self.from_tag}",
            f"To: <{uri}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} OPTIONS",
            f"Contact: <sip:cpdops@{local}{transport_param}>",
            "Accept: application/sdp",
            f"User-Agent: {USER_AGENT}",
            "Content-Length: 0",
            "",
            "",
        )
        return "\r\n".join(lines).encode("utf-8")


def _host_text(host: str) -> str:
    """A host as written in a SIP URI or Via (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class SipResponse:
    """A parsed reply. Header names are lower case and compact forms expanded; ``raw`` is the
    message as received (evidence)."""

    status_code: int
    reason_phrase: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    raw: bytes = field(default=b"", compare=False, repr=False)

    @property
    def status_line(self) -> str:
        return f"SIP/2.0 {self.status_code} {self.reason_phrase}".rstrip()

    def header(self, name: str) -> str | None:
        """The first value of a header (a full name, any case), or ``None``."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def header_values(self, name: str) -> list[str]:
        """Every value of a header, comma-separated lists split (for Via and the like)."""
        wanted = name.lower()
        return [part for key, value in self.headers if key == wanted for part in _split(value)]

    @property
    def top_via_branch(self) -> str | None:
        vias = self.header_values("via")
        return via_params(vias[0]).get("branch") if vias else None

    @property
    def cseq(self) -> tuple[int, str] | None:
        match = _CSEQ.fullmatch(self.header("cseq") or "")
        return (int(match[1]), match[2]) if match else None


def via_params(via: str) -> dict[str, str]:
    """The parameters of one Via value, names lower case (``rport`` without value → ``""``)."""
    params: dict[str, str] = {}
    for part in _split(via, ";")[1:]:
        name, _, value = part.partition("=")
        params[name.strip().lower()] = value.strip()
    return params


def parse_response(data: bytes) -> SipResponse:
    """Parse one SIP response; ``SipParseError`` says what is wrong."""
    head, body = _split_head(data)
    lines = head.split("\n")
    match = _STATUS_LINE.fullmatch(lines[0].strip())
    if match is None:
        raise SipParseError(f"not a SIP/2.0 status line: {lines[0][:80]!r}")
    headers = _parse_headers(lines[1:])
    length_text = next((v for k, v in headers if k == "content-length"), None)
    if length_text is not None:
        length = _content_length(length_text)
        if len(body) < length:
            raise SipParseError(f"body shorter than Content-Length {length}")
        body = body[:length]
    return SipResponse(
        status_code=int(match[1]),
        reason_phrase=(match[2] or "").strip(),
        headers=headers,
        body=body,
        raw=data,
    )


class ReplyMatch(enum.Enum):
    FINAL = "final"
    PROVISIONAL = "provisional"
    UNRELATED = "unrelated"


def match_reply(request: OptionsRequest, response: SipResponse) -> ReplyMatch:
    """Is ``response`` the reply to ``request`` (Call-ID, CSeq number + method, top Via branch)?"""
    if response.header("call-id") != request.call_id:
        return ReplyMatch.UNRELATED
    if response.cseq != (request.cseq, "OPTIONS"):
        return ReplyMatch.UNRELATED
    if response.top_via_branch != request.branch:
        return ReplyMatch.UNRELATED
    return ReplyMatch.PROVISIONAL if response.status_code < 200 else ReplyMatch.FINAL


class StreamFramer:
    """Splits a SIP byte stream (TCP) into messages by the blank line and Content-Length.

    Keep-alive CRLFs between messages (RFC 5626) are skipped; a missing Content-Length counts as
    0. ``SipParseError`` when the stream cannot be framed (the connection is then useless).
    """

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_message_bytes

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages: list[bytes] = []
        while True:
            skip = len(self._buffer) - len(self._buffer.lstrip(b"\r\n"))
            del self._buffer[:skip]
            end = _head_end(self._buffer)
            if end is None:
                if len(self._buffer) > self._max:
                    raise SipParseError(f"no end of headers within {self._max} bytes")
                return messages
            head_len, body_start = end
            head = bytes(self._buffer[:head_len]).decode("utf-8", "replace").replace("\r\n", "\n")
            headers = _parse_headers(head.split("\n")[1:])
            length_text = next((v for k, v in headers if k == "content-length"), "0")
            total = body_start + _content_length(length_text)
            if total > self._max:
                raise SipParseError(f"message of {total} bytes exceeds {self._max}")
            if len(self._buffer) < total:
                return messages
            messages.append(bytes(self._buffer[:total]))
            del self._buffer[:total]


def _head_end(data: bytes | bytearray) -> tuple[int, int] | None:
    """(end of the header block, start of the body), accepting bare-LF line ends too."""
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return None


def _split_head(data: bytes) -> tuple[str, bytes]:
    end = _head_end(data)
    if end is None:
        raise SipParseError("no blank line after the headers")
    head = data[: end[0]].decode("utf-8", "replace").replace("\r\n", "\n")
    return head, data[end[1] :]


def _parse_headers(lines: list[str]) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):  # folded continuation of the previous header (LWS)
            if not headers:
                raise SipParseError("continuation line before any header")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, sep, value = line.partition(":")
        name = name.rstrip(" \t")
        if not sep or not _TOKEN.fullmatch(name):
            raise SipParseError(f"bad header line: {line[:80]!r}")
        key = name.lower()
        headers.append((COMPACT_FORMS.get(key, key), value.strip()))
    return tuple(headers)


def _content_length(text: str) -> int:
    if not text.strip().isdigit():
        raise SipParseError(f"bad Content-Length: {text[:20]!r}")
    return int(text)


def _split(value: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside quoted strings and <…>; parts stripped, empty ones dropped."""
    if '"' not in value and "<" not in value:  # the usual case (Via), and the fast one
        return [part for part in (p.strip() for p in value.split(sep)) if part]
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    depth = 0
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth = max(0, depth - 1)
        elif char == sep and not quoted and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]


# ------------------------------------------------------------------ UDP endpoint

_RECVERR: dict[int, tuple[int, int]] = {
    socket.AF_INET: (socket.IPPROTO_IP, 11),
    socket.AF_INET6: (socket.IPPROTO_IPV6, 25),
}
"""Linux IP_RECVERR / IPV6_RECVERR (the socket module of Python 3.11 does not export them)."""
_READ_BATCH = 1024
_LOCAL_IP_CACHE = 4096


class _Waiter:
    __slots__ = ("future", "received_at", "request")

    def __init__(self, request: OptionsRequest, future: asyncio.Future[SipResponse | str]) -> None:
        self.request = request
        self.future = future
        self.received_at = 0.0


class _UdpEndpoint:
    """One unconnected UDP socket; replies are dispatched to waiters by their Via branch.

    A waiter's future gets the final reply, or a failure reason (``connection refused`` from an
    ICMP error that quotes the request).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, family: int) -> None:
        self._loop = loop
        self._family = family
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            self._recverr = sys.platform == "linux"
            if self._recverr:
                level, option = _RECVERR[family]
                self._sock.setsockopt(level, option, 1)
            if family == socket.AF_INET6:
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Room for a burst of replies while the loop is busy sending (capped by the kernel
            # at net.core.rmem_max).
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            self._sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            self.port: int = self._sock.getsockname()[1]
            loop.add_reader(self._sock.fileno(), self._on_readable)
        except BaseException:
            self._sock.close()
            raise
        self._waiters: dict[str, _Waiter] = {}
        self._local_ips: dict[str, str] = {}

    def local_ip(self, remote_ip: str, port: int) -> str:
        """The address this machine sends from to ``remote_ip`` (for Via/Contact)."""
        found = self._local_ips.get(remote_ip)
        if found is None:
            with socket.socket(self._family, socket.SOCK_DGRAM) as probe:
                probe.connect((remote_ip, port))  # picks a route; sends nothing
                found = str(probe.getsockname()[0])
            if len(self._local_ips) >= _LOCAL_IP_CACHE:
                self._local_ips.clear()
            self._local_ips[remote_ip] = found
        return found

    def register(self, request: OptionsRequest) -> _Waiter:
        waiter = _Waiter(request, self._loop.create_future())
        self._waiters[request.branch] = waiter
        return waiter

    def unregister(self, waiter: _Waiter) -> None:
        if self._waiters.get(waiter.request.branch) is waiter:
            del self._waiters[waiter.request.branch]

    async def send(self, data: bytes, address: tuple[str, int]) -> None:
        for attempt in range(2):
            try:
                self._sock.sendto(data, address)
                return
            except BlockingIOError:
                await self._loop.sock_sendto(self._sock, data, address)
                return
            except OSError:
                # An ICMP error of an earlier datagram is reported on this send (and cleared):
                # hand it to its waiter and send again.
                self._drain_errors()
                if attempt:
                    raise

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for waiter in self._waiters.values():
            if not waiter.future.done():
                waiter.future.set_result("probe closed")
        self._waiters.clear()

    def _on_readable(self) -> None:
        for _ in range(_READ_BATCH):
            try:
                data, _ = self._sock.recvfrom(MAX_MESSAGE_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # a pending ICMP error; the error queue below says for which request
            self._dispatch(data)
        if self._recverr:
            self._drain_errors()

    def _dispatch(self, data: bytes) -> None:
        try:
            response = parse_response(data)
        except SipParseError as exc:
            logger.debug("ignored a malformed SIP datagram: %s", exc)
            return
        branch = response.top_via_branch
        waiter = self._waiters.get(branch) if branch else None
        if waiter is None or waiter.future.done():
            return  # stray, late or duplicate
        if match_reply(waiter.request, response) is ReplyMatch.FINAL:
            waiter.received_at = time.perf_counter()
            waiter.future.set_result(response)

    def _drain_errors(self) -> None:
        if not self._recverr:
            return
        while True:
            try:
                payload, ancdata, _, _ = self._sock.recvmsg(
                    MAX_MESSAGE_BYTES, socket.CMSG_SPACE(512), socket.MSG_ERRQUEUE
                )
            except OSError:
                return  # queue empty
            code = next(
                (struct.unpack_from("=I", data)[0] for _, _, data in ancdata if len(data) >= 4),
                errno.EIO,
            )
            match = _BRANCH_IN_PAYLOAD.search(payload)
            waiter = self._waiters.get(match[1].decode("ascii", "replace")) if match else None
            if waiter is not None and not waiter.future.done():
                waiter.future.set_result(describe_socket_error(OSError(code, os.strerror(code))))


# ------------------------------------------------------------------ the probe


class _Failed(Exception):
    """A check that ended without an accepted exchange (the message is the reason)."""


class SipProbe:
    """Sends OPTIONS to ``spec.target`` (see the module docstring); never raises for a failing
    target. UDP sockets are opened on first use, one per address family and event loop."""

    def __init__(self) -> None:
        self._endpoints: dict[tuple[asyncio.AbstractEventLoop, int], _UdpEndpoint] = {}
        self._cseq = itertools.count(1)

    async def check(self, spec: MonitorSpec) -> ProbeResult:
        at = datetime.now(UTC)
        started = time.perf_counter()
        try:
            opts = SipOptions.from_options(spec.options)
            target = parse_target(spec.target, opts.transport)
        except ValueError as exc:
            return ProbeResult.failure(f"invalid configuration: {exc}", duration_s=0.0, at=at)
        details: dict[str, Any] = {"transport": target.transport, "remote": target.hostport}

        def failure(reason: str) -> ProbeResult:
            return ProbeResult(
                ok=False,
                duration_s=time.perf_counter() - started,
                reason=reason,
                at=at,
                details=details,
            )

        loop = asyncio.get_running_loop()
        cseq = next(self._cseq) % 2**31 or 1
        try:
            async with asyncio.timeout_at(loop.time() + inner_timeout(spec.timeout_s)):
                family, ip = await _resolve(target)
                details["remote"] = format_address(ip, target.port)
                if target.transport == "udp":
                    endpoint = self._endpoint(loop, family)
                    response, latency = await _exchange_udp(endpoint, target, ip, cseq, details)
                else:
                    response, latency = await _exchange_tcp(target, ip, cseq, details)
        except TimeoutError:
            return failure(timeout_reason(spec.timeout_s))
        except _Failed as exc:
            return failure(str(exc))
        except (OSError, UnicodeError) as exc:  # UnicodeError: a host name IDNA refuses
            return failure(describe_socket_error(exc))
        details["status_line"] = response.status_line
        details["reason_phrase"] = response.reason_phrase
        details["latency_s"] = latency
        for name in ("server", "user-agent"):
            value = response.header(name)
            if value is not None:
                details[name.replace("-", "_")] = value
        code = response.status_code
        return ProbeResult(
            ok=code in opts.accept,
            duration_s=time.perf_counter() - started,
            reason=f"SIP {code} {response.reason_phrase}".rstrip(),
            status_code=code,
            body_excerpt=_excerpt(response),
            at=at,
            details=details,
        )

    async def aclose(self) -> None:
        """Close the UDP sockets (call on the loop that used them; others are closed there)."""
        current = asyncio.get_running_loop()
        endpoints, self._endpoints = self._endpoints, {}
        for (loop, _), endpoint in endpoints.items():
            if loop is current or loop.is_closed():
                endpoint.close()
            else:
                loop.call_soon_threadsafe(endpoint.close)

    def _endpoint(self, loop: asyncio.AbstractEventLoop, family: int) -> _UdpEndpoint:
        endpoint = self._endpoints.get((loop, family))
        if endpoint is None:
            endpoint = self._endpoints[(loop, family)] = _UdpEndpoint(loop, family)
        return endpoint


async def _resolve(target: SipTarget) -> tuple[int, str]:
    """(address family, IP address) of the target host; no DNS for an IP literal."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, target.host)
        except OSError:
            continue
        return family, target.host
    kind = socket.SOCK_DGRAM if target.transport == "udp" else socket.SOCK_STREAM
    infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=kind)
    if not infos:
        raise _Failed(f"name resolution failed: no address for {target.host}")
    family, _, _, _, sockaddr = infos[0]
    return int(family), str(sockaddr[0])


async def _exchange_udp(
    endpoint: _UdpEndpoint, target: SipTarget, ip: str, cseq: int, details: dict[str, Any]
) -> tuple[SipResponse, float]:
    local_ip = endpoint.local_ip(ip, target.port)
    details["local"] = format_address(local_ip, endpoint.port)
    request = OptionsRequest.new(target, "udp", local_ip, endpoint.port, cseq)
    data = request.encode()
    waiter = endpoint.register(request)
    details["retransmissions"] = 0
    try:
        sent_at = time.perf_counter()
        await endpoint.send(data, (ip, target.port))
        interval = T1_S
        while True:
            await asyncio.wait((waiter.future,), timeout=interval)
            if waiter.future.done():
                break
            await endpoint.send(data, (ip, target.port))
            details["retransmissions"] += 1
            interval = min(interval * 2, T2_S)
    finally:
        endpoint.unregister(waiter)
    outcome = waiter.future.result()
    if isinstance(outcome, str):
        raise _Failed(outcome)
    return outcome, waiter.received_at - sent_at


async def _exchange_tcp(
    target: SipTarget, ip: str, cseq: int, details: dict[str, Any]
) -> tuple[SipResponse, float]:
    reader, writer = await asyncio.open_connection(ip, target.port)
    try:
        local_ip, local_port = writer.get_extra_info("sockname")[:2]
        details["local"] = format_address(str(local_ip), int(local_port))
        request = OptionsRequest.new(target, "tcp", str(local_ip), int(local_port), cseq)
        framer = StreamFramer()
        sent_at = time.perf_counter()
        writer.write(request.encode())
        await writer.drain()
        while True:
            chunk = await reader.read(MAX_MESSAGE_BYTES)
            if not chunk:
                raise _Failed("connection closed before a final reply")
            try:
                messages = framer.feed(chunk)
            except SipParseError as exc:
                raise _Failed(f"protocol error: {exc}") from None
            for message in messages:
                if not message.startswith(b"SIP/"):
                    continue  # a request from the peer on our connection: not for a probe
                try:
                    response = parse_response(message)
                except SipParseError as exc:
                    raise _Failed(f"malformed reply: {exc}") from None
                if match_reply(request, response) is ReplyMatch.FINAL:
                    return response, time.perf_counter() - sent_at
    finally:
        writer.close()


def _excerpt(response: SipResponse) -> str:
    return response.raw[:BODY_EXCERPT_CHARS].decode("utf-8", "replace")
