"""The tcp and sip probes against real peers on 127.0.0.1.

* a real Kamailio (Debian package, stock /etc/kamailio/kamailio.cfg) on a free port, UDP and
  TCP, with a private run dir; it answers ``OPTIONS sip:127.0.0.1:<port>`` with
  ``200 Keepalive`` and an OPTIONS to a user it does not know with ``404 Not Found``;
* small Python peers for what Kamailio will not do on demand: decoy replies, dropped requests,
  silence, a reply dribbled over TCP, a closed connection;
* plain TCP listeners for the tcp probe.

Kamailio is installed with apt-get when missing and we are root; otherwise its tests are
skipped, unless ``CPDOPS_REQUIRE_KAMAILIO=1`` (CI), which makes that a failure. Every process
and socket a test opens is closed by a fixture, also when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from monitors.engine import MonitorEngine, StateChange
from monitors.probe import MonitorSpec, Probe, ProbeResult
from monitors.probes.sip import SipProbe
from monitors.probes.tcp import TcpProbe, parse_target
from monitors.state import MonitorStatus

DOWN, UP, PENDING = MonitorStatus.DOWN, MonitorStatus.UP, MonitorStatus.PENDING
DEADLINE_S = 30.0
KAMAILIO_CFG = "/etc/kamailio/kamailio.cfg"
REQUIRE_ENV = "CPDOPS_REQUIRE_KAMAILIO"


# ------------------------------------------------------------------ helpers


def spec(kind: str, target: str, **overrides: Any) -> MonitorSpec:
    fields: dict[str, Any] = {
        "id": f"{kind}-1",
        "name": f"{kind} check",
        "tenant": "acme",
        "host": "local",
        "kind": kind,
        "target": target,
        "timeout_s": 2.0,
    }
    fields.update(overrides)
    return MonitorSpec(**fields)


def check(probe_type: Callable[[], Probe], monitor: MonitorSpec) -> ProbeResult:
    """One check on a fresh event loop with a fresh probe, closed afterwards."""

    async def run() -> ProbeResult:
        probe = probe_type()
        try:
            return await probe.check(monitor)
        finally:
            await probe.aclose()

    return asyncio.run(run())


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (SIP listens on both)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both UDP and TCP")


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


# ------------------------------------------------------------------ Kamailio


def kamailio_binary() -> str:
    """The kamailio binary, installed with apt-get if missing (root only); else skip/fail."""
    found = shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/sbin")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        unavailable("kamailio is not installed (apt-get install kamailio needs root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "kamailio"]
    for commands in ([install], [["apt-get", "update"], install]):
        if all(
            subprocess.run(cmd, env=env, capture_output=True, check=False, timeout=900).returncode
            == 0
            for cmd in commands
        ):
            break
    found = shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/sbin")
    if not found:
        unavailable("apt-get install kamailio failed")
    return found


def unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


class Kamailio:
    """Kamailio with the stock config on 127.0.0.1:``port`` (UDP and TCP), run dir ``workdir``.

    Started in its own process group (the main process forks its workers); :meth:`stop` ends the
    group and waits until every process of it is gone.
    """

    def __init__(self, binary: str, workdir: Path, port: int) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self.log = workdir / "kamailio.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [
            self.binary,
            "-f", KAMAILIO_CFG,
            "-l", f"udp:127.0.0.1:{self.port}",
            "-l", f"tcp:127.0.0.1:{self.port}",
            "-DD",  # stay in the foreground (workers are still forked)
            "-E",  # log to stderr
            "-n", "2",  # 2 workers per listener instead of the config's 8
            "-a", "no",  # no reverse-DNS aliases for the listen addresses
            "-Y", str(self.workdir),  # runtime dir: ctl socket and RPC FIFO
            "-P", str(self.workdir / "kamailio.pid"),
            "-w", str(self.workdir),
        ]  # fmt: skip

    def uri(self, transport: str = "udp", user: str = "") -> str:
        at = f"{user}@" if user else ""
        return f"sip:{at}127.0.0.1:{self.port};transport={transport}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + DEADLINE_S
        while not all(self.answers(t) for t in ("udp", "tcp")):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"kamailio did not come up: {self.command}\n{tail}")
            time.sleep(0.1)

    def answers(self, transport: str) -> bool:
        return check(SipProbe, spec("sip", self.uri(transport), timeout_s=0.5)).ok

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        group = proc.pid  # start_new_session: the group id is our child's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            proc.wait(timeout=15)
        deadline, killed = time.monotonic() + 15, False
        while _group_alive(group):  # workers may outlive the main process for a moment
            if time.monotonic() > deadline:
                if killed:
                    raise RuntimeError(f"kamailio process group {group} does not go away")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                deadline, killed = time.monotonic() + 5, True
            time.sleep(0.05)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def kamailio_bin() -> str:
    return kamailio_binary()


@pytest.fixture(scope="session")
def kamailio(kamailio_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    server = Kamailio(kamailio_bin, tmp_path_factory.mktemp("kamailio"), free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_kamailio(kamailio_bin: str, tmp_path: Path) -> Iterator[Kamailio]:
    """A Kamailio of this test alone (it may stop and restart it)."""
    server = Kamailio(kamailio_bin, tmp_path / "kamailio", free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ sip against Kamailio


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_options_to_kamailio(kamailio: Kamailio, transport: str) -> None:
    result = check(SipProbe, spec("sip", kamailio.uri(transport)))
    assert result.ok, result
    assert result.status_code == 200
    assert result.reason == "SIP 200 Keepalive"
    assert result.body_excerpt.startswith("SIP/2.0 200 Keepalive\r\n")
    details = result.details
    assert details["status_line"] == "SIP/2.0 200 Keepalive"
    assert details["reason_phrase"] == "Keepalive"
    assert details["server"].startswith("kamailio (")
    assert details["transport"] == transport
    assert details["remote"] == f"127.0.0.1:{kamailio.port}"
    assert details["local"].startswith("127.0.0.1:")
    assert 0 < details["latency_s"] <= result.duration_s


def test_transport_option_overrides_the_uri(kamailio: Kamailio) -> None:
    result = check(SipProbe, spec("sip", kamailio.uri("udp"), options={"transport": "tcp"}))
    assert result.ok and result.details["transport"] == "tcp"


def test_accept_codes_decide_on_a_404(kamailio: Kamailio) -> None:
    target = kamailio.uri("udp", user="nobody")
    refused = check(SipProbe, spec("sip", target))
    assert not refused.ok
    assert (refused.status_code, refused.reason) == (404, "SIP 404 Not Found")
    accepted = check(SipProbe, spec("sip", target, options={"accept_codes": ["2xx", 404]}))
    assert accepted.ok and accepted.status_code == 404


def test_many_concurrent_checks_share_one_udp_socket(kamailio: Kamailio) -> None:
    monitors = [spec("sip", kamailio.uri("udp"), id=f"s{i}", timeout_s=5.0) for i in range(1000)]

    async def run() -> list[ProbeResult]:
        probe = SipProbe()
        try:
            return await asyncio.gather(*(probe.check(m) for m in monitors))
        finally:
            await probe.aclose()

    results = asyncio.run(run())
    assert all(r.ok for r in results), {r.reason for r in results}
    assert len({r.details["local"] for r in results}) == 1


def test_sip_monitors_follow_kamailio_through_the_engine(own_kamailio: Kamailio) -> None:
    changes: list[StateChange] = []
    lock = threading.Lock()

    def on_change(change: StateChange) -> None:
        with lock:
            changes.append(change)

    def transitions(monitor_id: str) -> list[tuple[MonitorStatus, MonitorStatus]]:
        with lock:
            return [(c.old, c.new) for c in changes if c.spec.id == monitor_id]

    ids = ("sip-udp", "sip-tcp")
    monitors = [
        spec(
            "sip",
            own_kamailio.uri(transport),
            id=f"sip-{transport}",
            interval_s=0.3,
            timeout_s=1.0,
            failure_threshold=2,
        )
        for transport in ("udp", "tcp")
    ]
    engine = MonitorEngine(on_change, jitter=False)
    engine.start()
    try:
        engine.set_monitors(monitors)
        wait_until("UP", lambda: all(transitions(i) == [(PENDING, UP)] for i in ids))
        for view in engine.snapshot():
            assert view.last_result is not None and view.last_result.status_code == 200

        own_kamailio.stop()
        wait_until(
            "DOWN",
            lambda: all(transitions(i)[-1:] == [(PENDING, DOWN)] for i in ids),
            timeout=10.0,  # two 0.3 s intervals of instant refusals, with ample slack
        )
        counts = {v.spec.id: v.probe_count for v in engine.snapshot()}
        wait_until(
            "more failed checks",
            lambda: all(v.probe_count >= counts[v.spec.id] + 3 for v in engine.snapshot()),
        )
        for monitor_id in ids:
            downs = [t for t in transitions(monitor_id) if t[1] is DOWN]
            assert downs == [(PENDING, DOWN)], transitions(monitor_id)
            assert transitions(monitor_id)[-1] == (PENDING, DOWN)
        for view in engine.snapshot():
            assert view.status is DOWN
            assert view.last_result is not None
            assert view.last_result.reason == "connection refused", view.last_result

        own_kamailio.start()
        wait_until("UP again", lambda: all(transitions(i)[-1] == (DOWN, UP) for i in ids))
    finally:
        engine.stop()
    for monitor_id in ids:
        assert [t for t in transitions(monitor_id) if t[1] is DOWN] == [(PENDING, DOWN)]


# ------------------------------------------------------------------ sip against Python peers


def request_headers(data: bytes) -> dict[str, str]:
    """First value of each header of a request we sent (our own, so no compact forms)."""
    headers: dict[str, str] = {}
    for line in data.decode().split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    return headers


def answer(
    request: bytes, status: str, *, call_id: str = "", cseq: str = "", via: str = ""
) -> bytes:
    """A reply to ``request``; ``call_id``/``cseq``/``via`` replace the echoed values."""
    h = request_headers(request)
    lines = [
        f"SIP/2.0 {status}",
        f"Via: {via or h['via']}",
        f"From: {h['from']}",
        f"To: {h['to']};tag=peer",
        f"Call-ID: {call_id or h['call-id']}",
        f"CSeq: {cseq or h['cseq']}",
        "User-Agent: test-peer/1.0",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class UdpPeer:
    """A UDP SIP peer on 127.0.0.1; ``respond(request) -> [datagrams]`` decides the replies."""

    def __init__(self, respond: Callable[[bytes], list[bytes]]) -> None:
        self.requests: list[bytes] = []
        self._respond = respond
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, address = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.requests.append(data)
            for datagram in self._respond(data):
                self._sock.sendto(datagram, address)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@pytest.fixture
def udp_peer() -> Iterator[Callable[[Callable[[bytes], list[bytes]]], UdpPeer]]:
    peers: list[UdpPeer] = []

    def make(respond: Callable[[bytes], list[bytes]]) -> UdpPeer:
        peers.append(UdpPeer(respond))
        return peers[-1]

    yield make
    for peer in peers:
        peer.close()


def test_udp_decoys_and_provisional_replies_are_ignored(
    udp_peer: Callable[[Callable[[bytes], list[bytes]]], UdpPeer],
) -> None:
    def respond(request: bytes) -> list[bytes]:
        h = request_headers(request)
        number = h["cseq"].split()[0]
        return [
            b"garbage that is no SIP at all",
            answer(request, "200 OK", call_id="someone-else@127.0.0.1"),
            answer(request, "200 OK", cseq=f"{number} INVITE"),
            answer(request, "200 OK", cseq=f"{int(number) + 1} OPTIONS"),
            answer(request, "200 OK", via="SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKnotours"),
            answer(request, "180 Ringing"),
            answer(request, "486 Busy Here"),  # the real final reply
            answer(request, "200 OK"),  # a second final reply: too late to count
        ]

    peer = udp_peer(respond)
    target = f"sip:127.0.0.1:{peer.port}"
    busy = check(SipProbe, spec("sip", target))
    assert not busy.ok
    assert (busy.status_code, busy.reason) == (486, "SIP 486 Busy Here")
    assert busy.details["user_agent"] == "test-peer/1.0"
    assert "server" not in busy.details
    accepted = check(SipProbe, spec("sip", target, options={"accept_codes": "2xx,486"}))
    assert accepted.ok and accepted.status_code == 486

    sent = peer.requests[0].decode()
    lines = sent.split("\r\n")
    assert lines[0] == f"OPTIONS sip:127.0.0.1:{peer.port} SIP/2.0"
    assert lines[1].startswith("Via: SIP/2.0/UDP 127.0.0.1:")
    assert ";branch=z9hG4bK" in lines[1] and lines[1].endswith(";rport")
    headers = request_headers(peer.requests[0])
    assert headers["max-forwards"] == "70"
    assert headers["from"].startswith("<sip:cpdops@127.0.0.1>;tag=")
    assert headers["to"] == f"<sip:127.0.0.1:{peer.port}>"
    assert headers["call-id"].endswith("@127.0.0.1")
    assert headers["cseq"].endswith(" OPTIONS")
    assert headers["contact"].startswith("<sip:cpdops@127.0.0.1:")
    assert headers["accept"] == "application/sdp"
    assert headers["user-agent"] == "cpdops"
    assert sent.endswith("Content-Length: 0\r\n\r\n")


def test_udp_request_is_retransmitted_until_answered(
    udp_peer: Callable[[Callable[[bytes], list[bytes]]], UdpPeer],
) -> None:
    peer = udp_peer(lambda request: [answer(request, "200 OK")] if len(peer.requests) > 1 else [])
    result = check(SipProbe, spec("sip", f"sip:127.0.0.1:{peer.port}"))
    assert result.ok, result
    assert result.details["retransmissions"] == 1
    assert result.details["latency_s"] >= 0.45  # timer E: the second send after T1 = 0.5 s
    assert len(peer.requests) == 2 and peer.requests[0] == peer.requests[1]


def test_udp_silence_is_a_timeout(
    udp_peer: Callable[[Callable[[bytes], list[bytes]]], UdpPeer],
) -> None:
    peer = udp_peer(lambda request: [])
    result = check(SipProbe, spec("sip", f"sip:127.0.0.1:{peer.port}", timeout_s=1.0))
    assert not result.ok
    assert result.reason == "timeout after 1.0s"
    assert result.status_code is None
    assert result.details["retransmissions"] == 1  # at 0.5 s; the next would be at 1.5 s
    assert result.duration_s >= 0.5


def test_udp_closed_port_is_refused_at_once() -> None:
    port = free_port()
    result = check(SipProbe, spec("sip", f"sip:127.0.0.1:{port}", timeout_s=5.0))
    assert not result.ok
    assert result.reason == "connection refused"  # from the ICMP error, not a timeout


def test_refusal_of_one_target_does_not_disturb_others(
    kamailio: Kamailio,
) -> None:
    closed = f"sip:127.0.0.1:{free_port()}"
    monitors = [
        spec("sip", closed if i % 2 else kamailio.uri("udp"), id=f"m{i}", timeout_s=5.0)
        for i in range(200)
    ]

    async def run() -> list[ProbeResult]:
        probe = SipProbe()
        try:
            return await asyncio.gather(*(probe.check(m) for m in monitors))
        finally:
            await probe.aclose()

    results = asyncio.run(run())
    assert [r.reason for r in results[0::2]] == ["SIP 200 Keepalive"] * 100
    assert [r.reason for r in results[1::2]] == ["connection refused"] * 100


class TcpPeer:
    """A TCP listener on 127.0.0.1; ``serve(conn)`` handles each connection in a thread."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self._serve = serve
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    self._serve(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()


@pytest.fixture
def tcp_peer() -> Iterator[Callable[[Callable[[socket.socket], None]], TcpPeer]]:
    peers: list[TcpPeer] = []

    def make(serve: Callable[[socket.socket], None]) -> TcpPeer:
        peers.append(TcpPeer(serve))
        return peers[-1]

    yield make
    for peer in peers:
        peer.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_tcp_reply_is_framed_by_content_length(
    tcp_peer: Callable[[Callable[[socket.socket], None]], TcpPeer],
) -> None:
    def serve(conn: socket.socket) -> None:
        request = read_request(conn)
        final = answer(request, "200 OK").replace(
            b"Content-Length: 0\r\n\r\n", b"Content-Type: application/sdp\r\nl: 5\r\n\r\nv=0\r\n"
        )
        stream = b"\r\n\r\n" + answer(request, "100 Trying") + final
        for i in range(0, len(stream), 7):  # dribble it out in small segments
            conn.sendall(stream[i : i + 7])
            time.sleep(0.001)
        time.sleep(0.2)  # keep the connection open: the probe must not wait for EOF

    peer = tcp_peer(serve)
    result = check(SipProbe, spec("sip", f"sip:127.0.0.1:{peer.port};transport=tcp"))
    assert result.ok, result
    assert result.status_code == 200
    assert result.body_excerpt.endswith("l: 5\r\n\r\nv=0\r\n")
    assert result.details["transport"] == "tcp"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"", "connection closed before a final reply"),
        (b"SIP/2.0 2xx Odd\r\nContent-Length: 0\r\n\r\n", "malformed reply: not a SIP/2.0"),
        (b"SIP/2.0 200 OK\r\nContent-Length: x\r\n\r\n", "protocol error: bad Content-Length"),
    ],
)
def test_tcp_broken_replies(
    tcp_peer: Callable[[Callable[[socket.socket], None]], TcpPeer], reply: bytes, reason: str
) -> None:
    def serve(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(reply)

    peer = tcp_peer(serve)
    result = check(SipProbe, spec("sip", f"sip:127.0.0.1:{peer.port};transport=tcp"))
    assert not result.ok
    assert result.reason.startswith(reason), result.reason


def test_tcp_closed_port_is_refused() -> None:
    result = check(SipProbe, spec("sip", f"sip:127.0.0.1:{free_port()};transport=tcp"))
    assert (result.ok, result.reason) == (False, "connection refused")


# ------------------------------------------------------------------ the tcp probe


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("tcp://127.0.0.1:5432", ("127.0.0.1", 5432)),
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("db.local:5432", ("db.local", 5432)),
        ("tcp://[::1]:22", ("::1", 22)),
        ("[::1]:22", ("::1", 22)),
    ],
)
def test_tcp_target(target: str, expected: tuple[str, int]) -> None:
    assert parse_target(target) == expected


