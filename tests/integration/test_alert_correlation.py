"""Alertmanager alerts in mass-incident correlation, exactly once, and their resolution — on
SQLite and a real PostgreSQL: the incident engine fed webhook bodies (the clock is moved, not
slept), then two real ``cpdops serve`` instances on one database posted to concurrently."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitors.engine import StateChange
from monitors.probe import MonitorSpec, ProbeResult
from monitors.state import MonitorStatus
from orchestrator.db.migrate import upgrade
from orchestrator.db.models import AlertRecord, Incident, Tenant
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from orchestrator.incidents.alert_intake import IntakeResult
from orchestrator.incidents.alertmanager import AlertmanagerWebhook
from orchestrator.incidents.engine import IncidentEngine
from orchestrator.settings import Settings
from tests.integration.server import bearer, make_token, running_server

TENANTS = [f"t{i}" for i in range(5)]
SECRET = "am-correlation-secret"
PATH = "/api/v1/intake/alertmanager"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def move(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def store(db_url: str) -> Iterator[sessionmaker[Session]]:
    """The store with the tenants registered (alerts of other tenants go to the fleet-level
    ticket)."""
    engine = make_engine(db_url)
    upgrade(engine)
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        s.add_all(Tenant(slug=t, name=t.upper()) for t in [*TENANTS, *STORM_TENANTS])
    yield factory
    engine.dispose()


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def am_alert(
    tenant: str,
    name: str,
    starts: datetime,
    status: str = "firing",
    ends: datetime | None = None,
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "tenant": tenant, **labels},
        "annotations": {"summary": f"{name} on {tenant}"},
        "startsAt": iso(starts),
        "endsAt": iso(ends) if ends is not None else "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": f"{tenant}-{name}-{'-'.join(sorted(labels.values()))}",
    }


def webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": "{}:{tenant}",
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": "cpdops",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }


def bodies(starts: datetime, status: str = "firing", ends: datetime | None = None) -> list[Any]:
    """One body per tenant (grouped by tenant), two alerts each."""
    return [
        webhook(
            am_alert(t, "PortalDown", starts, status, ends),
            am_alert(t, "SipDown", starts, status, ends),
        )
        for t in TENANTS
    ]


def parsed(body: dict[str, Any]) -> AlertmanagerWebhook:
    return AlertmanagerWebhook.model_validate(body)


def engine_on(factory: sessionmaker[Session], clock: Callable[[], datetime]) -> IncidentEngine:
    return IncidentEngine(factory, system_id="01", registry=CollectorRegistry(), clock=clock)


def tickets(factory: sessionmaker[Session]) -> tuple[list[Incident], list[Incident]]:
    with factory() as s:
        rows = list(s.scalars(select(Incident).order_by(Incident.id)))
        for row in rows:
            _ = list(row.events)
        s.expunge_all()
    return [r for r in rows if r.type == "mass_incident"], [r for r in rows if r.type == "incident"]


def assert_one_mass_with_children(factory: sessionmaker[Session]) -> Incident:
    masses, children = tickets(factory)
    assert len(masses) == 1, [m.open_key for m in masses]
    mass = masses[0]
    assert mass.open_key is not None and mass.open_key.startswith("mass:tenants:")
    assert sorted(str(c.open_key) for c in children) == [f"tenant:{t}" for t in TENANTS]
    assert {c.parent_id for c in children} == {mass.id}
    assert sorted(e.data["tenant"] for e in mass.events if e.kind == "child") == TENANTS, (
        "each child linked once"
    )
    return mass


def test_five_tenants_alerts_one_mass_incident_exactly_once(store: sessionmaker[Session]) -> None:
    clock = Clock()
    engine = engine_on(store, clock)
    starts = clock() - timedelta(seconds=20)
    for body in bodies(starts):
        clock.move(2)
        out = engine.on_alerts(parsed(body))
        assert len(out.created) == 1 and out.joined == [] and out.ignored == 0
    mass = assert_one_mass_with_children(store)
    _, children = tickets(store)
    for child in children:
        assert child.source == "alertmanager" and child.status == "new"
        evidence = [e for e in child.events if e.kind == "evidence"]
        assert sorted(e.data["alertname"] for e in evidence) == ["PortalDown", "SipDown"]
    with store() as s:
        rows = list(s.scalars(select(AlertRecord)))
        assert len(rows) == 10 and {r.status for r in rows} == {"firing"}
        assert {r.incident_id for r in rows} == {c.id for c in children}
        updated = {r.fingerprint: r.updated_at for r in rows}

    # Every body again, then to a fresh engine (a restart), interleaved with the clock moving.
    for again in (engine, engine_on(store, clock)):
        for body in bodies(starts):
            clock.move(1)
            out = again.on_alerts(parsed(body))
            assert (out.created, out.joined, out.resolved, out.ignored) == ([], [], [], 2)
    assert assert_one_mass_with_children(store).id == mass.id
    _, after = tickets(store)
    assert [len(c.events) for c in after] == [len(c.events) for c in children], "nothing added"
    with store() as s:
        assert {r.fingerprint: r.updated_at for r in s.scalars(select(AlertRecord))} == updated


def test_two_tenants_alerts_no_mass_incident(store: sessionmaker[Session]) -> None:
    clock = Clock()
    engine = engine_on(store, clock)
    for body in bodies(clock() - timedelta(seconds=5))[:2]:
        engine.on_alerts(parsed(body))
    masses, children = tickets(store)
    assert masses == [] and [c.parent_id for c in children] == [None, None]


def test_old_alerts_are_not_correlated(store: sessionmaker[Session]) -> None:
    """Alerts that started longer than the window ago (e.g. re-sent after hours) open the
    tenants' incidents but no mass incident."""
    clock = Clock()
    engine = engine_on(store, clock)
    for body in bodies(clock() - timedelta(hours=1)):
        engine.on_alerts(parsed(body))
    masses, children = tickets(store)
    assert masses == [] and len(children) == 5


