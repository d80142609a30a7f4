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


def spec_of(tenant: str, n: int) -> MonitorSpec:
    return MonitorSpec(
        id=f"{tenant}/cpd@h1/m{n}",
        name=f"{tenant}-m{n}",
        tenant=tenant,
        host="h1",
        kind="tcp",
        target="127.0.0.1:1",
    )


def change_of(
    spec: MonitorSpec, old: MonitorStatus, new: MonitorStatus, at: datetime
) -> StateChange:
    ok = new == MonitorStatus.UP
    result = ProbeResult(ok=ok, duration_s=0.01, reason="ok" if ok else "refused", at=at)
    return StateChange(spec, old, new, result, result.reason, at, None if ok else at)


def test_a_batch_is_applied_in_order_once_and_opens_one_ticket_per_tenant(
    store: sessionmaker[Session],
) -> None:
    engine = engine_on(store)
    specs = [spec_of(t, n) for t in ("t1", "t2") for n in range(3)]
    batch = [change_of(s, MonitorStatus.PENDING, MonitorStatus.UP, T0) for s in specs]
    # t1's monitors go DOWN later in the same batch; m0 is UP again after its DOWN
    batch += [
        change_of(s, MonitorStatus.UP, MonitorStatus.DOWN, T0 + timedelta(seconds=10 + i))
        for i, s in enumerate(specs[:3])
    ]
    batch.append(change_of(specs[0], MonitorStatus.DOWN, MonitorStatus.UP, T0 + timedelta(60)))
    engine.on_monitor_changes(batch)
    written = counts(store)
    assert written[:2] == (len(batch), 1)
    engine.on_monitor_changes(batch)  # the retry after an ambiguous commit
    engine_on(store).on_monitor_changes(batch[2:])  # or a part of it, by a restarted process
    assert counts(store) == written
    with store() as s:
        recs = {r.id: r for r in s.scalars(select(MonitorRecord))}
        assert len(recs) == 6
        assert (recs[specs[0].id].status, recs[specs[0].id].down_since) == (
            int(MonitorStatus.UP),
            None,
        )
        assert recs[specs[0].id].changed_at == T0 + timedelta(60)
        for i, spec in enumerate(specs[1:3], start=1):
            assert recs[spec.id].status == int(MonitorStatus.DOWN)
            assert recs[spec.id].down_since == T0 + timedelta(seconds=10 + i)
        assert {recs[s.id].status for s in specs[3:]} == {int(MonitorStatus.UP)}
        [incident] = s.scalars(select(Incident))
        assert incident.tenant == "t1"
        kinds = [e.kind for e in s.scalars(select(IncidentEvent).order_by(IncidentEvent.id))]
        assert kinds.count("created") == 1 and kinds.count("recovered") == 1, kinds
        ats = list(s.scalars(select(MonitorChange.at).order_by(MonitorChange.id)))
        assert ats == [c.at for c in batch]
    assert engine.created.labels(type="incident", source="monitor")._value.get() == 1


def test_the_writer_batches_retries_an_unavailable_database_and_drops_only_a_bad_change(
    store: sessionmaker[Session],
) -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError

    engine = engine_on(store)
    bad = spec_of("t9", 0)
    calls: list[tuple[str, int]] = []
    outages = [1]

    def write_batch(batch: list[StateChange]) -> None:
        calls.append(("batch", len(batch)))
        if outages:
            outages.pop()
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        if any(c.spec == bad for c in batch):
            raise IntegrityError("INSERT", {}, Exception("a constraint"))
        engine.on_monitor_changes(batch)

    def write(c: StateChange) -> None:
        calls.append(("one", 1))
        if c.spec == bad:
            raise IntegrityError("INSERT", {}, Exception("a constraint"))
        engine.on_monitor_change(c)

    writer = ChangeWriter(
        write, write_batch=write_batch, batch_size=4, registry=CollectorRegistry(),
        delay=lambda attempt: 0.01,
    )  # fmt: skip
    good = [spec_of("t1", n) for n in range(6)]
    changes = [change_of(s, MonitorStatus.PENDING, MonitorStatus.UP, T0) for s in good[:3]]
    changes.append(change_of(bad, MonitorStatus.PENDING, MonitorStatus.UP, T0))
    changes += [change_of(s, MonitorStatus.PENDING, MonitorStatus.UP, T0) for s in good[3:]]
    for c in changes:  # queued before the thread starts: batches of 4, then 3
        writer.submit(c)
    writer.start()
    assert writer.stop(drain_timeout_s=30) == 0
    # the outage: the first batch again; the bad change: that batch one at a time
    assert calls == [("batch", 4), ("batch", 4), ("one", 1), ("one", 1), ("one", 1),
                     ("one", 1), ("batch", 3)]  # fmt: skip
    assert (writer.written, writer.dropped) == (6, 1)
    with store() as s:
        assert set(s.scalars(select(MonitorRecord.id))) == {g.id for g in good}
        assert s.scalar(select(func.count()).select_from(MonitorChange)) == 6
