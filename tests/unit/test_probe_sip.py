"""The pure parts of the sip probe: target and options, request building, reply parsing,
matching a reply to its request, and splitting a TCP stream into messages."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from monitors.probe import MonitorSpec, ProbeResult
from monitors.probes.sip import (
    AcceptCodes,
    OptionsRequest,
    ReplyMatch,
    SipOptions,
    SipParseError,
    SipProbe,
    SipResponse,
    SipTarget,
    StreamFramer,
    match_reply,
    parse_response,
    parse_target,
    via_params,
)

# ------------------------------------------------------------------ target and options


@pytest.mark.parametrize(
    ("uri", "transport", "expected"),
    [
        ("sip:127.0.0.1:5060;transport=udp", None, SipTarget("127.0.0.1", 5060, "udp")),
        ("sip:127.0.0.1", None, SipTarget("127.0.0.1", 5060, "udp")),
        ("SIP:10.0.0.1:5080;Transport=TCP", None, SipTarget("10.0.0.1", 5080, "tcp")),
        ("sip:10.0.0.1:5080;transport=tcp", "udp", SipTarget("10.0.0.1", 5080, "udp")),
        ("sip:pbx.example.org;lr;transport=tcp", None, SipTarget("pbx.example.org", 5060, "tcp")),
        ("sip:[::1]:5070", None, SipTarget("::1", 5070, "udp")),
        ("sip:[2001:db8::5]", "tcp", SipTarget("2001:db8::5", 5060, "tcp")),
        ("sip:ping@127.0.0.1:5060", None, SipTarget("127.0.0.1", 5060, "udp", user="ping")),
        (" sip:127.0.0.1:5060?Subject=x ", None, SipTarget("127.0.0.1", 5060, "udp")),
    ],
)
def test_parse_target(uri: str, transport: str | None, expected: SipTarget) -> None:
    assert parse_target(uri, transport) == expected


@pytest.mark.parametrize(
    ("uri", "transport", "message"),
    [
        ("127.0.0.1:5060", None, "SIP URI"),
        ("http://127.0.0.1:5060", None, "SIP URI"),
        ("sips:127.0.0.1:5061", None, "not supported"),
        ("sip:127.0.0.1:0", None, "out of range"),
        ("sip:127.0.0.1:70000", None, "out of range"),
        ("sip:127.0.0.1:50x", None, "invalid port"),
        ("sip:127.0.0.1:5060:1", None, "invalid port"),
        ("sip:[::1:5060", None, "IPv6"),
        ("sip:[nope]:5060", None, "IPv6"),
        ("sip::5060", None, "invalid host"),
        ("sip:bad_host!:5060", None, "invalid host"),
        ("sip:127.0.0.1;transport=sctp", None, "transport"),
        ("sip:127.0.0.1", "tls", "transport"),
    ],
)
def test_parse_target_rejects(uri: str, transport: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_target(uri, transport)


def test_target_uri_forms() -> None:
    assert SipTarget("::1", 5070).request_uri == "sip:[::1]:5070"
    assert SipTarget("127.0.0.1", 5060, user="ping").request_uri == "sip:ping@127.0.0.1:5060"
    assert SipTarget("h", 5061).hostport == "h:5061"


@pytest.mark.parametrize(
    ("value", "accepted", "rejected"),
    [
        (None, [200, 202, 299], [100, 183, 404, 503]),
        ([200], [200], [202, 404]),
        (["2xx", 404, "405", 483], [200, 250, 404, 405, 483], [403, 500]),
        ("2xx, 404", [204, 404], [405]),
        (" 4XX ", [404, 486], [200]),
        (404, [404], [200]),
        ((200, 503), [200, 503], [201]),
    ],
)
def test_accept_codes(value: object, accepted: list[int], rejected: list[int]) -> None:
    accept = AcceptCodes() if value is None else AcceptCodes.parse(value)
    for code in accepted:
        assert code in accept, code
    for code in rejected:
        assert code not in accept, code


@pytest.mark.parametrize(
    "value", [[], "", [100], ["1xx"], [700], ["abc"], [True], 2.5, {"a": 1}, ["7xx"]]
)
def test_accept_codes_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="accept_codes"):
        AcceptCodes.parse(value)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, SipOptions()),
        ({"transport": "TCP"}, SipOptions(transport="tcp")),
        ({"accept_codes": None}, SipOptions()),
        (
            {"transport": "udp", "accept_codes": [404]},
            SipOptions(
                transport="udp", accept=AcceptCodes(codes=frozenset({404}), classes=frozenset())
            ),
        ),
    ],
)
def test_sip_options(options: dict[str, Any], expected: SipOptions) -> None:
    assert SipOptions.from_options(options) == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"transprot": "udp"}, r"unknown option\(s\) \['transprot'\]"),
        ({"transport": "tls"}, "transport"),
        ({"transport": 5}, "transport"),
        ({"accept_codes": []}, "accept_codes"),
    ],
)
def test_sip_options_rejects(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SipOptions.from_options(options)


# ------------------------------------------------------------------ the request


def request(**overrides: Any) -> OptionsRequest:
    fields: dict[str, Any] = {
        "target": SipTarget("127.0.0.1", 5060, "udp"),
        "transport": "udp",
        "local_host": "127.0.0.1",
        "local_port": 40000,
        "call_id": "c0ffee@127.0.0.1",
        "branch": "z9hG4bKabc123",
        "from_tag": "f00",
        "cseq": 7,
    }
    fields.update(overrides)
    return OptionsRequest(**fields)


def test_request_encoding() -> None:
    assert request().encode() == (
        b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKabc123;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:cpdops@127.0.0.1>;tag=f00\r\n"
        b"To: <sip:127.0.0.1:5060>\r\n"
        b"Call-ID: c0ffee@127.0.0.1\r\n"
        b"CSeq: 7 OPTIONS\r\n"
        b"Contact: <sip:cpdops@127.0.0.1:40000>\r\n"
        b"Accept: application/sdp\r\n"
        b"User-Agent: cpdops\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


def test_request_encoding_tcp_and_ipv6() -> None:
    text = request(target=SipTarget("::1", 5070, "tcp"), transport="tcp", local_host="::1").encode()
    lines = text.decode().split("\r\n")
    assert lines[0] == "OPTIONS sip:[::1]:5070 SIP/2.0"
    assert lines[1] == "Via: SIP/2.0/TCP [::1]:40000;branch=z9hG4bKabc123;rport"
    assert lines[3] == "From: <sip:cpdops@[::1]>;tag=f00"
    assert lines[4] == "To: <sip:[::1]:5070>"
    assert lines[7] == "Contact: <sip:cpdops@[::1]:40000;transport=tcp>"
    assert text.endswith(b"Content-Length: 0\r\n\r\n")


def test_new_requests_get_fresh_identifiers() -> None:
    target = SipTarget("127.0.0.1")
    made = [OptionsRequest.new(target, "udp", "192.0.2.1", 5062, n) for n in range(50)]
    assert len({r.call_id for r in made}) == len({r.branch for r in made}) == 50
    assert len({r.from_tag for r in made}) == 50
    for r in made:
        assert r.branch.startswith("z9hG4bK") and len(r.branch) > 16
        assert r.call_id.endswith("@192.0.2.1")
    assert OptionsRequest.new(target, "udp", "::1", 1, 1).call_id.endswith("@[::1]")
    # What we send parses back with our own parser (same framing rules as replies).
    framed = StreamFramer().feed(made[0].encode())
    assert framed == [made[0].encode()]


# ------------------------------------------------------------------ parsing replies

OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKabc123;rport=40000;received=127.0.0.1\r\n"
    b"From: <sip:cpdops@127.0.0.1>;tag=f00\r\n"
    b"To: <sip:127.0.0.1:5060>;tag=srv1\r\n"
    b"Call-ID: c0ffee@127.0.0.1\r\n"
    b"CSeq: 7 OPTIONS\r\n"
    b"Server: kamailio (5.6.3 (x86_64/linux))\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def reply(status: str = "200 OK", *headers: str, body: bytes = b"", eol: str = "\r\n") -> bytes:
    """A reply to :func:`request`; ``headers`` replace the default ones of the same name."""
    defaults = {
        "via": "Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKabc123;rport=40000",
        "from": "From: <sip:cpdops@127.0.0.1>;tag=f00",
        "to": "To: <sip:127.0.0.1:5060>;tag=srv1",
        "call-id": "Call-ID: c0ffee@127.0.0.1",
        "cseq": "CSeq: 7 OPTIONS",
    }
    given: dict[str, list[str]] = {}
    for header in headers:
        given.setdefault(header.partition(":")[0].strip().lower(), []).append(header)
    lines = [f"SIP/2.0 {status}"]
    for name, default in defaults.items():
        lines.extend(given.pop(name, [default]))
    lines.extend(h for extra in given.values() for h in extra)
    lines.append(f"Content-Length: {len(body)}")
    return (eol.join(lines) + eol + eol).encode() + body


def test_parse_a_plain_reply() -> None:
    parsed = parse_response(OK_200)
    assert parsed.status_code == 200
    assert parsed.reason_phrase == "OK"
    assert parsed.status_line == "SIP/2.0 200 OK"
    assert parsed.header("Server") == "kamailio (5.6.3 (x86_64/linux))"
    assert parsed.header("CALL-ID") == "c0ffee@127.0.0.1"
    assert parsed.header("user-agent") is None
    assert parsed.cseq == (7, "OPTIONS")
    assert parsed.top_via_branch == "z9hG4bKabc123"
    assert parsed.body == b""
    assert parsed.raw == OK_200


@pytest.mark.parametrize(
    ("data", "checks"),
    [
        # reason phrases: several words, UTF-8, none at all
        (reply("404 Not Found Here"), {"status_code": 404, "reason_phrase": "Not Found Here"}),
        (reply("200 Всё хорошо"), {"reason_phrase": "Всё хорошо"}),
        (reply("200"), {"status_code": 200, "reason_phrase": "", "status_line": "SIP/2.0 200"}),
        (reply("100 Trying"), {"status_code": 100}),
        (b"sip/2.0 486 Busy Here\r\nCSeq: 1 OPTIONS\r\n\r\n", {"status_code": 486}),
        # compact forms: i (Call-ID), v (Via), l (Content-Length), f, t, m
        (
            b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP h;branch=z9hG4bKc1\r\ni: cid-1\r\n"
            b"f: <sip:a@h>;tag=1\r\nt: <sip:b@h>\r\nm: <sip:b@h>\r\nl: 0\r\n\r\n",
            {"call-id": "cid-1", "branch": "z9hG4bKc1", "contact": "<sip:b@h>"},
        ),
        # folded headers (continuation lines start with SP or HT)
        (
            b"SIP/2.0 200 OK\r\nServer: Big\r\n  PBX\r\n\t 1.0\r\nCall-ID: x\r\n\r\n",
            {"server": "Big PBX 1.0", "call-id": "x"},
        ),
        # several Via headers, and several values in one: the top one is the first
        (
            reply(
                "200 OK",
                "Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKtop, SIP/2.0/UDP p;branch=z9hG4bKp",
                "Via: SIP/2.0/UDP q;branch=z9hG4bKq",
            ),
            {"branch": "z9hG4bKtop", "vias": 3},
        ),
        # whitespace before the colon, bare LF line ends, header names in odd case
        (
            b"SIP/2.0 200 OK\nCALL-id : x\nCseq:   9   OPTIONS\n\n",
            {"call-id": "x", "cseq": (9, "OPTIONS")},
        ),
        # a body delimited by Content-Length (extra bytes after it are not part of the message)
        (reply("200 OK", body=b"v=0\r\n") + b"junk", {"body": b"v=0\r\n"}),
        # without Content-Length (UDP) the body is the rest of the datagram
        (b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\nv=0", {"body": b"v=0"}),
    ],
)
def test_parse_reply_forms(data: bytes, checks: dict[str, Any]) -> None:
    parsed = parse_response(data)
    for key, value in checks.items():
        if key == "branch":
            assert parsed.top_via_branch == value
        elif key == "vias":
            assert len(parsed.header_values("via")) == value
        elif key in ("status_code", "reason_phrase", "status_line", "body", "cseq"):
            assert getattr(parsed, key) == value
        else:
            assert parsed.header(key) == value, key


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no blank line"),
        (b"SIP/2.0 200 OK\r\nCall-ID: x\r\n", "no blank line"),
        (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nCall-ID: x\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\n\r\n", "status line"),
        (b"SIP/2.0 20 OK\r\n\r\n", "status line"),
        (b"SIP/2.0 700 Odd\r\n\r\n", "status line"),
        (b"SIP/2.0 099 Low\r\n\r\n", "status line"),
        (b"SIP/2.0 2000 OK\r\n\r\n", "status line"),
        (b"SIP/3.0 200 OK\r\n\r\n", "status line"),
        (b"SIP/2.0 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
        (b"SIP/2.0 200 OK\r\nBad Name: x\r\n\r\n", "bad header line"),
        (b"SIP/2.0 200 OK\r\n: x\r\n\r\n", "bad header line"),
        (b"SIP/2.0 200 OK\r\n folded: first\r\n\r\n", "continuation"),
        (b"SIP/2.0 200 OK\r\nContent-Length: abc\r\n\r\n", "Content-Length"),
        (b"SIP/2.0 200 OK\r\nl: -1\r\n\r\n", "Content-Length"),
        (b"SIP/2.0 200 OK\r\nContent-Length: 10\r\n\r\nshort", "shorter"),
    ],
)
def test_parse_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(SipParseError, match=message):
        parse_response(data)


def test_via_params_and_quoted_commas() -> None:
    params = via_params('SIP/2.0/UDP h:5060;branch=z9hG4bKx;RPort;received=1.2.3.4;x="a;b"')
    assert params == {"branch": "z9hG4bKx", "rport": "", "received": "1.2.3.4", "x": '"a;b"'}
    parsed = parse_response(
        b'SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;x="1,2";branch=z9hG4bKq, SIP/2.0/TCP g\r\n'
        b'Contact: "Doe, John" <sip:j@h>, <sip:k@h;p=a,b>\r\n\r\n'
    )
    assert parsed.header_values("via") == ['SIP/2.0/UDP h;x="1,2";branch=z9hG4bKq', "SIP/2.0/TCP g"]
    assert parsed.top_via_branch == "z9hG4bKq"
    assert parsed.header_values("contact") == ['"Doe, John" <sip:j@h>', "<sip:k@h;p=a,b>"]


# ------------------------------------------------------------------ matching


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (reply("200 OK"), ReplyMatch.FINAL),
        (reply("404 Not Found"), ReplyMatch.FINAL),
        (reply("483 Too Many Hops"), ReplyMatch.FINAL),
        (reply("503 Service Unavailable"), ReplyMatch.FINAL),
        (reply("100 Trying"), ReplyMatch.PROVISIONAL),
        (reply("183 Session Progress"), ReplyMatch.PROVISIONAL),
        # compact forms match like the long ones
        (
            b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKabc123\r\n"
            b"i: c0ffee@127.0.0.1\r\nCSeq: 7 OPTIONS\r\nl: 0\r\n\r\n",
            ReplyMatch.FINAL,
        ),
        # our Via on top, a proxy's below it
        (
            reply(
                "200 OK",
                "Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKabc123",
                "Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKproxy",
            ),
            ReplyMatch.FINAL,
        ),
        (reply("200 OK", "Call-ID: someone-else@127.0.0.1"), ReplyMatch.UNRELATED),
        (reply("200 OK", "Call-ID: C0FFEE@127.0.0.1"), ReplyMatch.UNRELATED),  # case-sensitive
        (reply("200 OK", "CSeq: 8 OPTIONS"), ReplyMatch.UNRELATED),
        (reply("200 OK", "CSeq: 7 INVITE"), ReplyMatch.UNRELATED),
        (reply("200 OK", "CSeq: 7 options"), ReplyMatch.UNRELATED),  # methods are case-sensitive
        (reply("200 OK", "CSeq: seven OPTIONS"), ReplyMatch.UNRELATED),
        (
            reply("200 OK", "Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKother"),
            ReplyMatch.UNRELATED,
        ),
        (reply("200 OK", "Via: SIP/2.0/UDP 127.0.0.1:40000"), ReplyMatch.UNRELATED),
        # our branch only in a lower Via: not a reply to us
        (
            reply(
                "200 OK",
                "Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKproxy, "
                "SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKabc123",
            ),
            ReplyMatch.UNRELATED,
        ),
        (
            b"SIP/2.0 200 OK\r\nCall-ID: c0ffee@127.0.0.1\r\nCSeq: 7 OPTIONS\r\n\r\n",
            ReplyMatch.UNRELATED,
        ),
        (
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKabc123\r\n\r\n",
            ReplyMatch.UNRELATED,
        ),
    ],
)
def test_match_reply(data: bytes, expected: ReplyMatch) -> None:
    assert match_reply(request(), parse_response(data)) is expected


def test_a_reply_matches_only_its_own_request() -> None:
    target = SipTarget("127.0.0.1")
    first = OptionsRequest.new(target, "udp", "127.0.0.1", 40000, 1)
    second = OptionsRequest.new(target, "udp", "127.0.0.1", 40000, 1)
    answer = parse_response(
        reply(
            "200 OK",
            f"Via: SIP/2.0/UDP 127.0.0.1:40000;branch={first.branch}",
            f"Call-ID: {first.call_id}",
            "CSeq: 1 OPTIONS",
        )
    )
    assert match_reply(first, answer) is ReplyMatch.FINAL
    assert match_reply(second, answer) is ReplyMatch.UNRELATED


# ------------------------------------------------------------------ stream framing


def feed_all(chunks: list[bytes], framer: StreamFramer | None = None) -> list[bytes]:
    framer = framer or StreamFramer()
    found: list[bytes] = []
    for chunk in chunks:
        found.extend(framer.feed(chunk))
    return found


def test_framer_reassembles_byte_by_byte() -> None:
    message = reply("200 OK", body=b"v=0\r\no=- 1 1 IN IP4 h\r\n")
    assert feed_all([message[i : i + 1] for i in range(len(message))]) == [message]


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([OK_200 + OK_200], [OK_200, OK_200]),
        ([OK_200[:10], OK_200[10:] + OK_200[:5], OK_200[5:]], [OK_200, OK_200]),
        ([b"\r\n\r\n" + OK_200 + b"\r\n"], [OK_200]),  # RFC 5626 keep-alives around it
        ([b"SIP/2.0 200 OK\r\nl: 3\r\n\r\nabcSIP/2.0 1"], [b"SIP/2.0 200 OK\r\nl: 3\r\n\r\nabc"]),
        ([b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\nnext"], [b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n"]),
        (
            [b"SIP/2.0 200 OK\nContent-Length: 2\n\nhi"],
            [b"SIP/2.0 200 OK\nContent-Length: 2\n\nhi"],
        ),
        ([OK_200[:-1]], []),
        ([b"SIP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nab"], []),
    ],
)
def test_framer_splits_messages(chunks: list[bytes], expected: list[bytes]) -> None:
    assert feed_all(chunks) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SIP/2.0 200 OK\r\nContent-Length: nope\r\n\r\n", "Content-Length"),
        (b"SIP/2.0 200 OK\r\nContent-Length: 999999\r\n\r\n", "exceeds"),
        (b"SIP/2.0 200 OK\r\n" + b"X-Pad: " + b"a" * 70000, "no end of headers"),
        (b"SIP/2.0 200 OK\r\nbroken header\r\n\r\n", "bad header line"),
    ],
)
def test_framer_rejects_unframeable_streams(data: bytes, message: str) -> None:
    with pytest.raises(SipParseError, match=message):
        StreamFramer().feed(data)


# ------------------------------------------------------------------ unusable targets


@pytest.mark.parametrize(
    ("target", "options", "reason"),
    [
        ("http://127.0.0.1/", {}, "invalid configuration: target must be a SIP URI"),
        ("sip:127.0.0.1", {"accept": [200]}, "invalid configuration: unknown option"),
        ("sip:127.0.0.1", {"accept_codes": ["1xx"]}, "invalid configuration: accept_codes"),
        # refused by IDNA before any lookup: no DNS traffic
        ("sip:a..b:5060", {}, "name resolution failed: invalid host name"),
    ],
)
def test_unusable_targets_are_failed_results(
    target: str, options: dict[str, Any], reason: str
) -> None:
    spec = MonitorSpec(
        id="m", name="m", tenant="t", host="h", kind="sip", target=target, options=options
    )

    async def check() -> ProbeResult:
        probe = SipProbe()
        try:
            return await probe.check(spec)
        finally:
            await probe.aclose()

    result = asyncio.run(check())
    assert not result.ok
    assert result.reason.startswith(reason)
    assert result.status_code is None


def test_response_equality_ignores_the_raw_bytes() -> None:
    a = parse_response(OK_200)
    b = parse_response(OK_200.replace(b"Content-Length: 0", b"l:0"))
    assert a.raw != b.raw
    assert a.headers[:-1] == b.headers[:-1]
    assert SipResponse(200, "OK", (), raw=b"x") == SipResponse(200, "OK", (), raw=b"y")
