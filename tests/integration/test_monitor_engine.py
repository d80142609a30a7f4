"""The monitor engine against real sockets on 127.0.0.1.

Targets: a ThreadingHTTPServer whose /health answers 200 or 500 on demand, a port nobody listens
on, and a listening socket that never accepts (the TCP handshake completes, no answer ever comes).
Every wait is a poll with a deadline; no assertion depends on how fast the machine is.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import DuplicateTimeseries

from monitors.engine import MonitorEngine, MonitorView, StateChange
from monitors.metrics import register
from monitors.probe import MonitorSpec
from monitors.state import MonitorStatus

DOWN, UP, PENDING, MAINT = (
    MonitorStatus.DOWN,
    MonitorStatus.UP,
    MonitorStatus.PENDING,
    MonitorStatus.MAINTENANCE,
)
DEADLINE_S = 30.0


# ------------------------------------------------------------------ local targets


class HealthServer:
    """/health answers ``self.status`` with a short body; ``stop()`` closes the port."""

    def __init__(self) -> None:
        self.status = 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = owner.status if self.path == "/health" else 404
                body = b"ok" if code == 200 else b"failing"
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()


@pytest.fixture
def server() -> Iterator[HealthServer]:
    srv = HealthServer()
    yield srv
    srv.stop()


@pytest.fixture
def dead_url() -> str:
    """A port that was just free: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/health"


