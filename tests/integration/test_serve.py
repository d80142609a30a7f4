"""End to end: `cpdops serve` discovers, monitors, opens incidents and runs API rollouts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.settings import Settings
from tests.integration.dockerd import remove_test_containers
from tests.integration.fleet import make_context, place_tenants, wait_for, wait_health
from tests.integration.server import api_client

pytestmark = pytest.mark.docker

# 1 s: a container probe (Docker inspect + stats) must not time out on a busy 2-core machine.
INTERVAL = 1.0
THRESHOLD = 2


def test_serve_monitors_incident_and_api_rollout(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    hosts = docker_hosts[:2]
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = make_context(tmp_path, db_url)
    try:
        placed = place_tenants(
            ctx, hosts, [("acme", 0), ("globex", 1), ("initech", 1)], standin_images["1"]
        )
        ctx.close()
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        settings = Settings(
            database_url=db_url,
            monitor_interval_s=INTERVAL,
            # a busy machine's Docker API may take over a second to answer the container
            # probe of a healthy tenant (seen in CI: a second DOWN, then a host mass incident)
            monitor_timeout_s=3.0,
            monitor_failure_threshold=THRESHOLD,
            discovery_interval_s=1.0,
            gate_passes=2,
        )
        with api_client(settings) as api:
            assert api.get("/healthz").json()["status"] == "ok"
            found = api.get("/api/v1/instances").json()
            assert found["errors"] == {}
            assert sorted((i["tenant"], i["host"], i["version"]) for i in found["instances"]) == [
                ("acme", hosts[0].name, "1"),
                ("globex", hosts[1].name, "1"),
                ("initech", hosts[1].name, "1"),
            ]

            def all_up() -> bool:
                mons = api.get("/api/v1/monitors").json()
                kinds = sorted(m["kind"] for m in mons)
                # generated from the labels: an http and a container monitor per instance
                return kinds == ["container"] * 3 + ["http"] * 3 and all(
                    m["status"] == "up" for m in mons
                )

            wait_for(all_up, timeout=30, what="6 monitors UP")

            # Stop one tenant: DOWN within the threshold, exactly one incident.
            hosts[1].client.containers.get("smartcpd-globex").stop(timeout=2)
            stopped_at = time.monotonic()

            def globex_incidents() -> list[dict[str, Any]]:
                items: list[dict[str, Any]] = api.get(
                    "/api/v1/incidents", params={"tenant": "globex"}
                ).json()
                return items

            wait_for(globex_incidents, timeout=15, what="an incident for globex")
            detection = time.monotonic() - stopped_at
            metrics = api.get("/metrics").text
            assert any(
                line.startswith("monitor_status{")
                and 'tenant="globex"' in line
                and line.endswith(" 0.0")
                for line in metrics.splitlines()
            ), metrics
            # more probe intervals: still one ticket, not one per probe
            time.sleep(INTERVAL * (THRESHOLD + 4))
            tickets = globex_incidents()
            assert len(tickets) == 1, tickets
            assert tickets[0]["type"] == "incident"
            assert tickets[0]["status"] == "new"
            every = api.get("/api/v1/incidents").json()
            assert len(every) == 1, [(i["tenant"], i["subject"]) for i in every]
            detail = api.get(f"/api/v1/incidents/{tickets[0]['number']}").json()
            assert any(e["kind"] == "evidence" for e in detail["events"])
            assert detection < 15

            # A rollout through the API; the stopped tenant is not selected.
            resp = api.post(
                "/api/v1/rollouts",
                json={
                    "image": standin_images["2"],
                    "tenants": ["acme", "initech"],
                    "gate": {"passes": 2, "deadline_s": 20, "interval_s": 0.25},
                },
            )
            assert resp.status_code == 202, resp.text
            rollout_id = resp.json()["id"]

            def finished() -> dict[str, Any] | None:
                data: dict[str, Any] = api.get(f"/api/v1/rollouts/{rollout_id}").json()
                return data if data["status"] in ("succeeded", "failed") else None

            data = wait_for(finished, timeout=60, what="the API rollout to finish")
            assert data["status"] == "succeeded", data
            assert [i["state"] for i in data["instances"]] == ["updated", "updated"]
            assert all(i["steps"] for i in data["instances"])
            wait_health(placed[0].tenant.health_url, version="2")
            metrics = api.get("/metrics").text
            assert 'cpdops_rollouts_total{result="succeeded"} 1.0' in metrics
            assert "cpdops_rollout_duration_seconds_count 1.0" in metrics
            # bad input through the API: clear 4xx, nothing stored
            bad = api.post("/api/v1/rollouts", json={"image": "smartcpd-fake:nope"})
            assert bad.status_code == 400 and "not present" in bad.json()["detail"]
            bad = api.post("/api/v1/rollouts", json={"image": standin_images["2"], "x": 1})
            assert bad.status_code == 422
            assert len(api.get("/api/v1/rollouts").json()) == 1
            # no rollout incident: the rollout succeeded, and the DOWN was not during it
            every = api.get("/api/v1/incidents").json()
            assert len(every) == 1, [(i["tenant"], i["subject"]) for i in every]
    finally:
        for h in hosts:
            remove_test_containers(h.client)


def test_maintenance_window_means_no_incident_and_history(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    hosts = docker_hosts[:2]
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = make_context(tmp_path, db_url)
    always = 'maintenance_window: {cron: "* * * * *", duration: 10m}'
    try:
        placed = place_tenants(
            ctx,
            hosts,
            [("calm", 0), ("loud", 1)],
            standin_images["1"],
            extra_yaml={"calm": always},
        )
        ctx.close()
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        settings = Settings(
            database_url=db_url,
            monitor_interval_s=INTERVAL,
            monitor_timeout_s=INTERVAL,
            monitor_failure_threshold=THRESHOLD,
            discovery_interval_s=1.0,
        )
        with api_client(settings) as api:

            def states() -> dict[str, str]:
                got: dict[str, set[str]] = {}
                for m in api.get("/api/v1/monitors").json():
                    got.setdefault(m["tenant"], set()).add(m["status"])
                return {t: "/".join(sorted(v)) for t, v in got.items()}

            wait_for(
                lambda: states() == {"calm": "maintenance", "loud": "up"},
                timeout=30,
                what="calm in maintenance, loud up",
            )
            hosts[0].client.containers.get("smartcpd-calm").stop(timeout=2)
            hosts[1].client.containers.get("smartcpd-loud").stop(timeout=2)
            wait_for(
                lambda: api.get("/api/v1/incidents", params={"tenant": "loud"}).json(),
                timeout=20,
                what="loud's incident",
            )
            time.sleep(INTERVAL * (THRESHOLD + 3))
            assert api.get("/api/v1/incidents", params={"tenant": "calm"}).json() == []
            assert states()["calm"] == "maintenance"

            loud_id = next(
                m["id"]
                for m in api.get("/api/v1/monitors").json()
                if m["tenant"] == "loud" and m["kind"] == "http"
            )

            def flushed() -> dict[str, Any] | None:
                got: dict[str, Any] = api.get(
                    f"/api/v1/monitors/{loud_id}/history", params={"window": "1h"}
                ).json()
                return got if got["points"] and got["uptime"] is not None else None

            hist = wait_for(flushed, timeout=30, what="history flushed")
            assert 0 < hist["uptime"] < 1, "some checks passed, some failed"
            assert sum(p["checks"] for p in hist["points"]) > 0
            calm = api.get("/api/v1/tenants/calm/uptime").json()
            assert calm["uptime"]["1h"] is None, "maintenance is excluded from uptime"
            bad = api.get(f"/api/v1/monitors/{loud_id}/history", params={"window": "2y"})
            assert bad.status_code == 422
            assert api.get("/api/v1/monitors/nope/history").status_code == 404
    finally:
        for h in hosts:
            remove_test_containers(h.client)
