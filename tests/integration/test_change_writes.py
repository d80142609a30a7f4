"""Monitor state changes written late (after a database outage): at their own time, once,
in order; on SQLite and PostgreSQL. The outage itself: tests/integration/test_db_restart.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from monitors.engine import StateChange
from monitors.probe import MonitorSpec, ProbeResult
from monitors.state import MonitorStatus
from orchestrator.change_writer import ChangeWriter
from orchestrator.db.migrate import upgrade
from orchestrator.db.models import Incident, IncidentEvent, MonitorChange, MonitorRecord
from orchestrator.db.session import make_engine, make_session_factory
from orchestrator.incidents.engine import IncidentEngine

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
SPEC = MonitorSpec(
    id="acme/cpd@h1/http",
    name="acme-cpd-http",
    tenant="acme",
    host="h1",
    kind="http",
    target="http://127.0.0.1:1/health",
)


@pytest.fixture
def store(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def change(old: MonitorStatus, new: MonitorStatus, at: datetime) -> StateChange:
    ok = new == MonitorStatus.UP
    result = ProbeResult(ok=ok, duration_s=0.01, reason="ok" if ok else "HTTP 503", at=at)
    return StateChange(SPEC, old, new, result, result.reason, at, None if ok else at)


def engine_on(factory: sessionmaker[Session]) -> IncidentEngine:
    # the clock is far later than the changes: they are written late, after an outage
    return IncidentEngine(
        factory, system_id="01", registry=CollectorRegistry(), clock=lambda: T0 + timedelta(hours=1)
    )


def counts(factory: sessionmaker[Session]) -> tuple[int, int, int]:
    with factory() as s:
        return (
            s.scalar(select(func.count()).select_from(MonitorChange)) or 0,
            s.scalar(select(func.count()).select_from(Incident)) or 0,
            s.scalar(select(func.count()).select_from(IncidentEvent)) or 0,
        )


def test_a_change_written_twice_is_applied_once_at_its_own_time(
    store: sessionmaker[Session],
) -> None:
    engine = engine_on(store)
    down = change(MonitorStatus.UP, MonitorStatus.DOWN, T0)
    engine.on_monitor_change(down)
    once = counts(store)
    assert once[:2] == (1, 1)
    engine.on_monitor_change(down)  # the retry after an ambiguous commit
    engine_on(store).on_monitor_change(down)  # or by a restarted process
    assert counts(store) == once
    with store() as s:
        rec = s.get_one(MonitorRecord, SPEC.id)
        assert (rec.status, rec.changed_at, rec.down_since) == (int(MonitorStatus.DOWN), T0, T0)
    up = change(MonitorStatus.DOWN, MonitorStatus.UP, T0 + timedelta(seconds=30))
    engine.on_monitor_change(up)
    engine.on_monitor_change(up)
    with store() as s:
        kinds = [e.kind for e in s.scalars(select(IncidentEvent).order_by(IncidentEvent.id))]
        assert kinds.count("recovered") == 1, kinds
        rec = s.get_one(MonitorRecord, SPEC.id)
        assert (rec.status, rec.changed_at, rec.down_since) == (
            int(MonitorStatus.UP),
            T0 + timedelta(seconds=30),
            None,
        )


def test_a_change_older_than_the_stored_state_is_not_applied(
    store: sessionmaker[Session],
) -> None:
    engine = engine_on(store)
    engine.on_monitor_change(change(MonitorStatus.PENDING, MonitorStatus.UP, T0 + timedelta(1)))
    # a DOWN from before, written late (another replica wrote a newer state meanwhile)
    engine.on_monitor_change(change(MonitorStatus.UP, MonitorStatus.DOWN, T0))
    with store() as s:
        assert s.get_one(MonitorRecord, SPEC.id).status == int(MonitorStatus.UP)
        assert s.scalar(select(func.count()).select_from(Incident)) == 0


def test_the_writer_keeps_order_and_drops_the_oldest_when_full(
    store: sessionmaker[Session],
) -> None:
    engine = engine_on(store)
    gate, busy = threading.Event(), threading.Event()
    seen: list[datetime] = []

    def write(c: StateChange) -> None:
        busy.set()
        gate.wait(timeout=30)  # the database "hangs" until the queue is full
        seen.append(c.at)
        engine.on_monitor_change(c)

    writer = ChangeWriter(write, capacity=3, registry=CollectorRegistry())
    writer.start()
    statuses = [MonitorStatus.DOWN, MonitorStatus.UP] * 3
    for n, new in enumerate(statuses):
        old = MonitorStatus.UP if new == MonitorStatus.DOWN else MonitorStatus.DOWN
        writer.submit(change(old, new, T0 + timedelta(seconds=n)))
        if n == 0:
            assert busy.wait(timeout=30)  # the first is being written
    # one is being written, three wait, two (the oldest waiting ones) were dropped
    assert writer.dropped == 2
    gate.set()
    assert writer.stop(drain_timeout_s=30) == 0
    assert writer.written == 4
    with store() as s:
        ats = list(s.scalars(select(MonitorChange.at).order_by(MonitorChange.id)))
    assert ats == seen == sorted(seen)
    assert [int((a - T0).total_seconds()) for a in ats] == [0, 3, 4, 5]