def test_monitor_down_and_alerts_correlate_together(store: sessionmaker[Session]) -> None:
    """Two tenants' monitors DOWN and one tenant's alert: three tenants, one mass incident."""
    clock = Clock()
    engine = engine_on(store, clock)
    for tenant in TENANTS[:2]:
        spec = MonitorSpec(
            id=f"{tenant}/http",
            name=f"{tenant}-http",
            tenant=tenant,
            host=f"h-{tenant}",
            kind="http",
            target="http://127.0.0.1:1/",
        )
        result = ProbeResult(ok=False, duration_s=0.01, reason="HTTP 503", at=clock())
        old, new = MonitorStatus.PENDING, MonitorStatus.DOWN
        engine.on_monitor_change(StateChange(spec, old, new, result, "HTTP 503", clock()))
    assert tickets(store)[0] == []
    clock.move(10)
    engine.on_alerts(parsed(webhook(am_alert("t2", "PortalDown", clock()))))
    masses, children = tickets(store)
    assert len(masses) == 1 and len(children) == 3
    assert {c.parent_id for c in children} == {masses[0].id}


def test_alerts_of_one_host_and_one_postgresql_server(store: sessionmaker[Session]) -> None:
    """Labels ``host`` and ``db_server``: the most specific scope wins, as for monitors."""
    clock = Clock()
    engine = engine_on(store, clock)
    starts = clock() - timedelta(seconds=5)
    engine.on_alerts(
        parsed(
            webhook(
                *(am_alert(t, "CpdDown", starts, host="h7") for t in TENANTS[:2]),
                *(am_alert(t, "PgDown", starts, db_server="pg1:5432") for t in TENANTS[2:4]),
            )
        )
    )
    masses, children = tickets(store)
    assert sorted(str(m.open_key) for m in masses) == ["mass:db:pg1:5432", "mass:host:h7"]
    by_key = {m.open_key: m.id for m in masses}
    assert {c.tenant: c.parent_id for c in children} == {
        "t0": by_key["mass:host:h7"],
        "t1": by_key["mass:host:h7"],
        "t2": by_key["mass:db:pg1:5432"],
        "t3": by_key["mass:db:pg1:5432"],
    }


