"""The store's metrics on SQLite and a real PostgreSQL: time to «Решение предоставлено»."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import select

from orchestrator.db.migrate import upgrade
from orchestrator.db.models import Incident, IncidentEvent
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from orchestrator.incidents.tickets import change_status, open_or_join
from orchestrator.metrics import StoreCollector


def test_time_to_solution_histogram(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        factory = make_session_factory(engine)
        created = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
        with session_scope(factory) as s:
            for key in ("a", "b", "c"):
                inc, _ = open_or_join(
                    s, system_id="01", open_key=key, type="incident", subject=key,
                    description="", author="cpdops", source="monitor", tenant=None,
                )  # fmt: skip
                inc.created_at = created
        with session_scope(factory) as s:
            a, b, _c = s.scalars(select(Incident).order_by(Incident.id)).all()
            change_status(s, a, "solution_provided", author="op", comment="fixed")
            change_status(s, b, "solution_provided", author="op", comment="fixed")
            change_status(s, b, "open", author="op", comment="not yet")
            change_status(s, b, "solution_provided", author="op", comment="fixed again")
        with session_scope(factory) as s:
            events = s.scalars(
                select(IncidentEvent)
                .where(IncidentEvent.kind.in_(("solution", "status")))
                .order_by(IncidentEvent.id)
            ).all()
            # a: solved after 10 min; b: first solved after 2 h (its second solution is later)
            offsets = iter([timedelta(minutes=10), timedelta(hours=2), timedelta(hours=3),
                            timedelta(hours=5)])  # fmt: skip
            for event in events:
                event.at = created + next(offsets)
        registry = CollectorRegistry()
        registry.register(StoreCollector(factory))
        text = generate_latest(registry).decode()
        for line in (
            'cpdops_incident_solution_seconds_bucket{le="300.0",type="incident"} 0.0',
            'cpdops_incident_solution_seconds_bucket{le="900.0",type="incident"} 1.0',
            'cpdops_incident_solution_seconds_bucket{le="3600.0",type="incident"} 1.0',
            'cpdops_incident_solution_seconds_bucket{le="14400.0",type="incident"} 2.0',
            'cpdops_incident_solution_seconds_bucket{le="+Inf",type="incident"} 2.0',
            'cpdops_incident_solution_seconds_count{type="incident"} 2.0',
            'cpdops_incident_solution_seconds_sum{type="incident"} 7800.0',
            'cpdops_incident_solution_seconds_count{type="mass_incident"} 0.0',
        ):
            assert line in text, line
    finally:
        engine.dispose()
