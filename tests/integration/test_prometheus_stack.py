"""The monitoring stack end to end: a real Prometheus scrapes a running ``cpdops serve`` that
watches stand-in tenants on the test Docker daemons and the test PostgreSQL; every query of
every dashboard panel returns data, every alert rule evaluates, and a tenant going down fires
an alert that a real Alertmanager delivers to cpdops's intake as a ticket.

Prometheus and Alertmanager are the Debian packages (``prometheus``,
``prometheus-alertmanager``): skipped when missing, unless ``CPDOPS_REQUIRE_PROMETHEUS=1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.settings import Settings
from tests.dashboards import (
    EXPORTED,
    concrete,
    load_dashboards,
    panel_queries,
    parse_label_values,
    variable_queries,
)
from tests.integration.fleet import make_context, place_tenants, wait_for, wait_health
from tests.integration.promstack import (
    ALERTMANAGER_BIN,
    PROMETHEUS_BIN,
    Alertmanager,
    Prometheus,
    binary,
)
from tests.integration.server import bearer, make_token, running_server

pytestmark = [pytest.mark.docker, pytest.mark.alertmanager]

SECRET = "stack-test-intake-secret"
INTAKE = "/api/v1/intake/alertmanager"


@pytest.fixture
def pg_dsn() -> str:
    url = os.environ.get("CPDOPS_TEST_PG_URL")
    if not url:
        if os.environ.get("CPDOPS_REQUIRE_POSTGRES") == "1":
            pytest.fail("CPDOPS_TEST_PG_URL is not set but CPDOPS_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL not configured (CPDOPS_TEST_PG_URL)")
    return url


@pytest.fixture
def services() -> Iterator[list[Any]]:
    started: list[Any] = []
    try:
        yield started
    finally:
        for service in reversed(started):
            service.stop()


def series_of(prom: Prometheus, expr: str) -> list[Any]:
    data = prom.api("query", query=expr)
    assert data["resultType"] in ("vector", "scalar", "matrix"), data
    return list(data["result"]) if data["resultType"] != "scalar" else [data["result"]]


def test_dashboards_and_alerts_against_a_real_prometheus(
    tmp_path: Path,
    docker_hosts: list[Any],
    standin_images: dict[str, str],
    remove_test_containers_after: None,
    pg_dsn: str,
    services: list[Any],
) -> None:
    prometheus_bin = binary(PROMETHEUS_BIN, "prometheus")
    alertmanager_bin = binary(ALERTMANAGER_BIN, "prometheus-alertmanager")
    hosts = docker_hosts[:2]
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = make_context(tmp_path, db_url)
    try:
        placed = place_tenants(
            ctx, hosts, [("acme", 0), ("globex", 1), ("initech", 1)], standin_images["1"]
        )
    finally:
        ctx.close()
    for p in placed:
        wait_health(p.tenant.health_url, version="1")
    settings = Settings(
        database_url=db_url,
        monitor_interval_s=1.0,
        monitor_timeout_s=1.0,
        monitor_failure_threshold=2,
        discovery_interval_s=1.0,
        alertmanager_secret=SECRET,
    )
    with (
        running_server(settings) as base,
        httpx.Client(
            base_url=base, timeout=30, headers=bearer(make_token(settings, "admin"))
        ) as api,
    ):
        resp = api.post(
            "/api/v1/monitors",
            json={"name": "db", "tenant": "acme", "kind": "postgres", "target": pg_dsn,
                  "interval": 2.0, "timeout": 2.0},
        )  # fmt: skip
        assert resp.status_code == 201, resp.text
        am = Alertmanager(alertmanager_bin, tmp_path, f"{base}{INTAKE}", SECRET)
        services.append(am)
        prom = Prometheus(
            prometheus_bin, tmp_path, base.removeprefix("http://"), f"127.0.0.1:{am.port}"
        )
        services.append(prom)

        # A rollout, so that the rollout series exist.
        resp = api.post(
            "/api/v1/rollouts",
            json={"image": standin_images["2"], "tenants": ["acme"],
                  "gate": {"passes": 2, "deadline_s": 20, "interval_s": 0.25}},
        )  # fmt: skip
        assert resp.status_code == 202, resp.text
        rollout = resp.json()["id"]
        done = wait_for(
            lambda: (
                api.get(f"/api/v1/rollouts/{rollout}").json()["status"] in ("succeeded", "failed")
            ),
            timeout=60,
            what="the rollout to finish",
        )
        assert done and api.get(f"/api/v1/rollouts/{rollout}").json()["status"] == "succeeded"

        # globex goes down: cpdops opens its incident, Prometheus fires SmartcpdTenantDown and
        # Alertmanager brings it to the intake, where the tenant's alert joins that same ticket
        # (one ticket per outage, not one per source) as an evidence entry.
        hosts[1].client.containers.get("smartcpd-globex").stop(timeout=2)

        def tickets() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = api.get(
                "/api/v1/incidents", params={"tenant": "globex"}
            ).json()
            return rows

        def alert_evidence() -> list[dict[str, Any]]:
            found = []
            for ticket in tickets():
                shown = api.get(f"/api/v1/incidents/{ticket['number']}").json()
                found += [
                    e
                    for e in shown["events"]
                    if e["kind"] == "evidence" and e["author"] == "alertmanager"
                ]
            return found

        wait_for(tickets, timeout=30, what="cpdops's own globex incident")
        (evidence,) = wait_for(alert_evidence, timeout=60, what="the alert on globex's ticket")
        assert evidence["data"]["labels"]["alertname"] == "SmartcpdTenantDown"
        (own,) = tickets()  # the alert opened no second ticket
        assert own["source"] == "monitor", own
        assert am.notifications("failed") == 0, am.tail()

        # Solve the ticket: time to «Решение предоставлено» has an observation.
        resp = api.post(
            f"/api/v1/incidents/{own['number']}/status",
            json={"status": "solution_provided", "comment": "container restarted", "author": "op"},
        )
        assert resp.status_code == 200, resp.text

        # Every series the dashboards may use is really exported.
        scraped = {
            line.split("{")[0].split(" ")[0]
            for line in api.get("/metrics").text.splitlines()
            if line and not line.startswith("#")
        }
        assert not (EXPORTED - scraped), sorted(EXPORTED - scraped)

        # Every template variable and every panel query returns at least one series.
        queries: list[tuple[str, str]] = []
        for name, model in load_dashboards().items():
            for var_name, query in variable_queries(model):
                queries.append((f"{name} variable {var_name}", query))
            for title, ref_id, expr in panel_queries(model):
                queries.append((f"{name} {title!r} {ref_id}", expr))

        def missing() -> list[str]:
            empty = []
            for where, query in queries:
                if query.startswith("label_values("):
                    selector, label = parse_label_values(query)
                    values = prom.api(f"label/{label}/values", **{"match[]": concrete(selector)})
                    if not values:
                        empty.append(f"{where}: {query}")
                elif not series_of(prom, concrete(query)):
                    empty.append(f"{where}: {concrete(query)}")
            return empty

        empty: list[str] = []

        def all_answer() -> bool:
            nonlocal empty
            empty = missing()
            return not empty

        try:
            wait_for(
                all_answer, timeout=60, what="every dashboard query to return data", interval=1
            )
        except AssertionError:
            raise AssertionError("queries without data:\n" + "\n".join(empty)) from None

        # Every rule was evaluated, without an error.
        def evaluated() -> list[dict[str, Any]]:
            groups = prom.api("rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if all(not r["lastEvaluation"].startswith("0001") for r in rules):
                return rules
            return []

        rules = wait_for(evaluated, timeout=30, what="every rule evaluated")
        assert len(rules) >= 10
        broken = [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"]
        assert not broken, broken
        firing = {(r["name"], a["labels"].get("tenant")) for r in rules for a in r["alerts"]}
        assert ("SmartcpdTenantDown", "globex") in firing
