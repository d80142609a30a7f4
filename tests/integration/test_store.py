"""The store on SQLite and a real PostgreSQL: migrations, ticket numbers, exactly-once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from orchestrator.db.migrate import current_revision, upgrade
from orchestrator.db.models import Host, Incident, IncidentEvent, Tenant
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from orchestrator.errors import ConflictError, FleetFileError, InputError
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.incidents.numbers import is_valid_number
from orchestrator.incidents.tickets import change_status, get_by_number, open_or_join

FLEET = """
version: 1
hosts:
  - name: host-a
    url: unix:///var/run/docker.sock
tenants:
  - slug: acme
    name: ACME
    ring: canary
  - slug: globex
    name: Globex
"""


@pytest.fixture
def store(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def head_revision() -> str:
    """The newest migration (not a fixed number: branches add theirs)."""
    from alembic.script import ScriptDirectory

    from orchestrator.db.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def test_migration_creates_schema_and_is_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {"hosts", "tenants", "rollouts", "rollout_steps", "incidents", "audit"} <= tables
    assert {"monitor_minutes", "declared_monitors", "incident_attachments", "outbox"} <= tables
    assert {"alerts", "intake_receipts", "remote_tickets", "api_tokens"} <= tables
    engine.dispose()


def test_ticket_numbers_unique_under_concurrency(store) -> None:  # type: ignore[no-untyped-def]
    numbers: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for k in range(10):
            with session_scope(store) as s:
                inc, created = open_or_join(
                    s,
                    system_id="01",
                    open_key=f"w{n}-{k}",
                    type="incident",
                    subject="s",
                    description="d",
                    author="test",
                    source="test",
                )
                assert created
                with lock:
                    numbers.append(inc.number)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(numbers) == 60
    assert len(set(numbers)) == 60
    assert all(is_valid_number(n) for n in numbers)
    counters = sorted(int(n[10:15]) for n in numbers)
    assert counters == list(range(1, 61))


def test_open_or_join_is_exactly_once_under_concurrency(store) -> None:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            with session_scope(store) as s:
                open_or_join(
                    s,
                    system_id="01",
                    open_key="tenant:acme",
                    type="incident",
                    subject="acme DOWN",
                    description="d",
                    author="monitor",
                    source="monitor",
                    tenant="acme",
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store() as s:
        assert s.scalar(select(func.count()).select_from(Incident)) == 1
        # every join is on the timeline of the one ticket: counted in its one evidence entry
        events = list(s.scalars(select(IncidentEvent).order_by(IncidentEvent.id)))
        assert [e.kind for e in events] == ["created", "evidence"]
        assert events[1].data["occurrences"]["count"] == 7, "each of the 7 joins counted"


def test_status_rules(store) -> None:  # type: ignore[no-untyped-def]
    with session_scope(store) as s:
        inc, _ = open_or_join(
            s,
            system_id="01",
            open_key="k",
            type="incident",
            subject="s",
            description="d",
            author="a",
            source="test",
        )
        number = inc.number
    with session_scope(store) as s:
        inc = get_by_number(s, number)
        with pytest.raises(InputError, match="requires a comment"):
            change_status(s, inc, "solution_provided", author="eng")
        change_status(s, inc, "solution_provided", author="eng", comment="restarted")
        assert inc.open_key == "k", "only closing frees the open key"
        with pytest.raises(ConflictError):
            change_status(s, inc, "awaiting_info", author="eng")


def test_apply_is_idempotent_and_bad_file_changes_nothing(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = parse_fleet_text(FLEET)
    with session_scope(store) as s:
        first = apply_fleet(s, fleet)
    assert sorted(first.created) == [
        "config/incidents",
        "config/monitors",
        "host/host-a",
        "tenant/acme",
        "tenant/globex",
    ]
    with session_scope(store) as s:
        second = apply_fleet(s, fleet)
    assert second.created == [] and second.updated == []
    assert len(second.unchanged) == 5
    with pytest.raises(FleetFileError, match=r":9: tenants\[0\].ring: invalid value .gold."):
        parse_fleet_text(FLEET.replace("ring: canary", "ring: gold"))
    changed = parse_fleet_text(FLEET.replace("name: Globex", "name: Globex Corp"))
    with session_scope(store) as s:
        third = apply_fleet(s, changed)
    assert third.updated == ["tenant/globex"]
    with store() as s:
        assert s.scalar(select(func.count()).select_from(Tenant)) == 2
        assert s.scalar(select(func.count()).select_from(Host)) == 1
        ring = s.scalars(select(Tenant.ring).where(Tenant.slug == "acme")).one()
        assert ring == "canary"


def test_upgrade_from_0001_keeps_rows(db_url: str) -> None:
    from sqlalchemy import text

    engine = make_engine(db_url)
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO rollouts (id, image, status, selection, options, created_by, "
                "created_at) VALUES (1, 'x:1', 'succeeded', '{}', '{}', 'cli', :now)"
            ),
            {"now": "2026-11-25 00:00:00"},
        )
        conn.execute(
            text(
                "INSERT INTO rollout_instances (id, rollout_id, position, tenant, host, "
                "container_name, state) VALUES (1, 1, 0, 'acme', 'h1', 'c', 'updated')"
            )
        )
    upgrade(engine)
    with make_session_factory(engine)() as s:
        from orchestrator.db.models import Rollout

        r = s.get_one(Rollout, 1)
        assert r.progress == {} and r.control is None and r.owner is None
        assert r.instances[0].wave == 0 and r.instances[0].migrated is False
    engine.dispose()


def test_history_flush_is_additive_and_uptime(store) -> None:  # type: ignore[no-untyped-def]
    import time as _time
    from datetime import UTC, datetime

    from monitors.history import MinuteAggregator
    from monitors.probe import MonitorSpec, ProbeResult
    from monitors.state import MonitorStatus
    from orchestrator.monitor_history import flush, history, uptimes

    spec = MonitorSpec(
        id="a/app@h/http", name="a", tenant="a", host="h", kind="http", target="http://x"
    )
    agg = MinuteAggregator()
    now = datetime.now(UTC)
    for ok in (True, True, False):
        agg.add(spec, ProbeResult(ok=ok, duration_s=0.2, reason="", at=now), MonitorStatus.UP)
    assert flush(store, agg) == 1
    agg.add(spec, ProbeResult(ok=True, duration_s=0.5, reason="", at=now), MonitorStatus.UP)
    agg.add(
        spec, ProbeResult(ok=False, duration_s=0.1, reason="", at=now), MonitorStatus.MAINTENANCE
    )
    assert flush(store, agg) == 1
    with store() as s:
        up = uptimes(s, [spec.id], now=_time.time())
        assert up[spec.id]["1h"] == 0.75 and up[spec.id]["30d"] == 0.75
        [point] = history(s, spec.id, "1h")
        assert (point.checks, point.failures, point.maintenance) == (4, 1, 1)
        assert point.max_latency_s == 0.5


def test_history_flush_of_many_monitors_writes_every_row(store) -> None:  # type: ignore[no-untyped-def]
    """More rows than one executemany chunk: every monitor's bucket is written, a second flush
    adds to the rows, and the max latency is the greater one."""
    from datetime import UTC, datetime

    from monitors.history import MinuteAggregator
    from monitors.probe import MonitorSpec, ProbeResult
    from monitors.state import MonitorStatus
    from orchestrator.db.models import MonitorMinute
    from orchestrator.monitor_history import FLUSH_CHUNK, flush

    n = FLUSH_CHUNK + 1234
    specs = [
        MonitorSpec(id=f"t/m{i}", name=f"m{i}", tenant="t", host="h", kind="tcp", target="x")
        for i in range(n)
    ]
    now = datetime.now(UTC)
    agg = MinuteAggregator()
    for i, spec in enumerate(specs):
        result = ProbeResult(ok=i % 3 != 0, duration_s=0.25, reason="", at=now)
        agg.add(spec, result, MonitorStatus.UP)
    assert flush(store, agg) == n
    for spec in specs[:10]:
        agg.add(spec, ProbeResult(ok=True, duration_s=0.75, reason="", at=now), MonitorStatus.UP)
    assert flush(store, agg) == 10
    with store() as s:
        rows, checks, failures = s.execute(
            select(func.count(), func.sum(MonitorMinute.checks), func.sum(MonitorMinute.failures))
        ).one()
        assert (rows, checks, failures) == (n, n + 10, len(range(0, n, 3)))
        first = s.get_one(MonitorMinute, (specs[0].id, int(now.timestamp()) // 60))
        assert (first.checks, first.failures, first.duration_max) == (2, 1, 0.75)
        assert first.duration_sum == 1.0
        last = s.get_one(MonitorMinute, (specs[-1].id, int(now.timestamp()) // 60))
        assert (last.checks, last.duration_max) == (1, 0.25)


def test_migrations_match_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from orchestrator.db.models import Base

    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    ours = [
        d
        for d in diff
        if any(t in repr(d) for t in ("declared_monitors", "remote_tickets", "alerts", "intake_"))
    ]
    assert ours == []


DECLARING = """
version: 1
environment: [CPDOPS_TEST_UNSET_PW]
tenants:
  - slug: acme
    name: ACME