@pytest.mark.parametrize(
    "target", ["127.0.0.1", "tcp://127.0.0.1", "http://127.0.0.1:80", "h:0", "h:99999", "h:x"]
)
def test_tcp_target_rejects(target: str) -> None:
    with pytest.raises(ValueError):
        parse_target(target)


def test_tcp_connects_to_a_listener(
    tcp_peer: Callable[[Callable[[socket.socket], None]], TcpPeer],
) -> None:
    peer = tcp_peer(lambda conn: None)
    result = check(TcpProbe, spec("tcp", f"tcp://127.0.0.1:{peer.port}"))
    assert (result.ok, result.reason) == (True, "connected")
    assert result.details["remote"] == f"127.0.0.1:{peer.port}"
    assert 0 < result.details["connect_s"] <= result.duration_s


def test_tcp_closed_port_is_refused_by_the_tcp_probe() -> None:
    result = check(TcpProbe, spec("tcp", f"127.0.0.1:{free_port()}"))
    assert (result.ok, result.reason) == (False, "connection refused")


def test_tcp_send_and_expect(
    tcp_peer: Callable[[Callable[[socket.socket], None]], TcpPeer],
) -> None:
    def serve(conn: socket.socket) -> None:
        if conn.recv(64) == b"PING\r\n":
            conn.sendall(b"+PO")
            time.sleep(0.05)
            conn.sendall(b"NG\r\n")  # the expected text arrives in two reads

    peer = tcp_peer(serve)
    target = f"127.0.0.1:{peer.port}"
    ping = {"send": "PING\r\n"}
    ok = check(TcpProbe, spec("tcp", target, options={**ping, "expect": "+PONG"}))
    assert (ok.ok, ok.reason) == (True, "connected; expected reply received")
    assert ok.body_excerpt == "+PONG\r\n"
    wrong = check(TcpProbe, spec("tcp", target, options={**ping, "expect": b"-ERR"}))
    assert (wrong.ok, wrong.reason) == (False, "expected '-ERR' not received")
    assert wrong.body_excerpt == "+PONG\r\n"


