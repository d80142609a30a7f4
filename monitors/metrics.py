"""Prometheus view of the monitor engine (SPEC §3.5), read from ``engine.snapshot()`` at scrape.

Register it on an injected registry, never the global one::

    registry = CollectorRegistry()
    register(registry, engine)
    generate_latest(registry)

Every series has the labels ``monitor`` (the monitor id), ``tenant``, ``kind``, ``host``.
``probe_*`` series appear once a monitor has been checked; ``monitor_status`` appears at once.
``probe_http_status_code`` is 0 when an http check got no response (as blackbox_exporter does).

The ``samples`` of each monitor's last result are exported too, one family per name, of the
first sample's ``type`` (gauge unless the probe says counter or untyped):

* ``pg_*`` series carry the sample's own labels (``server``, ``datname``, …) and *not* the
  monitor labels, so postgres_exporter dashboards work unchanged. Several monitors may watch one
  server (one per tenant database); its server-wide series are taken from one of them (the
  latest check that reached the server, else the latest check), so nothing is counted twice.
* every other sample (``container_*``, …) carries ``monitor, tenant, kind, host`` plus its own
  labels (the monitor's win on a clash).

Within a family every series has the same label names (a label a series lacks is exported
empty); a sample named like one of the families above, or with an invalid name, is skipped.

A counter sample is written under its own name with ``# TYPE <name> counter``, as
postgres_exporter writes ``pg_stat_database_xact_commit`` (no ``_total``) — a line
prometheus_client cannot write: its writer always names a counter's TYPE ``<name>_total``.
So :meth:`MonitorCollector.exposition` (what ``/metrics`` serves) and ``collect()`` agree
byte for byte except there: ``collect()`` gives a counter not named ``…_total`` as untyped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Protocol, cast, runtime_checkable

from prometheus_client import CollectorRegistry, generate_latest, utils
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric

from monitors.engine import Lateness, MonitorView
from monitors.probe import MetricSample, MonitorSpec

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


@runtime_checkable
class LatenessSource(Protocol):
    """An engine that also counts how late its checks start (a ``MonitorEngine`` does)."""

    def lateness(self) -> Lateness: ...


LATENESS = "monitor_probe_lateness_seconds"
LATENESS_HELP = (
    "How late checks started against their fixed-rate schedule "
    "(waiting for a concurrency slot included)"
)


class MonitorCollector:
    """A custom collector: everything is read from the engine per scrape.

    ``collect()`` makes it a normal prometheus_client collector; ``exposition()`` writes the same
    families as Prometheus text (format 0.0.4) directly, byte for byte what ``generate_latest``
    would write for them, in a fraction of the time. Its only state is a cache of each monitor's
    label string, keyed on the spec (frozen) and holding only the monitors of the last scrape.
    """

    def __init__(self, engine: SnapshotSource) -> None:
        self._engine = engine
        self._labels: dict[str, tuple[MonitorSpec, str]] = {}

    def describe(self) -> Iterator[Metric]:
        """Names only, so the registry can refuse a second collector with the same names."""
        yield from _families()

    def collect(self) -> Iterator[Metric]:
        success, duration, http_status, status = _families()
        views = self._engine.snapshot()
        for view in views:
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
        yield from _samples(views).families()
        yield from self._lateness()

    def _lateness(self) -> Iterator[HistogramMetricFamily]:
        """``monitor_probe_lateness_seconds``, when the engine counts it."""
        if not isinstance(self._engine, LatenessSource):
            return
        late = self._engine.lateness()
        family = HistogramMetricFamily(LATENESS, LATENESS_HELP)
        buckets = [(_go_float(b), float(n)) for b, n in zip(late.buckets, late.counts, strict=True)]
        family.add_metric([], [*buckets, ("+Inf", float(late.count))], late.sum_s)
        yield family

    def exposition(self) -> str:
        """What ``generate_latest`` writes for :meth:`collect`'s families, written directly."""
        views = self._engine.snapshot()
        cached = self._labels
        labels: dict[str, tuple[MonitorSpec, str]] = {}
        success: list[str] = []
        duration: list[str] = []
        http_status: list[str] = []
        status: list[str] = []
        for view in views:
            spec = view.spec
            entry = cached.get(spec.id)
            if entry is None or entry[0] is not spec:
                entry = (spec, _monitor_labels(spec))
            labels[spec.id] = entry
            label = entry[1]
            status.append(f"monitor_status{label}{_CONSTANT[view.status]}")
            result = view.last_result
            if result is None:
                continue
            success.append(f"probe_success{label}{_CONSTANT[1 if result.ok else 0]}")
            duration.append(f"probe_duration_seconds{label} {_go_float(result.duration_s)}\n")
            if spec.kind == "http":
                code = result.status_code or 0
                text = _CONSTANT.get(code) or f" {_go_float(code)}\n"
                http_status.append(f"probe_http_status_code{label}{text}")
        self._labels = labels  # only the live monitors: a removed or changed spec is dropped
        out: list[str] = []
        for family, lines in zip(
            _families(), (success, duration, http_status, status), strict=True
        ):
            out.append(_header(family.name, family.documentation))
            out.extend(lines)
        out.extend(_samples(views).text())
        # one family of a few lines: prometheus_client's own writer costs nothing here
        out.append(generate_latest(_Families(list(self._lateness()))).decode())
        return "".join(out)


