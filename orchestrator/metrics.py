"""Prometheus metrics of cpdops: collectors that read state at scrape time.

Everything is registered into a ``CollectorRegistry`` made per app, never the global one.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Incident, Rollout, RolloutInstance
from orchestrator.incidents.tickets import ACTIVE, TYPES


class StoreCollector(Collector):
    """Incident and rollout gauges computed from the database at scrape time."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        open_by_type = GaugeMetricFamily(
            "cpdops_incidents_open", "Active tickets by type", labels=["type"]
        )
        per_state = GaugeMetricFamily(
            "cpdops_rollout_instances",
            "Instances of active or recent rollouts by state",
            labels=["rollout", "state"],
        )
        with self._factory() as s:
            counts = dict(
                s.execute(
                    select(Incident.type, func.count())
                    .where(Incident.status.in_(ACTIVE))
                    .group_by(Incident.type)
                ).all()
            )
            recent = select(Rollout.id).order_by(Rollout.id.desc()).limit(20).subquery()
            rows = s.execute(
                select(RolloutInstance.rollout_id, RolloutInstance.state, func.count())
                .where(RolloutInstance.rollout_id.in_(select(recent.c.id)))
                .group_by(RolloutInstance.rollout_id, RolloutInstance.state)
            ).all()
        for t in TYPES:
            open_by_type.add_metric([t], float(counts.get(t, 0)))
        for rollout_id, state, n in rows:
            per_state.add_metric([str(rollout_id), state], float(n))
        yield open_by_type
        yield per_state


def make_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)
