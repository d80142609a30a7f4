"""Prometheus view of the monitor engine (SPEC §3.5), read from ``engine.snapshot()`` at scrape.

Register it on an injected registry, never the global one::

    registry = CollectorRegistry()
    register(registry, engine)
    generate_latest(registry)

Every series has the labels ``monitor`` (the monitor id), ``tenant``, ``kind``, ``host``.
``probe_*`` series appear once a monitor has been checked; ``monitor_status`` appears at once.
``probe_http_status_code`` is 0 when an http check got no response (as blackbox_exporter does).

The ``samples`` of each monitor's last result are exported too, one gauge family per name:

* ``pg_*`` series carry the sample's own labels (``server``, ``datname``, …) and *not* the
  monitor labels, so postgres_exporter dashboards work unchanged. Several monitors may watch one
  server (one per tenant database); its server-wide series are taken from one of them (the
  latest check that reached the server, else the latest check), so nothing is counted twice.
* every other sample (``container_*``, …) carries ``monitor, tenant, kind, host`` plus its own
  labels (the monitor's win on a clash).

Within a family every series has the same label names (a label a series lacks is exported
empty); a sample named like one of the families above, or with an invalid name, is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from monitors.engine import MonitorView
from monitors.probe import MetricSample

LABELS = ("monitor", "tenant", "kind", "host")
BUILTIN = frozenset(
    {"probe_success", "probe_duration_seconds", "probe_http_status_code", "monitor_status"}
)
SERVER_WIDE_PREFIX = "pg_"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL_ORDER = ("server", *LABELS)


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
        extra = _SampleFamilies()
        # server -> ((reached, at), samples): the one check whose server-wide series are shown
        servers: dict[str, tuple[tuple[bool, datetime], list[MetricSample]]] = {}
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
            if not result.samples:
                continue
            own = dict(zip(LABELS, labels, strict=True))
            by_server: dict[str, list[MetricSample]] = {}
            for sample in result.samples:
                if sample.name.startswith(SERVER_WIDE_PREFIX):
                    by_server.setdefault(sample.labels.get("server", ""), []).append(sample)
                else:
                    extra.add(sample, {**sample.labels, **own})
            for server, found in by_server.items():
                reached = any(s.name == "pg_up" and s.value == 1.0 for s in found)
                rank = (reached, result.at)
                if server not in servers or rank > servers[server][0]:
                    servers[server] = (rank, found)
        for server, (_, found) in servers.items():
            for sample in found:
                extra.add(sample, {**sample.labels, "server": server})
        yield from (success, duration, http_status, status)
        yield from extra.families()


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


class _SampleFamilies:
    """Samples gathered into one gauge family per name, with one label set per family."""

    def __init__(self) -> None:
        self._help: dict[str, str] = {}
        self._rows: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}

    def add(self, sample: MetricSample, labels: Mapping[str, str]) -> None:
        name = sample.name
        if name in BUILTIN or not _NAME.fullmatch(name):
            return
        if not all(_LABEL.fullmatch(k) and not k.startswith("__") for k in labels):
            return
        rows = self._rows.setdefault(name, {})
        if sample.help and not self._help.get(name):
            self._help[name] = sample.help
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        rows.setdefault(key, sample.value)  # a duplicate series keeps the first value

    def families(self) -> Iterator[GaugeMetricFamily]:
        for name, rows in self._rows.items():
            present = {k for key in rows for k, _ in key}
            names = [k for k in _LABEL_ORDER if k in present]
            names += sorted(present - set(names))
            family = GaugeMetricFamily(
                name, self._help.get(name) or "Reported by a probe", labels=names
            )
            for key, value in rows.items():
                values = dict(key)
                family.add_metric([values.get(k, "") for k in names], value)
            yield family


def register(registry: CollectorRegistry, engine: SnapshotSource) -> MonitorCollector:
    """Create a :class:`MonitorCollector` for ``engine`` and register it on ``registry``."""
    collector = MonitorCollector(engine)
    registry.register(collector)
    return collector
