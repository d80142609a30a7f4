"""HA on PostgreSQL: two real `cpdops serve` processes on one database. One leads (scheduler,
monitors, rollouts), the other serves the API; the leader is SIGKILLed mid-rollout and the
other takes the rollout over and finishes it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.settings import Settings
from tests.integration.dockerd import remove_test_containers
from tests.integration.fleet import make_context, place_tenants, wait_for, wait_health
from tests.integration.ha import Replica, Replicas, pg_database
from tests.integration.server import bearer, make_token

pytestmark = pytest.mark.docker

TAKEOVER_BOUND_S = 15.0  # the bound: the other replica takes over within 15 s


def _probes(replica: Replica) -> int:
    """How many monitors this replica probes (its probe_success series)."""
    body = replica.client.get("/metrics").text
    return sum(1 for line in body.splitlines() if line.startswith("probe_success{"))


def _journal(rollout: dict[str, Any]) -> dict[str, list[tuple[str, str, str]]]:
    return {
        i["tenant"]: [(st["step"], st["state"], st["started_at"]) for st in i["steps"]]
        for i in rollout["instances"]
    }


def test_leader_killed_mid_rollout_the_other_replica_finishes_it(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    with pg_database() as db_url:
        ctx = make_context(tmp_path, db_url)
        replicas: Replicas | None = None
        try:
            names = [(f"ha{n}", n % 3) for n in range(6)]
            placed = place_tenants(ctx, docker_hosts, names, standin_images["1"])
            ctx.close()
            for p in placed:
                wait_health(p.tenant.health_url, version="1")
            token = make_token(Settings(database_url=db_url), "operator")
            env = {
                **os.environ,
                "CPDOPS_DATABASE_URL": db_url,
                "CPDOPS_MONITOR_INTERVAL_S": "1",
                "CPDOPS_MONITOR_TIMEOUT_S": "1",
                "CPDOPS_DISCOVERY_INTERVAL_S": "2",
                "CPDOPS_STOP_TIMEOUT_S": "5",
                "CPDOPS_BACKUP_DIR": str(tmp_path / "backups"),
                # the default lease (15 s): takeover must not wait for it to lapse
                "CPDOPS_ROLLOUT_LEASE_S": "15",
            }
            replicas = Replicas(tmp_path, env)
            a = replicas.start("a")
            wait_for(lambda: a.health().get("leading"), timeout=10, what="a leads")
            b = replicas.start("b")
            hb = b.health()
            assert hb["leading"] is False and hb["leader"] == a.health()["replica"]
            assert a.health()["leader"] == a.health()["replica"]

            # only the leader probes: 6 http + 6 container monitors on a, none on b
            wait_for(lambda: _probes(a) == 12, timeout=30, what="a probes the 12 monitors")
            assert _probes(b) == 0

            # the rollout is asked of the follower; the leader runs it
            api_b = httpx.Client(base_url=b.base, timeout=30, headers=bearer(token))
            created = api_b.post(
                "/api/v1/rollouts",
                json={
                    "image": standin_images["2"],
                    "gate": {"passes": 2, "deadline_s": 20, "interval_s": 0.2},
                    "strategy": {"waves": ["1", "100%"], "parallelism": 1},
                },
            )
            assert created.status_code == 202, created.text
            rid = created.json()["id"]
            assert created.json()["owner"] is None  # stored unowned by the follower

            def rollout() -> dict[str, Any]:
                got: dict[str, Any] = api_b.get(f"/api/v1/rollouts/{rid}").json()
                return got

            a_id, b_id = a.health()["replica"], hb["replica"]

            def mid_rollout() -> dict[str, Any] | None:
                r = rollout()
                states = [i["state"] for i in r["instances"]]
                if states.count("updated") >= 2 and "updating" in states:
                    return r
                return None

            at_kill = wait_for(mid_rollout, timeout=90, what="a mid-rollout", interval=0.05)
            assert at_kill["owner"] == a_id, "the leader runs the rollout"
            a.kill()
            killed = time.monotonic()
            before = _journal(at_kill)
            done_before = {i["tenant"] for i in at_kill["instances"] if i["state"] == "updated"}

            wait_for(lambda: b.health()["leading"], timeout=TAKEOVER_BOUND_S, what="b leads")
            elected_s = time.monotonic() - killed
            wait_for(
                lambda: rollout()["owner"] == b_id,
                timeout=TAKEOVER_BOUND_S,
                what="b takes the rollout over",
                interval=0.1,
            )
            takeover_s = time.monotonic() - killed
            print(
                f"\nHA: b elected {elected_s:.2f}s, "
                f"rollout taken over {takeover_s:.2f}s after SIGKILL"
            )
            assert takeover_s <= TAKEOVER_BOUND_S

            final = wait_for(
                lambda: (r := rollout())["status"] in ("succeeded", "failed") and r,
                timeout=120,
                what="the rollout to end",
            )
            assert final["status"] == "succeeded", final
            assert b.health()["leader"] == b_id
            versions = {p.tenant.slug: wait_health(p.tenant.health_url)["version"] for p in placed}
            assert set(versions.values()) == {"2"}, versions

            # the journal: what was done before the kill was not done again
            after = _journal(final)
            for tenant in done_before:
                assert after[tenant] == before[tenant], tenant
            for tenant, steps in after.items():
                ok = [name for name, state, _ in steps if state == "ok"]
                assert ok.count("gate") >= 1, (tenant, steps)
                if tenant in done_before:
                    continue
                reconciled = any(name == "reconcile" for name, _, _ in steps)
                # one replace per instance, unless the one cut mid-step was reverted and redone
                assert ok.count("replace") == 1 or reconciled, (tenant, steps)
            # the one the leader was in the middle of was reconciled by b
            (cut,) = [i["tenant"] for i in at_kill["instances"] if i["state"] == "updating"]
            assert any(name == "reconcile" for name, _, _ in after[cut]), after[cut]
            print("HA: journal of the instance cut mid-step:", [s[:2] for s in after[cut]])

            # one of each instance, on the one known version; no leftovers
            containers = [c for h in docker_hosts for c in h.client.containers.list(all=True)]
            managed = [c for c in containers if "smartcpd.tenant" in c.labels]
            assert len(managed) == 6, [c.name for c in managed]
            assert all("--cpdops-" not in c.name for c in containers)

            # the new leader probes the monitors now
            wait_for(lambda: _probes(b) == 12, timeout=30, what="b probes the 12 monitors")
            api_b.close()
        finally:
            if replicas is not None:
                replicas.stop()
            ctx.close()
            for h in docker_hosts:
                remove_test_containers(h.client)