def test_concurrent_deliveries_two_engines_one_mass_incident(
    store: sessionmaker[Session],
) -> None:
    """Every body delivered four times at once — from several threads, through two engines
    (two replicas on one database)."""
    clock = Clock()
    replicas = [engine_on(store, clock), engine_on(store, clock)]
    starts = clock() - timedelta(seconds=5)
    jobs = [(replicas[i % 2], body) for body in bodies(starts) for i in range(4)]
    barrier = threading.Barrier(8)

    def deliver(job: tuple[IncidentEngine, dict[str, Any]]) -> int:
        engine, body = job
        barrier.wait(timeout=30) if jobs.index(job) < 8 else None
        return len(engine.on_alerts(parsed(body)).created)

    with ThreadPoolExecutor(max_workers=8) as pool:
        created = list(pool.map(deliver, jobs))
    assert sum(created) == 5, "one ticket per tenant"
    mass = assert_one_mass_with_children(store)
    _, children = tickets(store)
    for child in children:
        evidence = [e for e in child.events if e.kind == "evidence"]
        assert len(evidence) == 2, "each alert once, however often delivered"
    assert sum(e.kind == "child" for e in mass.events) == 5


STORM_TENANTS = [f"s{i:02d}" for i in range(12)]
STORM_NAMES = ("PortalDown", "SipDown")
STORM_INSTANCES = 8


def test_an_alert_storm_leaves_a_handful_of_entries_per_ticket_and_a_current_subject(
    store: sessionmaker[Session],
) -> None:
    """12 tenants, each with 2 alert names of 8 instances (192 alerts, one body per tenant and
    alert name as Alertmanager groups them), every body delivered twice at once through two
    engines; 3 tenants first (the mass incident opens with 3), the other 9 joining it later.
    Each tenant's ticket has one entry per alert name counting its 8 alerts, and the mass
    incident's subject and description name the 12 tenants it has now."""
    clock = Clock()
    replicas = [engine_on(store, clock), engine_on(store, clock)]
    starts = clock() - timedelta(seconds=5)

    def storm_bodies(tenants: list[str]) -> list[dict[str, Any]]:
        return [
            webhook(
                *(am_alert(t, name, starts, instance=f"{t}-{k}") for k in range(STORM_INSTANCES))
            )
            for t in tenants
            for name in STORM_NAMES
        ]

    def deliver(tenants: list[str]) -> None:
        jobs = [(replicas[i], body) for body in storm_bodies(tenants) for i in (0, 1)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda job: job[0].on_alerts(parsed(job[1])), jobs))

    deliver(STORM_TENANTS[:3])
    (mass,), _ = tickets(store)
    assert mass.subject == "Mass incident: 3 tenants DOWN"
    for tenant in STORM_TENANTS[3:]:
        clock.move(2)
        deliver([tenant])

    masses, children = tickets(store)
    assert [m.id for m in masses] == [mass.id] and len(children) == len(STORM_TENANTS)
    assert {c.parent_id for c in children} == {mass.id}
    (mass,) = masses
    assert mass.subject == f"Mass incident: {len(STORM_TENANTS)} tenants DOWN"
    assert mass.description.startswith(f"{len(STORM_TENANTS)} tenants failed")
    assert ", ".join(STORM_TENANTS) in mass.description
    for child in children:
        entries = [e for e in child.events if e.kind == "evidence"]
        assert sorted(e.data["alertname"] for e in entries) == sorted(STORM_NAMES), child.tenant
        for entry in entries:
            seen = entry.data["occurrences"]
            assert seen["count"] == STORM_INSTANCES, (child.tenant, seen)
            assert seen["first_seen"] <= seen["last_seen"]
            assert entry.data["labels"]["tenant"] == child.tenant  # the latest alert, a sample


def test_a_flapping_monitor_is_one_evidence_entry_that_counts(
    store: sessionmaker[Session],
) -> None:
    """DOWN, UP, DOWN, UP, DOWN of one monitor: its ticket counts 3 DOWNs in one entry."""
    clock = Clock()
    engine = engine_on(store, clock)
    spec = MonitorSpec(
        id="t0/http", name="t0-http", tenant="t0", host="h0", kind="http",
        target="http://127.0.0.1:1/",
    )  # fmt: skip
    old = MonitorStatus.PENDING
    for i in range(5):
        clock.move(30)
        new = MonitorStatus.DOWN if i % 2 == 0 else MonitorStatus.UP
        result = ProbeResult(ok=new == MonitorStatus.UP, duration_s=0.01, reason="x", at=clock())
        engine.on_monitor_change(StateChange(spec, old, new, result, f"check {i}", clock()))
        old = new
    _, (ticket,) = tickets(store)
    (entry,) = [e for e in ticket.events if e.kind == "evidence"]
    assert entry.data["monitor"] == "t0/http" and entry.data["occurrences"]["count"] == 3
    assert entry.data["reason"] == "x" and entry.data["at"] == clock().isoformat()
    assert sum(e.kind == "recovered" for e in ticket.events) == 2


