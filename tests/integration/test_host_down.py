"""End to end (issue #8): a Docker host that stops answering. A real `cpdops serve` (the app
under uvicorn, as `cpdops serve` runs it) watches three stand-in tenants on d2 and one on d1;
d2's dockerd is really stopped (its containers die with it): d2 becomes `unreachable`, its
tenants `unreachable`, and exactly ONE ticket opens — the host incident — with no tenant
incident and no correlated mass incident; d1's tenant is unaffected. d2 started again: the
host is `ok`, the monitors UP, the host incident `solution_provided` with the automatic
comment. A bounce shorter than the threshold (one failed check) opens nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from orchestrator.app import create_app
from orchestrator.context import AppContext, build_context
from orchestrator.db.models import ConfigItem
from orchestrator.db.session import session_scope
from orchestrator.settings import Settings
from tests.integration.dockerd import DockerdFleet, DockerdHandle, remove_test_containers
from tests.integration.fleet import free_port, make_context, place_tenants, wait_for, wait_health
from tests.integration.server import bearer, make_token

pytestmark = pytest.mark.docker

ON_D2 = ("acme", "globex", "initech")
ON_D1 = "umbrella"


@contextmanager
def serving(settings: Settings, ctx: AppContext) -> Iterator[httpx.Client]:
    """The app on ``ctx`` under uvicorn (as `cpdops serve`), and an admin client."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, ctx=ctx), host="127.0.0.1", port=free_port(), log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, name="cpdops-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "cpdops serve did not start"
        time.sleep(0.05)
    try:
        port = server.servers[0].sockets[0].getsockname()[1]
        token = make_token(settings, "admin")
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=30, headers=bearer(token)
        ) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_a_host_down_is_one_host_incident(
    tmp_path: Path,
    docker_fleet: DockerdFleet,
    docker_hosts: list[DockerdHandle],
    standin_images: dict[str, str],
) -> None:
    hosts = docker_hosts[:2]  # d1, d2
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = make_context(tmp_path, db_url)
    try:
        placed = place_tenants(
            ctx,
            hosts,
            [*((slug, 1) for slug in ON_D2), (ON_D1, 0)],
            standin_images["1"],
        )
        with session_scope(ctx.factory) as s:
            item = s.get_one(ConfigItem, "incidents")
            item.value = {**item.value, "recovery_hold": "2s"}
        ctx.close()
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        common: dict[str, Any] = {
            "database_url": db_url,
            "monitor_interval_s": 1.0,
            "monitor_timeout_s": 1.0,
            "monitor_failure_threshold": 2,
            "discovery_interval_s": 1.0,
            "recovery_check_interval_s": 1.0,
            "outbox_interval_s": 0.5,
            "host_failures": 2,
            "host_ping_timeout_s": 1.0,
        }

        # 1. A bounce: d2 frozen for one check (the test runs the checks), then thawed.
        # (a thawed dockerd is slow for a moment: the monitors get 2 s, not to time out then;
        # the pings 3 s, so that d1 answers in time on a busy machine — d2, frozen, never)
        slow = {
            **common,
            "monitor_interval_s": 2.0,
            "monitor_timeout_s": 2.0,
            "host_ping_timeout_s": 3.0,
        }
        settings = Settings(**slow, host_check_s=3600)  # checked once at start, then by hand
        ctx = build_context(settings)
        with serving(settings, ctx) as api:
            monitors_up(api)
            checker = ctx.host_checker
            assert checker is not None
            with docker_fleet.daemon_paused("d2"):
                states = checker.check_all()
                assert states["d2"].status == "ok" and states["d2"].failures == 1
                assert states["d1"].failures == 0
                assert host(api, "d2")["status"] == "ok"  # one failure: no transition
                held = [m for m in api.get("/api/v1/monitors").json() if m["host"] == "d2"]
                assert held and all(m["status"] == "maintenance" for m in held), held
                assert all("host d2 does not answer" in m["reason"] for m in held), held
            assert checker.check_all()["d2"].failures == 0
            monitors_up(api)
            assert tickets(api) == []

        # 2. d2's dockerd stopped for real: its containers die with it.
        settings = Settings(**common, host_check_s=1.0)
        ctx = build_context(settings)
        with serving(settings, ctx) as api:
            monitors_up(api)
            with docker_fleet.daemon_down("d2"):
                wait_for(
                    lambda: host(api, "d2")["status"] == "unreachable",
                    timeout=30,
                    what="d2 unreachable",
                )
                d2 = host(api, "d2")
                assert d2["status_reason"] and d2["status_since"]
                assert host(api, "d1")["status"] == "ok"
                tenants = {t["slug"]: t for t in api.get("/api/v1/tenants").json()}
                for slug in ON_D2:
                    assert tenants[slug]["status"] == "unreachable"
                    assert "host d2 unreachable" in tenants[slug]["status_reason"]
                assert tenants[ON_D1]["status"] == "ok"
                assert tenants[ON_D1]["status_reason"] is None
                (ticket,) = wait_for(
                    lambda: api.get("/api/v1/incidents").json(),
                    timeout=20,
                    what="the host incident",
                )
                assert ticket["type"] == "mass_incident"
                assert ticket["subject"] == "Host d2 unreachable: 3 tenants"
                detail = api.get(f"/api/v1/incidents/{ticket['number']}").json()
                for slug in ON_D2:
                    assert slug in detail["description"]
                assert ON_D1 not in detail["description"]
                # every monitor of d2 ends held, so nothing else can open; d1 stays UP
                wait_for(
                    lambda: all(
                        m["status"] == "maintenance"
                        for m in api.get("/api/v1/monitors").json()
                        if m["host"] == "d2"
                    ),
                    timeout=20,
                    what="d2's monitors held",
                )
                time.sleep(3)  # let any stray DOWN reach the incident engine (none may)
                assert [t["number"] for t in api.get("/api/v1/incidents").json()] == [
                    ticket["number"]
                ]
                assert all(
                    m["status"] == "up"
                    for m in api.get("/api/v1/monitors").json()
                    if m["tenant"] == ON_D1
                )
                metrics = api.get("/metrics").text
                assert 'cpdops_host_up{host="d2"} 0.0' in metrics
                assert 'cpdops_host_up{host="d1"} 1.0' in metrics
            # started again: the stand-ins come back (restart policy unless-stopped)
            wait_for(lambda: host(api, "d2")["status"] == "ok", timeout=30, what="d2 ok")
            assert all(t["status"] == "ok" for t in api.get("/api/v1/tenants").json())
            monitors_up(api, timeout=60)
            solved = wait_for(
                lambda: (
                    api.get(f"/api/v1/incidents/{ticket['number']}").json()["status"]
                    == "solution_provided"
                ),
                timeout=60,
                what="the host incident solved",
            )
            assert solved
            detail = api.get(f"/api/v1/incidents/{ticket['number']}").json()
            (solution,) = [e for e in detail["events"] if e["kind"] == "solution"]
            assert solution["author"] == "cpdops"
            assert "Хост d2 снова отвечает" in solution["body"]
            assert "Host d2 answers again" in solution["body"]
            assert "Recovery verified automatically" in solution["body"]
            assert "acme-app-http (acme)" in solution["body"]
            assert len(api.get("/api/v1/incidents").json()) == 1
            metrics = api.get("/metrics").text
            assert 'cpdops_host_up{host="d2"} 1.0' in metrics
    finally:
        for h in hosts:
            remove_test_containers(h.client)


def tickets(api: httpx.Client) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = api.get("/api/v1/incidents").json()
    return [{"number": t["number"], "type": t["type"], "subject": t["subject"]} for t in got]


def host(api: httpx.Client, name: str) -> dict[str, Any]:
    (row,) = [h for h in api.get("/api/v1/hosts").json() if h["name"] == name]
    return row


def monitors_up(api: httpx.Client, timeout: float = 30) -> None:
    def all_up() -> bool:
        mons = api.get("/api/v1/monitors").json()
        tenants = {m["tenant"] for m in mons}
        return tenants == {*ON_D2, ON_D1} and all(m["status"] == "up" for m in mons)

    wait_for(all_up, timeout=timeout, what="every monitor UP")