class _Families:
    """A fixed list of families, as a collector ``generate_latest`` can write."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def _samples(views: Iterable[MonitorView]) -> _SampleFamilies:
    """The extra sample families of the views' last results (pg_* once per server)."""
    extra = _SampleFamilies()
    # server -> ((reached, at), samples): the one check whose server-wide series are shown
    servers: dict[str, tuple[tuple[bool, datetime], list[MetricSample]]] = {}
    for view in views:
        result = view.last_result
        if result is None or not result.samples:
            continue
        spec = view.spec
        own = dict(zip(LABELS, (spec.id, spec.tenant, spec.kind, spec.host), strict=True))
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
    return extra


# --- text exposition (format 0.0.4), as prometheus_client's generate_latest writes it --------

# the sample value as generate_latest writes it ("+Inf", "1.5e+06", …): prometheus_client's own
_go_float = cast(Callable[[float], str], utils.floatToGoString)
# " value\n" of the values that repeat (status, success, most HTTP codes)
_CONSTANT = {v: f" {_go_float(v)}\n" for v in range(600)}


def _escape(value: str) -> str:
    """A label value as prometheus_client escapes it: backslash, double quote, newline."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_string(labels: Mapping[str, str]) -> str:
    """``{a="x",b="y"}``: label names sorted, as ``generate_latest`` writes them."""
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{{{body}}}"


def _monitor_labels(spec: MonitorSpec) -> str:
    return _label_string(
        dict(zip(LABELS, (spec.id, spec.tenant, spec.kind, spec.host), strict=True))
    )


def _header(name: str, documentation: str, kind: str = "gauge") -> str:
    doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


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


_Key = tuple[tuple[str, str], ...]


SAMPLE_TYPES = frozenset({"gauge", "counter", "untyped"})


class _SampleFamilies:
    """Samples gathered into one family per name (the first sample's type), with one label
    set per family."""

    def __init__(self) -> None:
        self._help: dict[str, str] = {}
        self._type: dict[str, str] = {}
        self._rows: dict[str, dict[_Key, float]] = {}

    def add(self, sample: MetricSample, labels: Mapping[str, str]) -> None:
        name = sample.name
        if name in BUILTIN or not _NAME.fullmatch(name):
            return
        if not all(_LABEL.fullmatch(k) and not k.startswith("__") for k in labels):
            return
        rows = self._rows.setdefault(name, {})
        self._type.setdefault(name, sample.type if sample.type in SAMPLE_TYPES else "gauge")
        if sample.help and not self._help.get(name):
            self._help[name] = sample.help
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        rows.setdefault(key, sample.value)  # a duplicate series keeps the first value

    def _layout(self) -> Iterator[tuple[str, str, list[str], dict[_Key, float]]]:
        """Per family: name, help, label names (missing ones exported empty), rows."""
        for name, rows in self._rows.items():
            present = {k for key in rows for k, _ in key}
            names = [k for k in _LABEL_ORDER if k in present]
            names += sorted(present - set(names))
            yield name, self._help.get(name) or "Reported by a probe", names, rows

    def families(self) -> Iterator[Metric]:
        for name, documentation, names, rows in self._layout():
            kind, family_name = self._type[name], name
            if kind == "counter" and name.endswith("_total"):
                family_name = name.removesuffix("_total")  # the writer adds it back
            elif kind == "counter":
                kind = "unknown"  # see the module's docstring
            family = Metric(family_name, documentation, kind)
            for key, value in rows.items():
                values = dict(key)
                family.add_sample(name, {k: values.get(k, "") for k in names}, value)
            yield family

    def text(self) -> Iterator[str]:
        for name, documentation, names, rows in self._layout():
            yield _header(name, documentation, self._type[name])
            for key, value in rows.items():
                values = dict(key)
                labels = _label_string({k: values.get(k, "") for k in names})
                yield f"{name}{labels} {_go_float(value)}\n"


def register(registry: CollectorRegistry, engine: SnapshotSource) -> MonitorCollector:
    """Create a :class:`MonitorCollector` for ``engine`` and register it on ``registry``."""
    collector = MonitorCollector(engine)
    registry.register(collector)
    return collector