def test_resolved_alerts_provide_the_solution(store: sessionmaker[Session]) -> None:
    """The one recovery rule at the intake: a resolution solves its ticket only once the
    recovery hold (120 s) has passed since it — here by ``check-recovery`` as the clock moves;
    a resolution delivered after the hold solves it at once."""
    clock = Clock()
    engine = engine_on(store, clock)
    starts = clock() - timedelta(seconds=20)
    for body in bodies(starts):
        engine.on_alerts(parsed(body))
    mass = assert_one_mass_with_children(store)
    clock.move(300)
    ended = clock() - timedelta(seconds=10)

    # One of t0's two alerts resolves: t0 still has a firing alert.
    portal = am_alert("t0", "PortalDown", starts, "resolved", ended)
    out = engine.on_alerts(parsed(webhook(portal)))
    assert out.resolved == [] and out.ignored == 0
    _, children = tickets(store)
    assert children[0].status == "new"
    assert [e.data["name"] for e in children[0].events if e.kind == "recovered"] == ["PortalDown"]

    resolved = bodies(starts, "resolved", ended)
    for body in resolved[:4]:
        assert engine.on_alerts(parsed(body)).resolved == [], "resolved 10 s ago: in the hold"
    clock.move(109)
    assert engine.check_recovery() == [], "119 s after the resolution"
    _, children = tickets(store)
    assert {c.status for c in children} == {"new"}
    clock.move(1)
    assert sorted(engine.check_recovery()) == sorted(c.number for c in children[:4])
    masses, children = tickets(store)
    assert [c.status for c in children] == ["solution_provided"] * 4 + ["new"]
    assert masses[0].status == "new", "t4 still firing"
    (solution,) = [e for e in children[1].events if e.kind == "solution"]
    assert solution.author == "cpdops"
    assert "Recovery verified automatically" in solution.body
    assert "all Alertmanager alerts resolved for ≥ 120 s" in solution.body
    for name in ("PortalDown", "SipDown"):
        assert (
            f"alert {name} (t1): firing since {starts:%Y-%m-%d %H:%M:%S} UTC, "
            f"resolved at {ended:%Y-%m-%d %H:%M:%S} UTC" in solution.body
        )

    # The last child's resolution arrives after the hold: solved by the intake, and its mass
    # incident checked right away.
    out = engine.on_alerts(parsed(resolved[4]))
    assert out.resolved == [children[4].number]
    masses, children = tickets(store)
    assert {t.status for t in [*masses, *children]} == {"solution_provided"}
    (child_solution,) = [e for e in children[4].events if e.kind == "solution"]
    assert child_solution.author == "alertmanager"
    (mass_solution,) = [e for e in masses[0].events if e.kind == "solution"]
    assert masses[0].id == mass.id and mass_solution.author == "cpdops"
    assert all(f"({t}): firing since" in mass_solution.body for t in TENANTS)

    # The resolved notifications repeated (and once more after a restart): nothing changes.
    counts = [len(t.events) for t in [*masses, *children]]
    for again in (engine, engine_on(store, clock)):
        for body in resolved:
            assert again.on_alerts(parsed(body)).ignored == 2
    masses, children = tickets(store)
    assert [len(t.events) for t in [*masses, *children]] == counts
    with store() as s:
        assert {r.status for r in s.scalars(select(AlertRecord))} == {"resolved"}


T0_HTTP = MonitorSpec(
    id="t0/http", name="t0-http", tenant="t0", host="h1", kind="http", target="http://x/"
)


def fire_then_resolve(engine: IncidentEngine, clock: Clock, after_s: float) -> IntakeResult:
    """t0's PortalDown fires now and is resolved ``after_s`` later."""
    starts = clock()
    engine.on_alerts(parsed(webhook(am_alert("t0", "PortalDown", starts))))
    clock.move(after_s)
    return engine.on_alerts(
        parsed(webhook(am_alert("t0", "PortalDown", starts, "resolved", clock())))
    )


