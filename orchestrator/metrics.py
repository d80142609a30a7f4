"""Prometheus metrics of cpdops: collectors that read state at scrape time.

Everything is registered into a :class:`MetricsRegistry` made per app, never the global one.

A labelled counter or histogram is created with every label set it can have at 0
(:func:`at_zero`), where it is made: Prometheus takes a series' first sample as its start, so a
series that first appears at 1 is never counted by ``increase()``/``rate()`` (the dashboards'
"created in the range", "per hour" and p95 panels would stay at 0 after the first event).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Host, Incident, IncidentEvent, Rollout, RolloutInstance
from orchestrator.db.outage import database_unavailable, describe
from orchestrator.incidents.tickets import ACTIVE, TYPES

# Ticket created → its first «Решение предоставлено»: minutes to days.
log = logging.getLogger(__name__)

SOLUTION_BUCKETS = (
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    4 * 3600.0,
    8 * 3600.0,
    86400.0,
    3 * 86400.0,
)


class StoreCollector(Collector):
    """Incident and rollout metrics computed from the database at scrape time.

    ``cpdops_incident_solution_seconds{type}`` is a histogram of the time from a ticket's
    creation to its first ``solution_provided``, over every ticket solved so far (a later reopen
    does not move it back, so it only grows, as a histogram must).
    """

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        open_by_type = GaugeMetricFamily(
            "cpdops_incidents_open", "Active tickets by type", labels=["type"]
        )
        host_up = GaugeMetricFamily(
            "cpdops_host_up",
            "1 while the Docker host answers the leader's pings, 0 while it is unreachable",
            labels=["host"],
        )
        per_state = GaugeMetricFamily(
            "cpdops_rollout_instances",
            "Instances of active or recent rollouts by state",
            labels=["rollout", "state"],
        )
        up = GaugeMetricFamily(
            "cpdops_state_database_up",
            "1 when the state database answered this scrape, 0 when it was unavailable (then "
            "the incident and rollout families are left out; the monitors' are not)",
        )
        try:
            counts, rows, solved, hosts = self._read()
        except SQLAlchemyError as exc:
            if not database_unavailable(exc):
                raise
            log.warning("metrics: state database unavailable: %s", describe(exc))
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        for t in TYPES:
            open_by_type.add_metric([t], float(counts.get(t, 0)))
        for rollout_id, state, n in rows:
            per_state.add_metric([str(rollout_id), state], float(n))
        for name, status in hosts:
            host_up.add_metric([name], 0.0 if status == "unreachable" else 1.0)
        yield open_by_type
        yield host_up
        yield per_state
        yield _solution_histogram((i, t, c, a) for i, t, c, a in solved)

    def _read(self) -> tuple[dict[str, int], list[Any], list[Any], list[Any]]:
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
            solved = s.execute(
                select(Incident.id, Incident.type, Incident.created_at, IncidentEvent.at)
                .join(IncidentEvent, IncidentEvent.incident_id == Incident.id)
                .where(
                    IncidentEvent.kind.in_(("solution", "status")),
                    IncidentEvent.data["to"].as_string() == "solution_provided",
                )
                .order_by(IncidentEvent.at)
            ).all()
            hosts = s.execute(select(Host.name, Host.status).order_by(Host.name)).all()
        return counts, list(rows), list(solved), list(hosts)


def _solution_histogram(
    rows: Iterable[tuple[int, str, datetime, datetime]],
) -> HistogramMetricFamily:
    """Rows (incident id, type, created_at, solution event at), oldest event first."""
    first: dict[int, tuple[str, float]] = {}
    for incident_id, type_, created_at, at in rows:
        if incident_id not in first:
            first[incident_id] = (type_, max(0.0, (at - created_at).total_seconds()))
    by_type: dict[str, list[float]] = {t: [] for t in TYPES}
    for type_, seconds in first.values():
        by_type.setdefault(type_, []).append(seconds)
    family = HistogramMetricFamily(
        "cpdops_incident_solution_seconds",
        "Ticket created to its first «Решение предоставлено» (solution_provided), by type",
        labels=["type"],
    )
    for type_, values in by_type.items():
        buckets = [(_le(b), float(sum(v <= b for v in values))) for b in SOLUTION_BUCKETS]
        buckets.append(("+Inf", float(len(values))))
        family.add_metric([type_], buckets, sum_value=sum(values))
    return family


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes ``le`` ("300.0", "+Inf")."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def at_zero(metric: Counter | Histogram, label_sets: Iterable[Sequence[str]]) -> None:
    """Create each of ``label_sets`` (label values in the metric's label order) at 0, so that
    its first event is an increase Prometheus sees (see the module docstring)."""
    for values in label_sets:
        metric.labels(*values)


@runtime_checkable
class TextExposition(Protocol):
    """A collector that can also write its own families as Prometheus text (format 0.0.4)."""

    def exposition(self) -> str: ...


class MetricsRegistry(CollectorRegistry):
    """A ``CollectorRegistry`` whose :meth:`render` lets large collectors write their own text.

    ``generate_latest(registry)`` works as on any registry; :meth:`render` gives the same bytes,
    but takes a :class:`TextExposition` collector's text (the monitors: ~34,000 series at 10,000
    monitors) instead of formatting its families one sample object at a time.
    """

    def __init__(self, *, auto_describe: bool = True) -> None:
        super().__init__(auto_describe=auto_describe)
        self._order_lock = threading.Lock()
        self._order: list[Collector] = []

    def register(self, collector: Collector) -> None:
        with self._order_lock:
            super().register(collector)
            self._order.append(collector)

    def unregister(self, collector: Collector) -> None:
        with self._order_lock:
            super().unregister(collector)
            self._order.remove(collector)

    def render(self) -> bytes:
        """What ``generate_latest(self)`` returns, collector by collector in registration order."""
        if self.get_target_info():
            return generate_latest(self)  # not used by cpdops: the plain path writes it
        with self._order_lock:
            collectors = list(self._order)
        parts = []
        for collector in collectors:
            if isinstance(collector, TextExposition):
                parts.append(collector.exposition().encode())
            else:
                parts.append(generate_latest(collector))
        return b"".join(parts)


def make_registry() -> MetricsRegistry:
    return MetricsRegistry(auto_describe=True)
