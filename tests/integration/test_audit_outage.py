"""Audit entries during a state database outage: a real ``cpdops serve`` on a private
PostgreSQL that is stopped and started again (the shared server is never touched). The
entries of the requests answered during the outage wait in memory and are written when the
database is back, each with the time its request was answered."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select

from orchestrator.db.models import AuditEntry
from orchestrator.settings import Settings
from tests.integration.fleet import wait_for
from tests.integration.private_pg import private_postgres
from tests.integration.server import bearer, make_token, running_server


def _metric(base: str, name: str) -> float:
    text = httpx.get(base + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_audit_entries_of_an_outage_are_written_when_the_database_is_back(
    tmp_path: Path,
) -> None:
    with private_postgres(tmp_path) as pg:
        settings = Settings(database_url=pg.url, run_monitors=False, run_scheduler=False)
        token = make_token(settings, "operator")
        with running_server(settings) as base:
            api = httpx.Client(base_url=base, timeout=30, headers=bearer(token))
            try:
                ok = api.post("/api/v1/incidents", json={})
                assert ok.status_code == 422, ok.text  # audited, written at once

                pg.stop("fast")
                stopped_at = datetime.now(UTC)
                posted = api.post("/api/v1/incidents", json={"subject": "x", "description": "y"})
                assert posted.status_code == 503, posted.text
                anonymous = httpx.delete(base + "/api/v1/monitors/acme/portal", timeout=30)
                assert anonymous.status_code == 401, anonymous.text
                assert api.post("/api/v1/rollouts", json={}).status_code in (422, 503)
                health = httpx.get(base + "/healthz", timeout=30)
                assert health.status_code == 503
                assert health.json()["pending_audit"] == 3
                assert _metric(base, "cpdops_audit_entries_pending") == 3
                restarted_at = datetime.now(UTC)
                pg.start()

                wait_for(
                    lambda: (
                        httpx.get(base + "/healthz", timeout=30).json().get("pending_audit") == 0
                    ),
                    timeout=60,
                    what="the queued audit entries written",
                )
                assert _metric(base, "cpdops_audit_entries_pending") == 0
            finally:
                api.close()

        engine = create_engine(pg.url)
        try:
            with engine.connect() as conn:
                rows = list(
                    conn.execute(
                        select(AuditEntry)
                        .where(AuditEntry.action == "http")
                        .order_by(AuditEntry.id)
                    )
                )
        finally:
            engine.dispose()
        http = [(r.method, r.target, r.status, r.actor) for r in rows]
        assert http[0][:3] == ("POST", "/api/v1/incidents", 422)
        late = rows[1:]
        assert [(r.method, r.target, r.status) for r in late][:2] == [
            ("POST", "/api/v1/incidents", 503),
            ("DELETE", "/api/v1/monitors/acme/portal", 401),
        ]
        assert late[1].actor == "anonymous"
        assert late[2].target == "/api/v1/rollouts" and len(late) == 3
        # each at the time its request was answered, during the outage — not when written
        for r in late:
            assert stopped_at <= r.at <= restarted_at, (r.at, stopped_at, restarted_at)
        assert [r.at for r in late] == sorted(r.at for r in late)
