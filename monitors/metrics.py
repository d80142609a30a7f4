"""Prometheus view of the monitor engine (SPEC §3.5), read from ``engine.snapshot()`` at scrape.

Register it on an injected registry, never the global one::

    registry = CollectorRegistry()
    register(registry, engine)
    generate_latest(registry)

Every series has the labels ``monitor`` (the monitor id), ``tenant``, ``kind``, ``host``.
``probe_*`` series appear once a monitor has been checked; ``monitor_status`` appears at once.
``probe_http_status_code`` is 0 when an http check got no response (as blackbox_exporter does).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from monitors.engine import MonitorView

LABELS = ("monitor", "tenant", "kind", "host")


class SnapshotSource(Protocol):
    """What the collector needs from the engine (a ``MonitorEngine`` fits)."""

    def snapshot(self) -> list[MonitorView]: ...


class MonitorCollector:
    """A custom collector: no state of its own, everything is read from the engine per scrape."""

    def __init__(self, engine: SnapshotSource) -> None:
        self._engine = engine

    def describe(self) -> Iterator[Metric]:
        """Names only, so the registry can refuse a second collector with the same names."""
        yield from _families()

    def collect(self) -> Iterator[Metric]:
        success, duration, http_status, status = _families()
        for view in self._engine.snapshot():
            spec = view.spec
            labels = (spec.id, spec.tenant, spec.kind, spec.host)
            status.add_metric(labels, float(view.status))
            result = view.last_result
            if result is None:
                continue
            success.add_metric(labels, 1.0 if result.ok else 0.0)
            duration.add_metric(labels, result.duration_s)
            if spec.kind == "http":
                http_status.add_metric(labels, float(result.status_code or 0))
        yield from (success, duration, http_status, status)


def _families() -> tuple[
    GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily
]:
    return (
        GaugeMetricFamily("probe_success", "1 if the last check passed, else 0", labels=LABELS),
        GaugeMetricFamily("probe_duration_seconds", "How long the last check took", labels=LABELS),
        GaugeMetricFamily(
            "probe_http_status_code",
            "HTTP status of the last http check (0: no response)",
            labels=LABELS,
        ),
        GaugeMetricFamily(
            "monitor_status", "0 down, 1 up, 2 pending, 3 maintenance", labels=LABELS
        ),
    )


def register(registry: CollectorRegistry, engine: SnapshotSource) -> MonitorCollector:
    """Create a :class:`MonitorCollector` for ``engine`` and register it on ``registry``."""
    collector = MonitorCollector(engine)
    registry.register(collector)
    return collector