@pytest.fixture
def hanging_url() -> Iterator[str]:
    """Listens (the kernel completes handshakes) but never accepts, so never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/health"


class Recorder:
    """``on_change`` that keeps every change (called from the engine's notify thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changes: list[StateChange] = []

    def __call__(self, change: StateChange) -> None:
        with self._lock:
            self._changes.append(change)

    def changes(self, monitor_id: str) -> list[StateChange]:
        with self._lock:
            return [c for c in self._changes if c.spec.id == monitor_id]

    def transitions(self, monitor_id: str) -> list[tuple[MonitorStatus, MonitorStatus]]:
        return [(c.old, c.new) for c in self.changes(monitor_id)]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def engine(recorder: Recorder) -> Iterator[MonitorEngine]:
    eng = MonitorEngine(recorder, jitter=False)
    eng.start()
    yield eng
    eng.stop()


# ------------------------------------------------------------------ helpers


def spec(monitor_id: str, target: str, **overrides: object) -> MonitorSpec:
    fields: dict[str, object] = {
        "id": monitor_id,
        "name": f"{monitor_id} health",
        "tenant": "acme",
        "host": "local",
        "kind": "http",
        "target": target,
        "interval_s": 0.2,
        "timeout_s": 2.0,
        "failure_threshold": 3,
        "recovery_threshold": 1,
    }
    fields.update(overrides)
    return MonitorSpec(**fields)  # type: ignore[arg-type]


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def view(engine: MonitorEngine, monitor_id: str) -> MonitorView:
    found = [v for v in engine.snapshot() if v.spec.id == monitor_id]
    assert len(found) == 1, f"{monitor_id} not in snapshot"
    return found[0]


def last_reason(engine: MonitorEngine, monitor_id: str) -> str | None:
    result = view(engine, monitor_id).last_result
    return result.reason if result is not None else None


def wait_more_probes(engine: MonitorEngine, monitor_id: str, count: int) -> None:
    start = view(engine, monitor_id).probe_count
    wait_until(
        f"{count} more checks of {monitor_id}",
        lambda: view(engine, monitor_id).probe_count >= start + count,
    )


# ------------------------------------------------------------------ tests


def test_up_then_one_down_then_up(
    engine: MonitorEngine, server: HealthServer, recorder: Recorder
) -> None:
    engine.set_monitors([spec("web", server.url)])
    wait_until("UP", lambda: recorder.transitions("web") == [(PENDING, UP)])
    first = recorder.changes("web")[0]
    assert first.result is not None and first.result.ok
    assert first.result.status_code == 200 and first.result.body_excerpt == "ok"

    server.status = 500
    wait_until("DOWN", lambda: (PENDING, DOWN) in recorder.transitions("web"))
    wait_more_probes(engine, "web", 4)  # keeps failing: no further change may be reported
    assert recorder.transitions("web") == [(PENDING, UP), (UP, PENDING), (PENDING, DOWN)]
    down = recorder.changes("web")[-1]
    assert down.result is not None
    assert (down.result.reason, down.result.status_code) == ("HTTP 500", 500)
    assert down.result.body_excerpt == "failing"
    assert view(engine, "web").state.consecutive_failures >= 7

    server.status = 200
    wait_until("UP again", lambda: recorder.transitions("web")[-1] == (DOWN, UP))
    assert [c.new for c in recorder.changes("web")].count(DOWN) == 1
    latest = view(engine, "web")
    assert latest.status is UP and latest.last_change_at is not None


def test_dead_port_is_connection_refused(
    engine: MonitorEngine, dead_url: str, recorder: Recorder
) -> None:
    engine.set_monitors([spec("dead", dead_url)])
    wait_until("DOWN", lambda: recorder.transitions("dead") == [(PENDING, DOWN)])
    result = view(engine, "dead").last_result
    assert result is not None and not result.ok
    assert result.reason == "connection refused"
    assert result.status_code is None


def test_stopped_server_turns_down(
    engine: MonitorEngine, server: HealthServer, recorder: Recorder
) -> None:
    engine.set_monitors([spec("web", server.url, failure_threshold=1)])
    wait_until("UP", lambda: recorder.transitions("web") == [(PENDING, UP)])
    server.stop()
    wait_until("DOWN", lambda: recorder.transitions("web")[-1] == (UP, DOWN))
    down = recorder.changes("web")[-1].result
    assert down is not None and down.reason == "connection refused"


def test_hanging_target_times_out_and_does_not_delay_others(
    engine: MonitorEngine, server: HealthServer, hanging_url: str
) -> None:
    engine.set_monitors(
        [
            spec("stuck", hanging_url, timeout_s=60.0),
            spec("slow", hanging_url, timeout_s=0.5),
            spec("healthy", server.url),
        ]
    )
    wait_until("a first healthy check", lambda: view(engine, "healthy").probe_count >= 1)
    wait_more_probes(engine, "healthy", 5)
    # The first check of "stuck" started with the others and is still waiting for an answer.
    assert view(engine, "stuck").probe_count == 0
    assert view(engine, "stuck").status is PENDING

    wait_until("a timed-out check", lambda: view(engine, "slow").last_result is not None)
    result = view(engine, "slow").last_result
    assert result is not None and not result.ok
    assert result.reason == "timeout after 0.5s"
    assert result.status_code is None
    assert view(engine, "healthy").status is UP


def test_metrics_have_the_documented_names_and_labels(
    engine: MonitorEngine, server: HealthServer, dead_url: str
) -> None:
    registry = CollectorRegistry()
    register(registry, engine)
    with pytest.raises(DuplicateTimeseries):
        register(registry, engine)
    engine.set_monitors(
        [
            spec("web", server.url),
            spec("dead", dead_url, failure_threshold=1, tenant="globex", host="h2"),
        ]
    )
    wait_until("web UP", lambda: view(engine, "web").status is UP)
    wait_until("dead DOWN", lambda: view(engine, "dead").status is DOWN)

    text = generate_latest(registry).decode()
    samples = {
        (s.name, s.labels["monitor"]): s
        for family in text_string_to_metric_families(text)
        if family.name != "monitor_probe_lateness_seconds"  # engine-wide, no monitor label
        for s in family.samples
    }
    expected = {
        ("probe_success", "web"): 1.0,
        ("probe_success", "dead"): 0.0,
        ("probe_http_status_code", "web"): 200.0,
        ("probe_http_status_code", "dead"): 0.0,
        ("monitor_status", "web"): 1.0,
        ("monitor_status", "dead"): 0.0,
    }
    for key, value in expected.items():
        assert samples[key].value == value, key
    assert samples[("probe_duration_seconds", "web")].value > 0
    assert samples[("probe_success", "web")].labels == {
        "monitor": "web",
        "tenant": "acme",
        "kind": "http",
        "host": "local",
    }
    assert samples[("monitor_status", "dead")].labels == {
        "monitor": "dead",
        "tenant": "globex",
        "kind": "http",
        "host": "h2",
    }
    for name in ("probe_success", "probe_duration_seconds", "probe_http_status_code"):
        assert f"# TYPE {name} gauge" in text
    assert "# TYPE monitor_status gauge" in text


def test_lateness_counts_every_check_and_the_wait_for_a_slot(
    recorder: Recorder, server: HealthServer, hanging_url: str
) -> None:
    # One slot: while "stuck" holds it for its 0.6 s timeout, "web" (due every 0.2 s) waits,
    # so some check of the first round starts more than 0.25 s after it was due.
    engine = MonitorEngine(recorder, jitter=False, max_concurrency=1)
    engine.start()
    try:
        assert engine.lateness().count == 0
        engine.set_monitors([spec("stuck", hanging_url, timeout_s=0.6), spec("web", server.url)])
        wait_until("3 checks of web", lambda: view(engine, "web").probe_count >= 3)
        wait_until("a timed-out check", lambda: view(engine, "stuck").probe_count >= 1)
        late = engine.lateness()
        finished = sum(v.probe_count for v in engine.snapshot())
        assert finished <= late.count <= finished + 2  # + the checks holding/awaiting the slot
        assert list(late.counts) == sorted(late.counts) and late.counts[-1] <= late.count
        at_most_quarter = late.counts[late.buckets.index(0.25)]
        assert late.count - at_most_quarter >= 1, late
        assert late.sum_s > 0.25

        registry = CollectorRegistry()
        register(registry, engine)
        text = generate_latest(registry).decode()
        (family,) = [
            f
            for f in text_string_to_metric_families(text)
            if f.name == "monitor_probe_lateness_seconds"
        ]
        assert family.type == "histogram"
        values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
        now = engine.lateness()
        assert values[("monitor_probe_lateness_seconds_bucket", "+Inf")] >= late.count
        assert values[("monitor_probe_lateness_seconds_count", None)] <= now.count
        assert values[("monitor_probe_lateness_seconds_bucket", "0.25")] >= at_most_quarter
    finally:
        engine.stop()


def test_suppression_is_maintenance_and_never_down(
    engine: MonitorEngine, server: HealthServer, recorder: Recorder
) -> None:
    engine.set_monitors([spec("web", server.url)])
    wait_until("UP", lambda: view(engine, "web").status is UP)

    engine.suppress(["web"], "rollout r-42")
    assert view(engine, "web").status is MAINT
    assert view(engine, "web").hold_reason == "suppressed: rollout r-42"
    server.status = 500
    wait_more_probes(engine, "web", 5)
    assert view(engine, "web").status is MAINT
    wait_until("the change is delivered", lambda: len(recorder.changes("web")) == 2)
    assert recorder.transitions("web") == [(PENDING, UP), (UP, MAINT)]
    assert recorder.changes("web")[1].reason == "suppressed: rollout r-42"
    assert recorder.changes("web")[1].result is None

    server.status = 200
    engine.unsuppress(["web"])
    assert view(engine, "web").status in (PENDING, UP)
    wait_until("re-verified UP", lambda: recorder.transitions("web")[-1] == (PENDING, UP))
    assert recorder.transitions("web")[1:] == [(UP, MAINT), (MAINT, PENDING), (PENDING, UP)]
    assert view(engine, "web").hold_reason is None

    # A rollout that leaves the instance broken: after unsuppress the probes decide.
    engine.suppress(["web"], "rollout r-43")
    server.status = 500
    engine.unsuppress(["web"])
    wait_until("DOWN after re-verification", lambda: view(engine, "web").status is DOWN)
    wait_until("DOWN delivered", lambda: recorder.transitions("web")[-1] == (PENDING, DOWN))
    assert recorder.transitions("web")[-3:] == [(UP, MAINT), (MAINT, PENDING), (PENDING, DOWN)]


def test_suppression_applies_to_a_monitor_added_later(
    engine: MonitorEngine, server: HealthServer, recorder: Recorder
) -> None:
    engine.suppress(["new"], "rollout r-7")
    engine.set_monitors([spec("new", server.url)])
    wait_more_probes(engine, "new", 3)
    assert view(engine, "new").status is MAINT
    engine.set_maintenance(["new"], "window")
    engine.unsuppress(["new"])
    assert view(engine, "new").hold_reason == "maintenance: window"
    engine.clear_maintenance(["new"])
    wait_until("UP", lambda: view(engine, "new").status is UP)
    wait_until("UP delivered", lambda: recorder.transitions("new")[-1] == (PENDING, UP))
    assert recorder.transitions("new") == [(PENDING, MAINT), (MAINT, PENDING), (PENDING, UP)]


def test_set_monitors_adds_updates_and_removes(
    engine: MonitorEngine, server: HealthServer, dead_url: str
) -> None:
    engine.set_monitors([spec("a", server.url), spec("b", server.url)])
    wait_until("both UP", lambda: all(v.status is UP for v in engine.snapshot()))

    checks = view(engine, "a").probe_count
    engine.set_monitors([spec("a", f"{server.url}?v=2", interval_s=0.3)])
    assert [v.spec.id for v in engine.snapshot()] == ["a"]
    updated = view(engine, "a")
    assert updated.spec.interval_s == 0.3
    assert updated.status is UP and updated.probe_count >= checks  # state survives an update

    engine.set_monitors([spec("a", dead_url)])
    wait_until(
        "the new target is checked", lambda: last_reason(engine, "a") == "connection refused"
    )
    wait_until("DOWN", lambda: view(engine, "a").status is DOWN)

    with pytest.raises(ValueError, match="duplicate"):
        engine.set_monitors([spec("a", server.url), spec("a", server.url)])
    with pytest.raises(ValueError, match="unknown kind"):
        engine.set_monitors([spec("x", server.url, kind="gopher")])
    assert [v.spec.id for v in engine.snapshot()] == ["a"]
    engine.set_monitors([])
    assert engine.snapshot() == []


def test_on_change_errors_are_logged_and_the_engine_goes_on(
    server: HealthServer, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[MonitorStatus] = []

    def on_change(change: StateChange) -> None:
        seen.append(change.new)
        raise RuntimeError("database is down")

    caplog.set_level(logging.ERROR, logger="monitors.engine")
    engine = MonitorEngine(on_change, jitter=False)
    engine.start()
    try:
        engine.set_monitors([spec("web", server.url)])
        wait_until("UP", lambda: UP in seen)
        server.status = 500
        wait_until("DOWN", lambda: DOWN in seen)
    finally:
        engine.stop()
    failures = [r for r in caplog.records if r.getMessage().startswith("on_change failed")]
    assert len(failures) == len(seen) == 3
    assert "monitor=web tenant=acme" in failures[0].getMessage()
    assert failures[0].exc_info is not None


def test_run_once_and_lifecycle(server: HealthServer, dead_url: str, recorder: Recorder) -> None:
    threads_before = set(threading.enumerate())
    engine = MonitorEngine(recorder)
    with pytest.raises(RuntimeError, match="not running"):
        engine.set_monitors([])
    with engine:
        engine.start()  # idempotent
        ok = engine.run_once(spec("once", server.url))
        assert ok.ok and ok.status_code == 200 and ok.duration_s > 0
        refused = engine.run_once(spec("once", dead_url))
        assert not refused.ok and refused.reason == "connection refused"
        assert engine.snapshot() == []
    engine.stop()  # idempotent
    with pytest.raises(RuntimeError):
        engine.start()
    with pytest.raises(RuntimeError):
        engine.suppress(["x"], "late")
    assert set(threading.enumerate()) <= threads_before  # loop and notify threads joined