def test_resolution_57_s_after_the_monitors_came_up_waits_for_the_hold(
    store: sessionmaker[Session],
) -> None:
    """The issue's case: the tenant's monitor UP for long, its alert resolved — the ticket is
    not solved before ``recovery_hold`` has passed since the resolution (it was, 57 s after)."""
    clock = Clock()
    engine = engine_on(store, clock)
    spec = T0_HTTP
    engine.on_monitor_change(
        StateChange(spec, MonitorStatus.PENDING, MonitorStatus.UP, None, "ok", clock())
    )
    assert fire_then_resolve(engine, clock, 600).resolved == []
    for seconds in (57, 62):  # 57 s, then 119 s after the resolution
        clock.move(seconds)
        assert engine.check_recovery() == []
    _, (ticket,) = tickets(store)
    assert ticket.status == "new"
    clock.move(1)
    assert engine.check_recovery() == [ticket.number]


def test_resolution_waits_for_the_tenants_monitors(store: sessionmaker[Session]) -> None:
    """The alert resolves while a monitor of the tenant is DOWN: the ticket stays; once the
    monitor is UP for the hold, check-recovery solves it and names both."""
    clock = Clock()
    engine = engine_on(store, clock)
    spec = T0_HTTP
    down = ProbeResult(ok=False, duration_s=0.01, reason="HTTP 503", at=clock())
    engine.on_monitor_change(
        StateChange(spec, MonitorStatus.PENDING, MonitorStatus.DOWN, down, "HTTP 503", clock())
    )
    assert fire_then_resolve(engine, clock, 30).resolved == []
    _, (ticket,) = tickets(store)
    assert ticket.status == "new", "the monitor is DOWN"
    up = ProbeResult(ok=True, duration_s=0.01, reason="ok", at=clock())
    engine.on_monitor_change(
        StateChange(spec, MonitorStatus.DOWN, MonitorStatus.UP, up, "ok", clock())
    )
    clock.move(119)
    assert engine.check_recovery() == []
    clock.move(1)
    assert engine.check_recovery() == [ticket.number]
    _, (ticket,) = tickets(store)
    (solution,) = [e for e in ticket.events if e.kind == "solution"]
    assert "t0-http (t0): DOWN since" in solution.body
    assert "alert PortalDown (t0): firing since" in solution.body


def test_a_firing_alert_keeps_check_recovery_off(store: sessionmaker[Session]) -> None:
    """The tenant's monitors all UP for long: an alert still firing keeps the ticket open."""
    clock = Clock()
    engine = engine_on(store, clock)
    spec = T0_HTTP
    engine.on_monitor_change(
        StateChange(spec, MonitorStatus.PENDING, MonitorStatus.UP, None, "ok", clock())
    )
    engine.on_alerts(parsed(webhook(am_alert("t0", "PortalDown", clock()))))
    clock.move(3600)
    assert engine.check_recovery() == []


# --------------------------------------------------------------------------- two cpdops serve


def test_two_servers_racing_one_mass_incident(db_url: str, store: sessionmaker[Session]) -> None:
    """Two real ``cpdops serve`` on one database; each body posted to both at once, twice."""
    settings = Settings(
        database_url=db_url, run_monitors=False, run_scheduler=False, alertmanager_secret=SECRET
    )
    starts = datetime.now(UTC) - timedelta(seconds=5)
    with running_server(settings) as a, running_server(settings) as b:
        token = make_token(settings, "viewer")
        clients = [httpx.Client(base_url=u, timeout=60, headers=bearer(token)) for u in (a, b)]
        try:
            jobs = [(clients[i % 2], body) for body in bodies(starts) for i in range(4)]

            def post(job: tuple[httpx.Client, dict[str, Any]]) -> int:
                client, body = job
                r = client.post(PATH, json=body, headers={"Authorization": f"Bearer {SECRET}"})
                assert r.status_code == 200, r.text
                return len(r.json()["created"])

            with ThreadPoolExecutor(max_workers=8) as pool:
                assert sum(pool.map(post, jobs)) == 5
            listed = clients[0].get("/api/v1/incidents", params={"type": "mass_incident"}).json()
            assert len(listed) == 1
            shown = clients[1].get(f"/api/v1/incidents/{listed[0]['number']}").json()
            assert sorted(c["tenant"] for c in shown["children"]) == TENANTS
        finally:
            for c in clients:
                c.close()
    assert_one_mass_with_children(store)
