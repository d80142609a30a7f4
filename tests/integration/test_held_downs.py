"""Issue #12 item 8: the host's settle window (and a rollout's hold) never hides a tenant that
does not come back — on SQLite and a real PostgreSQL, fed the monitor engine's StateChanges.

A DOWN while its host is held (silent, or back less than CPDOPS_HOST_SETTLE_S ago) opens no
tenant incident; before, nothing looked at it again, so a tenant that stayed DOWN after the
window had no ticket at all. ``IncidentEngine.recheck_held`` opens it once nothing holds it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitors.engine import StateChange
from monitors.probe import MonitorSpec, ProbeResult
from monitors.state import MonitorStatus
from orchestrator.db.migrate import upgrade
from orchestrator.db.models import Incident, Tenant
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from orchestrator.incidents.engine import IncidentEngine

AT = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    upgrade(engine)
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        s.add_all([Tenant(slug=t, name=t.upper(), host_name="d2") for t in ("acme", "globex")])
    yield factory
    engine.dispose()


def change(tenant: str, new: MonitorStatus, at: datetime) -> StateChange:
    spec = MonitorSpec(
        id=f"{tenant}/app@d2/http",
        name=f"{tenant}-app-http",
        tenant=tenant,
        host="d2",
        kind="http",
        target="http://127.0.0.1:1/health",
    )
    ok = new == MonitorStatus.UP
    result = ProbeResult(ok=ok, duration_s=0.01, reason="ok" if ok else "connection refused", at=at)
    old = MonitorStatus.UP if new == MonitorStatus.DOWN else MonitorStatus.DOWN
    return StateChange(spec, old, new, result, result.reason, at)


def tickets(factory: sessionmaker[Session]) -> list[tuple[str | None, str]]:
    with factory() as s:
        return [(i.tenant, i.subject) for i in s.scalars(select(Incident).order_by(Incident.id))]


def test_a_tenant_still_down_after_the_hold_gets_its_incident(
    store: sessionmaker[Session],
) -> None:
    held = {"d2": True}  # the host came back a moment ago: in its settle window
    engine = IncidentEngine(store, system_id="01", registry=CollectorRegistry())
    engine.host_held = lambda host: held[host]
    try:
        engine.on_monitor_changes(
            [change("acme", MonitorStatus.DOWN, AT), change("globex", MonitorStatus.DOWN, AT)]
        )
        assert tickets(store) == [], "held: the host's outage, no tenant incident"
        assert engine.recheck_held() == []  # still held
        assert tickets(store) == []
        # globex comes back within the window; acme does not
        engine.on_monitor_changes([change("globex", MonitorStatus.UP, AT + timedelta(seconds=20))])
        held["d2"] = False  # the settle window is over
        (number,) = engine.recheck_held()
        assert tickets(store) == [("acme", "acme: acme-app-http is DOWN (connection refused)")]
        assert engine.recheck_held() == [], "judged once"
        assert len(tickets(store)) == 1
        assert number
    finally:
        engine.close()