def test_tcp_expect_a_banner_and_time_out_on_silence(
    tcp_peer: Callable[[Callable[[socket.socket], None]], TcpPeer],
) -> None:
    banner = tcp_peer(lambda conn: conn.sendall(b"220 mail ESMTP ready\r\n"))
    greeted = check(TcpProbe, spec("tcp", f"127.0.0.1:{banner.port}", options={"expect": "220"}))
    assert greeted.ok

    def silent(conn: socket.socket) -> None:
        conn.recv(64)  # holds the connection open until the probe gives up

    quiet = tcp_peer(silent)
    result = check(
        TcpProbe, spec("tcp", f"127.0.0.1:{quiet.port}", timeout_s=0.5, options={"expect": "x"})
    )
    assert (result.ok, result.reason) == (False, "timeout after 0.5s")

    def chat(conn: socket.socket) -> None:
        conn.sendall(b"hello\r\n")
        conn.recv(64)

    chatty = tcp_peer(chat)
    partial = check(
        TcpProbe, spec("tcp", f"127.0.0.1:{chatty.port}", timeout_s=0.5, options={"expect": "x"})
    )
    assert (partial.ok, partial.reason) == (False, "expected 'x' not received")
    assert partial.body_excerpt == "hello\r\n"


@pytest.mark.parametrize(
    ("target", "options", "reason"),
    [
        ("127.0.0.1", {}, "invalid configuration: target needs a host and a port"),
        ("127.0.0.1:1", {"expct": "x"}, "invalid configuration: unknown option"),
        ("127.0.0.1:1", {"send": 5}, "invalid configuration: option 'send'"),
        ("a..b:80", {}, "name resolution failed: invalid host name"),  # no DNS lookup
    ],
)
def test_tcp_bad_configuration(target: str, options: dict[str, Any], reason: str) -> None:
    result = check(TcpProbe, spec("tcp", target, options=options))
    assert not result.ok and result.reason.startswith(reason)
