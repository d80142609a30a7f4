"""Correlation into one mass incident, exactly once, and verified recovery — on SQLite and a
real PostgreSQL, fed the monitor engine's StateChange objects; the clock is moved, not slept."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitors.engine import StateChange
from monitors.probe import MonitorSpec, ProbeResult
from monitors.state import MonitorStatus
from orchestrator.db.migrate import upgrade
from orchestrator.db.models import Incident, IncidentEvent, OutboxMessage, Tenant
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.incidents.engine import IncidentEngine

TENANTS = [f"t{i}" for i in range(5)]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def move(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def store(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    upgrade(engine)
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        # Five tenants on five hosts of ten tenants each: only the fleet-wide rule applies.
        s.add_all(
            [Tenant(slug=t, name=t.upper(), host_name=f"h{i}") for i, t in enumerate(TENANTS)]
        )
        s.add_all(
            [
                Tenant(slug=f"x{i}{k}", name="X", host_name=f"h{i}")
                for i in range(5)
                for k in range(9)
            ]
        )
    yield factory
    engine.dispose()


def spec(tenant: str) -> MonitorSpec:
    host = f"h{TENANTS.index(tenant)}"
    return MonitorSpec(
        id=f"{tenant}/cpd@{host}/http",
        name=f"{tenant}-cpd-http",
        tenant=tenant,
        host=host,
        kind="http",
        target=f"http://127.0.0.1:1/{tenant}/health",
    )


def change(tenant: str, old: MonitorStatus, new: MonitorStatus, at: datetime) -> StateChange:
    ok = new == MonitorStatus.UP
    result = ProbeResult(ok=ok, duration_s=0.01, reason="ok" if ok else "HTTP 503", at=at)
    return StateChange(spec(tenant), old, new, result, result.reason, at)


def engine_on(factory: sessionmaker[Session], clock: Clock) -> IncidentEngine:
    return IncidentEngine(factory, system_id="01", registry=CollectorRegistry(), clock=clock)


def deliver_down(engine: IncidentEngine, clock: Clock) -> None:
    for tenant in TENANTS:
        clock.move(5)
        engine.on_monitor_change(change(tenant, MonitorStatus.PENDING, MonitorStatus.DOWN, clock()))


def tickets(factory: sessionmaker[Session]) -> tuple[list[Incident], list[Incident]]:
    with factory() as s:
        rows = list(s.scalars(select(Incident).order_by(Incident.id)))
        for row in rows:
            _ = list(row.events)
        s.expunge_all()
    return [r for r in rows if r.type == "mass_incident"], [r for r in rows if r.type == "incident"]


def test_five_tenants_down_one_mass_incident_exactly_once(store: sessionmaker[Session]) -> None:
    clock = Clock()
    engine = engine_on(store, clock)
    deliver_down(engine, clock)
    masses, children = tickets(store)
    assert len(masses) == 1
    mass = masses[0]
    assert mass.open_key is not None and mass.open_key.startswith("mass:tenants:")
    assert len(children) == 5
    assert {c.parent_id for c in children} == {mass.id}
    assert sorted(e.data["tenant"] for e in mass.events if e.kind == "child") == TENANTS
    for child in children:
        assert [e.body for e in child.events if e.kind == "linked"] == [
            f"Linked to mass incident {mass.number}"
        ]

    # The same changes delivered twice, then to a fresh engine on the same DB (a restart).
    deliver_down(engine, clock)
    deliver_down(engine_on(store, clock), clock)
    masses2, children2 = tickets(store)
    assert [m.id for m in masses2] == [mass.id]
    assert [c.id for c in children2] == [c.id for c in children]
    assert {c.parent_id for c in children2} == {mass.id}
    assert sum(e.kind == "child" for e in masses2[0].events) == 5, "each child linked once"


def test_two_tenants_down_no_mass_incident(store: sessionmaker[Session]) -> None:
    clock = Clock()
    engine = engine_on(store, clock)
    for tenant in TENANTS[:2]:
        clock.move(5)
        engine.on_monitor_change(change(tenant, MonitorStatus.PENDING, MonitorStatus.DOWN, clock()))
    masses, children = tickets(store)
    assert masses == [] and len(children) == 2
    assert all(c.parent_id is None for c in children)


def test_thresholds_from_the_fleet_file(store: sessionmaker[Session]) -> None:
    fleet = "version: 1\nincidents:\n  mass_incident: {min_tenants: 2, window: 1m}\n"
    with session_scope(store) as s:
        apply_fleet(s, parse_fleet_text(fleet))
    clock = Clock()
    engine = engine_on(store, clock)
    for tenant in TENANTS[:2]:
        clock.move(5)
        engine.on_monitor_change(change(tenant, MonitorStatus.PENDING, MonitorStatus.DOWN, clock()))
    masses, children = tickets(store)
    assert len(masses) == 1 and {c.parent_id for c in children} == {masses[0].id}
    clock.move(61)  # past the 1 min window: t2 is not part of the mass incident
    engine.on_monitor_change(change("t2", MonitorStatus.PENDING, MonitorStatus.DOWN, clock()))
    _, children = tickets(store)
    assert [c.parent_id for c in children][-1] is None


def test_recovery_after_the_hold_provides_the_solution(store: sessionmaker[Session]) -> None:
    clock = Clock()
    engine = engine_on(store, clock)
    deliver_down(engine, clock)
    down_at = clock()
    clock.move(60)
    for tenant in TENANTS:
        engine.on_monitor_change(change(tenant, MonitorStatus.DOWN, MonitorStatus.UP, clock()))
    up_at = clock()
    clock.move(119)
    assert engine.check_recovery() == [], "UP for less than recovery_hold (120 s)"
    clock.move(1)
    solved = engine.check_recovery()
    masses, children = tickets(store)
    mass = masses[0]
    assert sorted(solved) == sorted([mass.number, *(c.number for c in children)])
    assert {t.status for t in [mass, *children]} == {"solution_provided"}
    (solution,) = [e for e in mass.events if e.kind == "solution"]
    assert solution.author == "cpdops"
    assert "Восстановление подтверждено" in solution.body and "Recovery verified" in solution.body
    for tenant in TENANTS:
        assert f"{tenant}-cpd-http ({tenant}): DOWN since" in solution.body
    assert f"UP since {up_at:%Y-%m-%d %H:%M:%S} UTC" in solution.body
    assert f"{down_at:%Y-%m-%d} " in solution.body
    assert engine.check_recovery() == [], "verified once"


def test_recovery_waits_for_every_child(store: sessionmaker[Session]) -> None:
    clock = Clock()
    engine = engine_on(store, clock)
    deliver_down(engine, clock)
    for tenant in TENANTS[:4]:
        engine.on_monitor_change(change(tenant, MonitorStatus.DOWN, MonitorStatus.UP, clock()))
    clock.move(600)
    engine.check_recovery()
    masses, children = tickets(store)
    assert masses[0].status == "new", "t4 is still DOWN"
    assert [c.tenant for c in children if c.status == "solution_provided"] == TENANTS[:4]


def test_two_replicas_racing_open_one_mass_incident(store: sessionmaker[Session]) -> None:
    clock = Clock()
    replicas = [engine_on(store, clock), engine_on(store, clock)]
    errors: list[BaseException] = []

    def run(engine: IncidentEngine) -> None:
        try:
            for tenant in TENANTS:
                engine.on_monitor_change(
                    change(tenant, MonitorStatus.PENDING, MonitorStatus.DOWN, clock())
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    masses, children = tickets(store)
    assert len(masses) == 1 and len(children) == 5
    assert {c.parent_id for c in children} == {masses[0].id}
    assert sum(e.kind == "child" for e in masses[0].events) == 5, "each child linked once"


def test_tenants_of_one_postgresql_server(store: sessionmaker[Session]) -> None:
    """Two of the three tenants of one database server: a mass incident for the server,
    although two tenants are fewer than ``min_tenants``."""
    clock = Clock()
    engine = engine_on(store, clock)

    def db_spec(tenant: str) -> MonitorSpec:
        return MonitorSpec(
            id=f"{tenant}/db",
            name=f"{tenant}-db",
            tenant=tenant,
            host="127.0.0.1:5432",
            kind="postgres",
            target=f"postgresql://cpdops:secret@127.0.0.1:5432/{tenant}",
        )

    for tenant in TENANTS[:3]:  # the server's three tenants are known: all start UP
        engine.on_monitor_change(
            StateChange(
                db_spec(tenant), MonitorStatus.PENDING, MonitorStatus.UP, None, "ok", clock()
            )
        )
    for tenant in TENANTS[:2]:
        clock.move(5)
        engine.on_monitor_change(
            StateChange(
                db_spec(tenant), MonitorStatus.UP, MonitorStatus.DOWN, None, "refused", clock()
            )
        )
    masses, children = tickets(store)
    assert [m.open_key for m in masses] == ["mass:db:127.0.0.1:5432"]
    assert {c.parent_id for c in children} == {masses[0].id}
    assert "secret" not in " ".join(e.body + str(e.data) for c in children for e in c.events)


def test_half_of_a_host_and_a_later_tenant_on_it(store: sessionmaker[Session]) -> None:
    """≥ host_percent of one host's tenants (two of the eleven known on h0, at 15 %): a mass
    incident for the host; a third tenant of that host failing later in the window joins it,
    one elsewhere does not."""
    fleet = "version: 1\nincidents:\n  mass_incident: {host_percent: 15}\n"
    with session_scope(store) as s:
        apply_fleet(s, parse_fleet_text(fleet))
    clock = Clock()
    engine = engine_on(store, clock)

    def on_h0(tenant: str) -> StateChange:
        down = change(tenant, MonitorStatus.PENDING, MonitorStatus.DOWN, clock())
        return StateChange(
            replace(down.spec, id=f"{tenant}/cpd@h0/http", host="h0"),
            down.old,
            down.new,
            down.result,
            down.reason,
            down.at,
        )

    for tenant in ("t0", "t1"):
        clock.move(5)
        engine.on_monitor_change(on_h0(tenant))
    masses, _ = tickets(store)
    assert [m.open_key for m in masses] == ["mass:host:h0"], "opened by the second tenant"
    clock.move(30)
    engine.on_monitor_change(on_h0("t2"))
    engine.on_monitor_change(change("t3", MonitorStatus.PENDING, MonitorStatus.DOWN, clock()))
    masses, children = tickets(store)
    assert [m.open_key for m in masses] == ["mass:host:h0"]
    assert {c.tenant: c.parent_id for c in children} == {
        "t0": masses[0].id,
        "t1": masses[0].id,
        "t2": masses[0].id,
        "t3": None,
    }


def test_mass_incident_notice_reaches_every_linked_tenant_once(
    store: sessionmaker[Session],
) -> None:
    with session_scope(store) as s:
        for slug in TENANTS:
            t = s.scalars(select(Tenant).where(Tenant.slug == slug)).one()
            t.contacts = [{"name": slug, "email": f"ops@{slug}.example"}]
            t.channels = ["email"]
    clock = Clock()
    engine = engine_on(store, clock)
    deliver_down(engine, clock)
    deliver_down(engine_on(store, clock), clock)  # again, after a restart
    (mass,), _ = tickets(store)
    with store() as s:
        created = s.scalars(
            select(IncidentEvent).where(
                IncidentEvent.incident_id == mass.id, IncidentEvent.kind == "created"
            )
        ).one()
        notices = s.scalars(
            select(OutboxMessage.recipient).where(
                OutboxMessage.incident_number == mass.number,
                OutboxMessage.dedup_key.endswith(f":{created.id}"),
            )
        ).all()
    assert sorted(notices) == sorted(f"ops@{t}.example" for t in TENANTS)


def test_detection_seconds_from_the_first_failing_check(store: sessionmaker[Session]) -> None:
    """Each DOWN that opens a ticket observes failure → ticket: from its streak's first failing
    check (here 2 s before the DOWN, on the frozen clock) to the commit; the DOWN whose
    correlation opens the mass incident observes that too; a DOWN that joins observes nothing."""
    clock = Clock()
    registry = CollectorRegistry()
    engine = IncidentEngine(store, system_id="01", registry=registry, clock=clock)

    def down(tenant: str) -> StateChange:
        first_failure = clock() - timedelta(seconds=2)
        return replace(
            change(tenant, MonitorStatus.PENDING, MonitorStatus.DOWN, clock()),
            failing_since=first_failure,
        )

    for tenant in TENANTS[:3]:  # min_tenants (3): the third DOWN opens the mass incident
        clock.move(5)
        engine.on_monitor_change(down(tenant))
    engine.on_monitor_change(down(TENANTS[0]))  # joins t0's ticket: not a new detection

    def sample(name: str, type: str) -> float | None:
        return registry.get_sample_value(name, {"type": type})

    assert sample("cpdops_detection_seconds_count", "incident") == 3
    assert sample("cpdops_detection_seconds_sum", "incident") == 6.0
    assert sample("cpdops_detection_seconds_count", "mass_incident") == 1
    assert sample("cpdops_detection_seconds_sum", "mass_incident") == 2.0
    assert sample("cpdops_detection_seconds_bucket", "incident") is None  # needs le
    assert (
        registry.get_sample_value(
            "cpdops_detection_seconds_bucket", {"type": "incident", "le": "2.0"}
        )
        == 3
    )