monitors:
  defaults: {interval: 20s}
  declared:
    - {name: portal, tenant: acme, kind: http, target: "http://127.0.0.1:1/health"}
    - name: db
      tenant: acme
      kind: postgres
      target: "postgresql://mon:${CPDOPS_TEST_UNSET_PW}@127.0.0.1:1/acme"
      interval: 5s
      failure_threshold: 1
"""


def test_monitor_defaults_and_declared_specs(db_url: str, tmp_path: Path) -> None:
    from orchestrator import declared_monitors
    from orchestrator.context import build_context, monitor_defaults
    from orchestrator.settings import Settings

    ctx = build_context(Settings(database_url=db_url, monitor_timeout_s=7, monitor_interval_s=9))
    try:
        assert monitor_defaults(ctx)["interval_s"] == 9
        with session_scope(ctx.factory) as s:
            report = apply_fleet(s, parse_fleet_text(DECLARING))
        assert {"monitor/acme/db", "monitor/acme/portal"} <= set(report.created)
        defaults = monitor_defaults(ctx)
        # only what the file writes wins over the settings
        assert (defaults["interval_s"], defaults["timeout_s"]) == (20.0, 7)
        with ctx.factory() as s:
            specs = declared_monitors.specs(s, defaults)
        # the db monitor's ${VAR} is unset: skipped, not configured with a broken DSN
        assert [(x.id, x.interval_s, x.timeout_s, x.failure_threshold) for x in specs] == [
            ("acme/portal", 20.0, 7, ctx.settings.monitor_failure_threshold)
        ]
        with session_scope(ctx.factory) as s:
            again = apply_fleet(s, parse_fleet_text(DECLARING))
        assert "monitor/acme/portal" in again.unchanged
        with session_scope(ctx.factory) as s:
            apply_fleet(s, parse_fleet_text(FLEET))
        assert monitor_defaults(ctx)["interval_s"] == 9  # the file no longer sets it
    finally:
        ctx.close()
