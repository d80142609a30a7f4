"""``monitor_changes``: the leader's retention (bounded batches) and reading a monitor's
changes through the API (``GET /api/v1/monitors/{id}/changes``) and the CLI
(``cpdops monitors changes``, over HTTP and on the database); on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from monitors.state import MonitorStatus
from orchestrator import monitor_changes
from orchestrator.context import AppContext, build_context
from orchestrator.db.models import MonitorChange, MonitorRecord
from orchestrator.db.session import session_scope
from orchestrator.scheduler import make_scheduler, prune_monitor_changes
from orchestrator.settings import Settings
from tests.integration.server import bearer, make_token, running_server

CPDOPS = str(Path(sys.executable).parent / "cpdops")
NOW = datetime.now(UTC).replace(microsecond=0)
MONITOR = "acme/portal"


def _add(
    ctx: AppContext,
    monitor: str,
    ats: list[datetime],
    *,
    written_at: datetime | None = None,
) -> None:
    with session_scope(ctx.factory) as s:
        for i, at in enumerate(ats):
            s.add(
                MonitorChange(
                    monitor_id=monitor,
                    tenant=monitor.split("/")[0],
                    old=int(MonitorStatus.UP if i % 2 else MonitorStatus.DOWN),
                    new=int(MonitorStatus.DOWN if i % 2 else MonitorStatus.UP),
                    reason=f"change {i}",
                    at=at,
                    written_at=written_at or at,
                )
            )


def _count(ctx: AppContext) -> int:
    with ctx.factory() as s:
        return int(s.scalar(select(func.count()).select_from(MonitorChange)) or 0)


def _ats(ctx: AppContext) -> list[datetime]:
    with ctx.factory() as s:
        return sorted(s.scalars(select(MonitorChange.at)))


def test_prune_deletes_old_rows_in_bounded_batches(db_url: str) -> None:
    ctx = build_context(Settings(database_url=db_url, run_monitors=False, run_scheduler=False))
    try:
        old = [NOW - timedelta(days=40, minutes=i) for i in range(7)]
        _add(ctx, MONITOR, old)
        # happened long ago but written just now (waited through an outage): kept, it is the
        # idempotency guard of a change that may still be retried
        late = NOW - timedelta(days=35)
        _add(ctx, "acme/sip", [late], written_at=NOW - timedelta(minutes=1))
        recent = [NOW - timedelta(days=29), NOW - timedelta(hours=1)]
        _add(ctx, MONITOR, recent)
        assert _count(ctx) == 10

        # at most 2 batches of 3 rows a run: 6 of the 7 old rows, the 7th at the next run
        assert monitor_changes.prune(ctx.factory, 30, now=NOW, batch=3, max_batches=2) == 6
        assert _count(ctx) == 4
        assert monitor_changes.prune(ctx.factory, 30, now=NOW, batch=3, max_batches=2) == 1
        assert sorted([late, *recent]) == _ats(ctx)
        assert monitor_changes.prune(ctx.factory, 30, now=NOW, batch=3) == 0
        # a shorter retention reaches the 29-day-old row, still not the late-written one
        assert monitor_changes.prune(ctx.factory, 7, now=NOW) == 1
        assert _ats(ctx) == sorted([late, recent[1]])
    finally:
        ctx.close()


def test_leader_job_prunes_with_the_configured_retention(db_url: str) -> None:
    settings = Settings(
        database_url=db_url,
        run_monitors=False,
        run_scheduler=False,
        monitor_changes_retention_days=10,
    )
    ctx = build_context(settings)
    try:
        _add(ctx, MONITOR, [NOW - timedelta(days=11), NOW - timedelta(days=9)])
        scheduler = make_scheduler(ctx)
        job = scheduler.get_job("prune-monitor-changes", jobstore="internal")
        assert job is not None and job.func is prune_monitor_changes
        assert job.trigger.interval == timedelta(seconds=monitor_changes.PRUNE_INTERVAL_S)
        assert prune_monitor_changes(ctx) == 1
        assert _ats(ctx) == [NOW - timedelta(days=9)]
    finally:
        ctx.close()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CPDOPS, "monitors", "changes", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _cli_json(env: dict[str, str], *args: str) -> Any:
    res = _cli(env, *args, "--json")
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return json.loads(res.stdout)


def test_changes_through_the_api_and_the_cli(db_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=db_url, run_monitors=False, run_scheduler=False)
    ctx = build_context(settings)
    times = [NOW - timedelta(minutes=10 * i) for i in range(5)]  # newest first
    try:
        with session_scope(ctx.factory) as s:
            s.add(
                MonitorRecord(
                    id=MONITOR,
                    name="portal",
                    tenant="acme",
                    host="local",
                    kind="http",
                    target="http://127.0.0.1:1/health",
                    status=int(MonitorStatus.UP),
                    reason="ok",
                    changed_at=times[0],
                )
            )
        _add(ctx, MONITOR, list(reversed(times)))
        _add(ctx, "acme/other", [NOW - timedelta(minutes=5)])
        # a deleted monitor: no record, its changes remain readable until pruned
        _add(ctx, "gone/old", [NOW - timedelta(days=1)])
    finally:
        ctx.close()

    viewer = make_token(settings, "viewer")
    with running_server(settings) as base:
        with httpx.Client(base_url=base, timeout=30, headers=bearer(viewer)) as client:
            path = "/api/v1/monitors/acme/portal/changes"
            r = client.get(path)
            assert r.status_code == 200, r.text
            got = r.json()
            assert [datetime.fromisoformat(c["at"]) for c in got] == times
            assert {c["monitor"] for c in got} == {MONITOR}
            first = got[-1]  # the oldest: change 0, down → up
            assert (first["old"], first["new"], first["reason"]) == ("down", "up", "change 0")
            assert (got[-2]["old"], got[-2]["new"]) == ("up", "down")

            page = client.get(path, params={"limit": 2, "offset": 1}).json()
            assert [c["id"] for c in page] == [c["id"] for c in got[1:3]]
            since, until = times[3].isoformat(), times[0].isoformat()
            window = client.get(path, params={"since": since, "until": until}).json()
            assert [datetime.fromisoformat(c["at"]) for c in window] == times[1:4]

            assert len(client.get("/api/v1/monitors/gone/old/changes").json()) == 1
            assert client.get("/api/v1/monitors/acme/nope/changes").status_code == 404
            assert client.get(path, params={"since": "12"}).status_code == 422
            assert client.get(path, params={"limit": 0}).status_code == 422
            assert client.get(path, params={"limit": 1001}).status_code == 422
            anonymous = httpx.get(base + path, timeout=30)
            assert anonymous.status_code == 401

        env = {k: v for k, v in os.environ.items() if not k.startswith("CPDOPS_")}
        env |= {
            # the CLI's own database is another, empty one: what it shows came over HTTP
            "CPDOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'cli-own.db'}",
            "CPDOPS_CONFIG": str(tmp_path / "no-config.toml"),
            "CPDOPS_URL": base,
            "CPDOPS_TOKEN": viewer,
        }
        over_http = _cli_json(env, MONITOR)
        assert over_http == got
        assert _cli_json(env, MONITOR, "--limit", "1", "--offset", "4") == got[4:]
        assert _cli_json(env, MONITOR, "--since", since, "--until", until) == window
        table = _cli(env, MONITOR)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["AT", "OLD", "NEW", "WRITTEN", "REASON"]
        assert len(lines) == 6 and "change 4" in lines[1] and "change 0" in lines[5]
        missing = _cli(env, "acme/nope")
        assert missing.returncode == 2 and "no monitor" in missing.stderr
        bad = _cli(env, MONITOR, "--since", "yesterday")
        assert bad.returncode == 2 and "not an ISO 8601" in bad.stderr

    # no URL configured: the same command reads the database itself
    direct = {k: v for k, v in env.items() if k not in ("CPDOPS_URL", "CPDOPS_TOKEN")}
    direct["CPDOPS_DATABASE_URL"] = db_url
    assert [c["id"] for c in _cli_json(direct, MONITOR)] == [c["id"] for c in got]
    on_db = _cli_json(direct, MONITOR, "--since", since, "--until", until)
    assert [(c["old"], c["new"], c["reason"]) for c in on_db] == [
        (c["old"], c["new"], c["reason"]) for c in window
    ]
