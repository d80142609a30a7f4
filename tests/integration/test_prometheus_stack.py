"""The monitoring stack end to end: a real Prometheus scrapes a running ``cpdops serve`` that
watches stand-in tenants on the test Docker daemons and the test PostgreSQL; every query of
every dashboard panel returns data, every alert rule evaluates, and a tenant going down fires
an alert that a real Alertmanager delivers to cpdops's intake as a ticket.

The counter panels count the rollout and the ticket of the test (``increase()``/``rate()`` over
a range that starts before them is above 0): the counters exist at 0 before their first event,
as Prometheus needs (orchestrator/metrics.py, ``at_zero``).

Prometheus and Alertmanager are the Debian packages (``prometheus``,
``prometheus-alertmanager``): skipped when missing, unless ``CPDOPS_REQUIRE_PROMETHEUS=1``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
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
    return url.replace("postgresql+psycopg2://", "postgresql://")  # a libpq URI


@pytest.fixture
def services() -> Iterator[list[Any]]:
    started: list[Any] = []
    try:
        yield started
    finally:
        for service in reversed(started):
            service.stop()


# Panels whose expression must show a number above 0 at some point after one finished rollout
# and one ticket opened by a monitor DOWN (Grafana draws them over the dashboard's range).
POSITIVE = frozenset(
    {
        "Tickets created per hour by type and source",
        "Created in the range",
        "Detection time p95 (failure → ticket)",
        "Rollouts finished in the range",
        "Rollouts finished (all time)",
        "Rollouts finished per hour",
        "Rollout duration p50 / p95",
        "Average rollout duration (all time)",
    }
)
# Panels that must show a number (0 is right: no rollout failed), never NaN or nothing.
NUMBER = frozenset({"Rolled back or failed (share, range)"})


def none_left(find: Callable[[], list[str]], *, what: str, left: str) -> None:
    """Wait (60 s) until ``find()`` finds nothing; else fail listing what it found last."""
    found: list[str] = []

    def done() -> bool:
        nonlocal found
        found = find()
        return not found

    try:
        wait_for(done, timeout=60, what=what, interval=1)
    except AssertionError:
        raise AssertionError(f"{left}:\n" + "\n".join(found)) from None


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
        start = time.time()
        prom = Prometheus(
            prometheus_bin, tmp_path, base.removeprefix("http://"), f"127.0.0.1:{am.port}"
        )
        services.append(prom)
        # Prometheus has scraped cpdops before the rollout and the ticket (their counters' 0).
        wait_for(
            lambda: series_of(prom, 'up{job="cpdops"} == 1'),
            timeout=60,
            what="Prometheus's first scrape of cpdops",
        )

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

        none_left(missing, what="every dashboard query to return data", left="queries without data")

        # The counter panels count the rollout and the ticket, over the range Grafana shows.
        counted = [
            (f"{name} {title!r} {ref_id}", title, concrete(expr))
            for name, model in load_dashboards().items()
            for title, ref_id, expr in panel_queries(model)
            if title in POSITIVE | NUMBER
        ]
        assert {t for _, t, _ in counted} == POSITIVE | NUMBER, "a panel of POSITIVE was renamed"

        def values(expr: str) -> list[float]:
            data = prom.api("query_range", query=expr, start=start, end=time.time(), step="1s")
            return [float(v) for series in data["result"] for _, v in series["values"]]

        def uncounted() -> list[str]:
            wrong = []
            for where, title, expr in counted:
                found = [v for v in values(expr) if not math.isnan(v)]
                if not found or (title in POSITIVE and max(found) <= 0):
                    wrong.append(f"{where}: {expr} -> {sorted(set(found))[-3:]}")
            return wrong

        none_left(uncounted, what="the counter panels to count", left="panels that did not count")

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
