"""Issue #8: the state database (PostgreSQL) restarts while `cpdops serve` monitors.

A private PostgreSQL (never the shared one) under a real `cpdops serve` with stand-in tenants
on the test dockerds, monitors every second. Before the outage tenant ``pgb``'s container is
stopped (its incident opens). PostgreSQL is stopped; meanwhile the API answers 503 with
Retry-After (not a 500, not a hang), ``pga``'s container is stopped (its monitors go DOWN) and
``pgb``'s started again (UP) — the monitors keep probing. PostgreSQL comes back: the replica
leads again and every state change of the outage is in ``monitor_changes`` with its own time,
once; ``pga``'s incident is opened exactly once; the history minutes of the outage are there.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from monitors.state import MonitorStatus
from orchestrator.db.models import AuditEntry, Incident, MonitorChange, MonitorMinute
from orchestrator.settings import Settings
from tests.integration.dockerd import remove_test_containers
from tests.integration.fleet import make_context, place_tenants, wait_for, wait_health
from tests.integration.ha import Replica, Replicas
from tests.integration.private_pg import private_postgres
from tests.integration.server import bearer, make_token

pytestmark = pytest.mark.docker

OUTAGE_MIN_S = 12.0  # the database stays down at least this long


def _probe_success(replica: Replica) -> dict[str, float]:
    """probe_success per monitor id, from /metrics (served while the database is down)."""
    out = {}
    for line in replica.client.get("/metrics").text.splitlines():
        if line.startswith("probe_success{"):
            labels, value = line.rsplit(" ", 1)
            monitor = labels.split('monitor="', 1)[1].split('"', 1)[0]
            out[monitor] = float(value)
    return out


def _logged_changes(replica: Replica) -> list[tuple[str, str, str]]:
    """The state changes the monitor engine made, from its log lines (monitors/engine.py)."""
    out = []
    for line in replica.log_path.read_text(errors="replace").splitlines():
        if " monitor status monitor=" in line:
            fields = dict(
                part.split("=", 1) for part in line.split(" reason=", 1)[0].split() if "=" in part
            )
            out.append((fields["monitor"], fields["old"], fields["new"]))
    return sorted(out)


def _pending(replica: Replica) -> int:
    return int(replica.health().get("pending_changes", 0))


def test_database_restart_loses_no_monitor_change(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    with private_postgres(tmp_path) as pg:
        ctx = make_context(tmp_path, pg.url)
        replicas: Replicas | None = None
        api: httpx.Client | None = None
        try:
            placed = place_tenants(
                ctx, docker_hosts[:2], [("pga", 0), ("pgb", 1)], standin_images["1"]
            )
            ctx.close()
            for p in placed:
                wait_health(p.tenant.health_url, version="1")
            token = make_token(Settings(database_url=pg.url), "operator")
            env = {
                **os.environ,
                "CPDOPS_DATABASE_URL": pg.url,
                "CPDOPS_MONITOR_INTERVAL_S": "1",
                "CPDOPS_MONITOR_TIMEOUT_S": "1",
                "CPDOPS_MONITOR_FAILURE_THRESHOLD": "2",
                "CPDOPS_DISCOVERY_INTERVAL_S": "2",
                "CPDOPS_BACKUP_DIR": str(tmp_path / "backups"),
            }
            replicas = Replicas(tmp_path, env)
            a = replicas.start("a")
            api = httpx.Client(base_url=a.base, timeout=30, headers=bearer(token))
            wait_for(lambda: a.health().get("leading"), timeout=15, what="a leads")

            def statuses() -> dict[str, str]:
                r = api.get("/api/v1/monitors")
                assert r.status_code == 200, r.text
                return {m["id"]: m["status"] for m in r.json()}

            def tenant_status(tenant: str, status: str) -> bool:
                mine = {k: v for k, v in statuses().items() if k.startswith(f"{tenant}/")}
                return len(mine) == 2 and set(mine.values()) == {status}

            wait_for(lambda: tenant_status("pga", "up"), timeout=40, what="pga's monitors UP")
            wait_for(lambda: tenant_status("pgb", "up"), timeout=40, what="pgb's monitors UP")
            ids = {
                t: sorted(k for k in statuses() if k.startswith(f"{t}/")) for t in ("pga", "pgb")
            }

            def incidents(tenant: str) -> list[dict[str, Any]]:
                r = api.get("/api/v1/incidents", params={"tenant": tenant})
                assert r.status_code == 200, r.text
                got: list[dict[str, Any]] = r.json()
                return got

            # before the outage: pgb fails, its incident opens
            container_a = docker_hosts[0].client.containers.get("smartcpd-pga")
            container_b = docker_hosts[1].client.containers.get("smartcpd-pgb")
            container_b.stop(timeout=2)
            wait_for(lambda: tenant_status("pgb", "down"), timeout=30, what="pgb DOWN")
            wait_for(lambda: incidents("pgb"), timeout=20, what="pgb's incident")
            assert incidents("pga") == []

            # --- the outage
            outage_start = datetime.now(UTC)
            stopped = time.monotonic()
            pg.stop("fast")

            r = api.get("/api/v1/monitors")
            assert r.status_code == 503, r.text
            assert r.json()["detail"].startswith("the state database is unavailable: ")
            assert int(r.headers["Retry-After"]) > 0
            health = a.client.get("/healthz")
            assert health.status_code == 503
            assert health.json()["database"] == "unavailable"
            # an audited request (a write) is a 503 too: its audit entry waits in memory
            posted = api.post("/api/v1/incidents", json={"subject": "x", "description": "y"})
            assert posted.status_code == 503, posted.text

            container_a.stop(timeout=2)
            container_b.start()
            # the monitors keep probing: pga's go DOWN, pgb's UP — 4 changes wait in memory
            wait_for(
                lambda: (
                    all(_probe_success(a).get(m) == 0.0 for m in ids["pga"])
                    and all(_probe_success(a).get(m) == 1.0 for m in ids["pgb"])
                ),
                timeout=30,
                what="the probes see pga down and pgb up",
            )
            wait_for(lambda: _pending(a) >= 4, timeout=30, what="4 changes queued")
            assert "cpdops_state_database_up 0.0" in a.client.get("/metrics").text
            still_down = api.get("/api/v1/tenants")
            assert still_down.status_code == 503, still_down.text
            time.sleep(max(0.0, OUTAGE_MIN_S - (time.monotonic() - stopped)))
            outage_end = datetime.now(UTC)
            pg.start()

            # --- back
            wait_for(
                lambda: a.client.get("/healthz").status_code == 200,
                timeout=30,
                what="/healthz 200",
            )
            wait_for(lambda: a.health().get("leading"), timeout=15, what="a leads again")
            wait_for(lambda: _pending(a) == 0, timeout=30, what="the queued changes written")
            wait_for(
                lambda: a.health().get("pending_audit") == 0,
                timeout=30,
                what="the queued audit entries written",
            )
            assert a.health()["leader"] == a.health()["replica"]
            wait_for(lambda: tenant_status("pga", "down"), timeout=10, what="pga DOWN stored")
            assert tenant_status("pgb", "up")

            engine = create_engine(pg.url)
            try:
                with engine.connect() as conn:
                    during = [
                        (row.monitor_id, MonitorStatus(row.new).name, row.at)
                        for row in conn.execute(
                            select(MonitorChange)
                            .where(MonitorChange.at > outage_start, MonitorChange.at < outage_end)
                            .order_by(MonitorChange.id)
                        )
                    ]
                    # each of pga's monitors went DOWN and each of pgb's UP during the outage
                    last = {m: new for m, new, _at in during}
                    assert {m: last.get(m) for m in ids["pga"]} == dict.fromkeys(
                        ids["pga"], "DOWN"
                    ), during
                    assert {m: last.get(m) for m in ids["pgb"]} == dict.fromkeys(
                        ids["pgb"], "UP"
                    ), during
                    # every change the engine made (its log) is in the database, exactly once
                    written = sorted(
                        (row.monitor_id, MonitorStatus(row.old).name, MonitorStatus(row.new).name)
                        for row in conn.execute(select(MonitorChange))
                    )
                    assert written == _logged_changes(a), (written, _logged_changes(a))
                    # written late, in the order they happened, each with its own time
                    times = [at for _m, _new, at in during]
                    assert times == sorted(times), during
                    a_incidents = list(
                        conn.execute(select(Incident.id).where(Incident.tenant == "pga"))
                    )
                    assert len(a_incidents) == 1, a_incidents
                    # the 503's audit entry, written late with the time of the request
                    (audited,) = conn.execute(
                        select(AuditEntry.at).where(
                            AuditEntry.target == "/api/v1/incidents", AuditEntry.status == 503
                        )
                    )
                    assert outage_start <= audited.at <= outage_end, audited
                    # the history minutes of the outage: flushed once the database is back
                    first, last = (
                        int(outage_start.timestamp()) // 60,
                        int(outage_end.timestamp()) // 60,
                    )

                    def minutes() -> int:
                        with engine.connect() as c:
                            return int(
                                sum(
                                    c.scalars(
                                        select(MonitorMinute.failures).where(
                                            MonitorMinute.monitor_id == ids["pga"][0],
                                            MonitorMinute.minute >= first,
                                            MonitorMinute.minute <= last,
                                        )
                                    )
                                )
                            )

                    wait_for(lambda: minutes() >= 3, timeout=30, what="outage minutes flushed")
            finally:
                engine.dispose()

            (ticket,) = incidents("pga")
            assert "DOWN" in ticket["subject"]
            (b_ticket,) = incidents("pgb")
            detail = api.get(f"/api/v1/incidents/{b_ticket['number']}").json()
            recovered = [e for e in detail.get("events", []) if e["kind"] == "recovered"]
            assert len(recovered) == 2, detail  # pgb's two monitors, once each
            log = a.log_path.read_text(errors="replace")
            assert "audit entry queued for the state database" in log
            assert '" 500' not in log, a.log_tail(80)  # no request answered 500
        finally:
            if api is not None:
                api.close()
            if replicas is not None:
                replicas.stop()
            for h in docker_hosts:
                remove_test_containers(h.client)
