"""MonitorCollector on fake engine snapshots: probe samples become consistent gauge families."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitors.engine import MonitorView
from monitors.metrics import MonitorCollector, _Families, _SampleFamilies, register
from monitors.probe import MetricSample, MonitorSpec, ProbeResult
from monitors.state import MonitorState, MonitorStatus
from orchestrator.metrics import make_registry

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class FakeEngine:
    def __init__(self, views: Sequence[MonitorView]) -> None:
        self.views = list(views)

    def snapshot(self) -> list[MonitorView]:
        return list(self.views)


def view(
    monitor: str,
    kind: str,
    found: Sequence[MetricSample] = (),
    *,
    tenant: str = "acme",
    host: str = "d1",
    at: datetime = T0,
    checked: bool = True,
    status_code: int | None = None,
    duration: float = 0.01,
) -> MonitorView:
    spec = MonitorSpec(
        id=monitor, name=monitor, tenant=tenant, host=host, kind=kind, target="x://secret@x"
    )
    result = ProbeResult(
        ok=status_code in (None, 200),
        duration_s=duration,
        reason="ok",
        status_code=status_code,
        at=at,
        samples=tuple(found),
    )
    return MonitorView(
        spec=spec,
        state=MonitorState(MonitorStatus.UP),
        last_result=result if checked else None,
        last_change_at=None,
        probe_count=1 if checked else 0,
        hold_reason=None,
    )


def pg(name: str, value: float, server: str = "db1:5432", **labels: str) -> MetricSample:
    return MetricSample(name, value, {"server": server, **labels}, help=f"{name} help")


def scrape(*views: MonitorView) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    register(registry, FakeEngine(views))
    text = generate_latest(registry).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def series(
    scraped: Mapping[str, list[tuple[dict[str, str], float]]], name: str
) -> list[tuple[dict[str, str], float]]:
    return sorted(scraped.get(name, []), key=lambda row: sorted(row[0].items()))


def test_pg_samples_carry_server_labels_not_monitor_labels() -> None:
    scraped = scrape(
        view(
            "acme/db",
            "postgres",
            [
                pg("pg_up", 1),
                pg("pg_stat_activity_count", 3, datname="app", state="active"),
                pg("pg_stat_activity_count", 0, datname="app", state="idle"),
            ],
        )
    )
    assert series(scraped, "pg_up") == [({"server": "db1:5432"}, 1.0)]
    assert series(scraped, "pg_stat_activity_count") == [
        ({"server": "db1:5432", "datname": "app", "state": "active"}, 3.0),
        ({"server": "db1:5432", "datname": "app", "state": "idle"}, 0.0),
    ]
    # the monitor's own series are still there, with the monitor labels
    assert series(scraped, "probe_success") == [
        ({"monitor": "acme/db", "tenant": "acme", "kind": "postgres", "host": "d1"}, 1.0)
    ]


def test_one_server_watched_by_two_monitors_is_exported_once() -> None:
    newer_but_down = view(
        "beta/db", "postgres", [pg("pg_up", 0)], tenant="beta", at=T0 + timedelta(seconds=5)
    )
    older_up = view("acme/db", "postgres", [pg("pg_up", 1), pg("pg_settings_max_connections", 100)])
    newest_up = view(
        "gamma/db",
        "postgres",
        [pg("pg_up", 1), pg("pg_settings_max_connections", 200)],
        tenant="gamma",
        at=T0 + timedelta(seconds=1),
    )
    other_server = view("delta/db", "postgres", [pg("pg_up", 0, server="db2:5432")])
    scraped = scrape(newer_but_down, older_up, newest_up, other_server)
    assert series(scraped, "pg_up") == [
        ({"server": "db1:5432"}, 1.0),
        ({"server": "db2:5432"}, 0.0),
    ]
    assert series(scraped, "pg_settings_max_connections") == [({"server": "db1:5432"}, 200.0)]


def test_container_samples_carry_the_monitor_labels() -> None:
    scraped = scrape(
        view(
            "acme/app@d1/container",
            "container",
            [
                MetricSample("container_restarts", 2),
                MetricSample("container_memory_usage_bytes", 1024.0),
                # a sample may not override the monitor's labels
                MetricSample("container_cpu_usage_ratio", 0.5, {"host": "spoofed"}),
            ],
        ),
        view("acme/web", "http"),
    )
    labels = {"monitor": "acme/app@d1/container", "tenant": "acme", "kind": "container"}
    labels["host"] = "d1"
    assert series(scraped, "container_restarts") == [(labels, 2.0)]
    assert series(scraped, "container_memory_usage_bytes") == [(labels, 1024.0)]
    assert series(scraped, "container_cpu_usage_ratio") == [(labels, 0.5)]


def test_label_names_are_made_consistent_within_a_family() -> None:
    scraped = scrape(
        view("m1", "container", [MetricSample("container_restarts", 1)]),
        view("m2", "container", [MetricSample("container_restarts", 4, {"reason": "oom"})]),
        view("db", "postgres", [pg("pg_database_size_bytes", 10, datname="a")]),
        view("db2", "postgres", [pg("pg_database_size_bytes", 20, server="db2:5432")]),
    )
    restarts = series(scraped, "container_restarts")
    assert [set(labels) for labels, _ in restarts] == [
        {"monitor", "tenant", "kind", "host", "reason"}
    ] * 2
    assert [(labels["monitor"], labels["reason"], value) for labels, value in restarts] == [
        ("m1", "", 1.0),
        ("m2", "oom", 4.0),
    ]
    # a missing label is exported empty (Prometheus treats that as absent)
    assert series(scraped, "pg_database_size_bytes") == [
        ({"server": "db2:5432", "datname": ""}, 20.0),
        ({"server": "db1:5432", "datname": "a"}, 10.0),
    ]


def test_clashing_or_invalid_names_and_duplicates_are_skipped() -> None:
    scraped = scrape(
        view(
            "m1",
            "container",
            [
                MetricSample("probe_success", 0),  # would clash with the engine's own family
                MetricSample("bad-name", 1),
                MetricSample("container_restarts", 1, {"bad-label": "x"}),
                MetricSample("container_restarts", 3),
                MetricSample("container_restarts", 5),  # same series again: first one wins
            ],
        )
    )
    assert series(scraped, "probe_success") == [
        ({"monitor": "m1", "tenant": "acme", "kind": "container", "host": "d1"}, 1.0)
    ]
    assert "bad-name" not in scraped
    assert [value for _, value in series(scraped, "container_restarts")] == [3.0]


def test_unchecked_monitors_export_no_samples_and_target_is_never_a_label() -> None:
    scraped = scrape(view("m1", "postgres", [pg("pg_up", 1)], checked=False))
    assert "pg_up" not in scraped
    assert series(scraped, "monitor_status")[0][1] == 1.0
    everything = str(scraped)
    assert "secret" not in everything


def mixed_views() -> list[MonitorView]:
    """http/tcp/sip/postgres/container monitors: pg_* deduplicated per server, odd values."""
    quoted = 'a "quoted" \\ back\nslash'
    views = [
        view("acme/web", "http", status_code=503),
        view("acme/web2", "http", status_code=None, duration=float("nan")),
        view("acme/tcp", "tcp", duration=float("inf")),
        view("acme/sip", "sip", duration=1234567.5),
        view("acme/new", "sip", checked=False),
        view(quoted, "http", tenant="t\\1", host='h"1', status_code=200, duration=-0.0),
        view(
            "acme/db",
            "postgres",
            [
                pg("pg_up", 1),
                pg("pg_stat_activity_count", 3, datname="app", state="active"),
                pg("pg_database_size_bytes", float("-inf"), datname=quoted),
                MetricSample("pg_settings_max_connections", 100, {"server": "db1:5432"}),
            ],
        ),
        view("beta/db", "postgres", [pg("pg_up", 0)], tenant="beta", at=T0 + timedelta(seconds=9)),
        view("gamma/db", "postgres", [pg("pg_up", 0, server="db2:5432")], tenant="gamma"),
        view(
            "acme/app@d1/container",
            "container",
            [
                MetricSample("container_restarts", 2, help='restarts "since" start\\n\nx'),
                MetricSample("container_cpu_usage_ratio", float("nan"), {"reason": quoted}),
                MetricSample("container_memory_usage_bytes", 1e22),
                MetricSample("probe_success", 0),
                MetricSample("bad-name", 1),
            ],
        ),
        view("acme/other@d2/container", "container", [MetricSample("container_restarts", 0)]),
    ]
    views[4] = dataclasses.replace(views[4], state=MonitorState(MonitorStatus.PENDING))
    return views


def families(text: str) -> list[tuple[str, str, str, list[tuple[str, list[tuple[str, str]], str]]]]:
    """The parsed families, values as text so that NaN compares equal to NaN."""
    return [
        (
            f.name,
            f.documentation,
            f.type,
            [(s.name, sorted(s.labels.items()), repr(s.value)) for s in f.samples],
        )
        for f in text_string_to_metric_families(text)
    ]


def test_exposition_is_what_generate_latest_writes() -> None:
    registry = CollectorRegistry()
    collector = register(registry, FakeEngine(mixed_views()))
    expected = generate_latest(registry).decode()
    fast = collector.exposition()
    parsed = families(fast)
    assert parsed == families(expected)
    assert fast == expected  # byte for byte, label order and float formatting included
    names = [name for name, *_ in parsed]
    assert "pg_up" in names and "container_restarts" in names and "bad-name" not in names
    assert dict((n, len(samples)) for n, _, _, samples in parsed)["pg_up"] == 2  # db1 once
    # the cached label strings follow the specs: a changed spec gets new labels, a gone one goes
    engine = FakeEngine(mixed_views()[:2])
    collector = register(CollectorRegistry(), engine)
    collector.exposition()
    engine.views[0] = dataclasses.replace(
        engine.views[0], spec=dataclasses.replace(engine.views[0].spec, host="moved")
    )
    registry = CollectorRegistry()
    registry.register(MonitorCollector(engine))
    assert collector.exposition() == generate_latest(registry).decode()
    assert 'host="moved"' in collector.exposition()
    assert len(collector._labels) == 2


def test_metrics_registry_render_is_generate_latest() -> None:
    registry = make_registry()
    Gauge("cpdops_other", "another collector", ["x"], registry=registry).labels('q"').set(2.5)
    collector = register(registry, FakeEngine(mixed_views()))
    Counter("cpdops_after", "registered after the monitors", registry=registry).inc()
    assert registry.render() == generate_latest(registry)
    registry.unregister(collector)
    assert registry.render() == generate_latest(registry)
    assert b"probe_success" not in registry.render()


def test_a_counter_sample_is_written_under_its_own_name_as_postgres_exporter_does() -> None:
    families = _SampleFamilies()
    counter = MetricSample("pg_stat_database_xact_commit", 5.0, {"datname": "a"}, "x", "counter")
    total = MetricSample("pg_stat_bgwriter_buffers_alloc_total", 7.0, {}, "y", "counter")
    odd = MetricSample("pg_stat_database_sessions", 1.0, {"datname": "a"}, "z", "untyped")
    for sample in (counter, total, odd):
        families.add(sample, {**sample.labels, "server": "s"})
    text = "".join(families.text())
    assert "# TYPE pg_stat_database_xact_commit counter\n" in text
    assert 'pg_stat_database_xact_commit{datname="a",server="s"} 5.0\n' in text
    assert "# TYPE pg_stat_bgwriter_buffers_alloc_total counter\n" in text
    assert "# TYPE pg_stat_database_sessions untyped\n" in text
    # prometheus_client writes the _total counter and the untyped family the same way
    written = generate_latest(_Families(list(families.families()))).decode()
    assert "# TYPE pg_stat_bgwriter_buffers_alloc_total counter\n" in written
    assert "# TYPE pg_stat_database_sessions untyped\n" in written
