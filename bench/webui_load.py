"""Web UI first load with 500 tenants (SPEC §8: < 2 s), in headless Debian Chromium.

    flock -o /tmp/cpdops-docker.lock flock -o /tmp/cpdops-bench.lock \\
        .venv/bin/python bench/webui_load.py [--tenants 500] [--containers 10] [--runs 7]

Sets up a store (SQLite, a temporary directory) with ``--tenants`` tenants on one real test
Docker daemon (``tests/integration/dockerd.py``, d1) that runs ``--containers`` stand-in
instances, two monitors per tenant (http + container) with an hour of per-minute history, and
starts ``cpdops serve`` as a child process (monitors and scheduler off, so the figures are the
UI's and the API's alone). Each run opens a fresh browser context (empty cache) of an operator
whose token is already in sessionStorage, loads ``/#/fleet`` and reads the page's own mark
``cpdops:fleet-rendered``, set once the grid holds every row: navigation start → fleet grid
rendered with data. Prints the runs, the median and the slowest API call of each run as JSON.
Needs root (dockerd) and /usr/bin/chromium; stops the daemon and the server at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.harness import Children, free_port, machine, median, wait_port
from orchestrator.context import build_context
from orchestrator.db.models import MonitorMinute, MonitorRecord
from orchestrator.db.session import session_scope
from orchestrator.demo.fleet import DemoTenant, start_tenant
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.fleet.images import build_standin
from orchestrator.fleet.runtime import DockerHost
from orchestrator.settings import Settings
from tests.integration.browser import CHROMIUM_ARGS, chromium_path
from tests.integration.dockerd import DockerdFleet, remove_test_containers
from tests.integration.fleet import TEST_LABEL
from tests.integration.server import bearer, make_token

RINGS = ("canary", "early", "general", "general", "late")


def populate(db_url: str, host_name: str, host_url: str, tenants: int, containers: int) -> None:
    settings = Settings(database_url=db_url, local_docker_url=host_url)
    ctx = build_context(settings)
    try:
        handle = DockerHost(host_name, host_url)
        image = build_standin(handle.client, "1")
        slugs = [f"tenant{i:03d}" for i in range(tenants)]
        for slug in slugs[:containers]:
            port = free_port()
            start_tenant(
                handle,
                DemoTenant(slug, f"smartcpd-{slug}", port, "general"),
                image,
                extra_labels={TEST_LABEL: "1"},
            )
        lines = ["version: 1", "hosts:", f"  - name: {host_name}", f"    url: {host_url}"]
        lines.append("tenants:")
        for i, slug in enumerate(slugs):
            lines += [
                f"  - slug: {slug}",
                f"    name: Customer {i}",
                f"    ring: {RINGS[i % len(RINGS)]}",
                f"    host: {host_name}",
            ]
        now_min = int(time.time()) // 60
        with session_scope(ctx.factory) as s:
            apply_fleet(s, parse_fleet_text("\n".join(lines) + "\n"))
            for slug in slugs:
                for kind in ("http", "container"):
                    mid = f"{slug}/app@{host_name}/{kind}"
                    s.add(
                        MonitorRecord(
                            id=mid,
                            name=f"{slug}-{kind}",
                            tenant=slug,
                            host=host_name,
                            kind=kind,
                            target=f"http://127.0.0.1/{slug}/health",
                            status=1,
                            reason="ok",
                        )
                    )
                    s.add_all(
                        MonitorMinute(
                            monitor_id=mid,
                            minute=now_min - m,
                            checks=6,
                            failures=int(m == 7),
                            duration_sum=0.03,
                            duration_max=0.01,
                        )
                        for m in range(60)
                    )
    finally:
        ctx.close()


def measure(base: str, runs: int, expected_rows: int, token: str) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    chromium = chromium_path()
    if chromium is None:
        raise SystemExit("chromium is not installed")
    results = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            for _ in range(runs):
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                context.add_init_script(
                    f"sessionStorage.setItem('cpdops.token', {json.dumps(token)})"
                )
                page = context.new_page()
                page.goto(base + "/#/fleet")
                page.wait_for_selector("body[data-fleet-rendered]", timeout=60_000)
                rows = int(page.evaluate("document.body.dataset.fleetRendered"))
                if rows < expected_rows:
                    raise RuntimeError(f"the grid shows {rows} rows, expected {expected_rows}")
                timing = page.evaluate(
                    """() => ({
                      rendered_ms:
                        performance.getEntriesByName('cpdops:fleet-rendered')[0].startTime,
                      api: performance.getEntriesByType('resource')
                        .filter((e) => e.name.includes('/api/v1/'))
                        .map((e) => [new URL(e.name).pathname, Math.round(e.duration),
                                     e.transferSize]),
                    })"""
                )
                results.append({"rows": rows, **timing})
                context.close()
        finally:
            browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=500)
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    fleet = DockerdFleet(1)
    handles = fleet.start()
    try:
        d1 = handles[0]
        with tempfile.TemporaryDirectory() as tmp, Children() as children:
            db_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            populate(db_url, d1.name, d1.url, args.tenants, args.containers)
            port = free_port()
            env = {
                **os.environ,
                "CPDOPS_DATABASE_URL": db_url,
                "CPDOPS_LOCAL_DOCKER_URL": d1.url,
                "CPDOPS_RUN_MONITORS": "false",
                "CPDOPS_RUN_SCHEDULER": "false",
            }
            children.start(
                "serve",
                [
                    sys.executable,
                    "-c",
                    "from orchestrator.cli import main; main()",
                    "serve",
                    "--port",
                    str(port),
                ],
                env=env,
            )
            wait_port(port, 60)
            base = f"http://127.0.0.1:{port}"
            token = make_token(Settings(database_url=db_url), "viewer", name="bench")
            found = httpx.get(base + "/api/v1/instances", headers=bearer(token), timeout=30)
            assert len(found.json()["instances"]) == args.containers, found.text
            results = measure(base, args.runs, args.tenants, token)
            times = [r["rendered_ms"] for r in results]
            report = {
                "benchmark": "webui_load",
                "tenants": args.tenants,
                "instances": args.containers,
                "monitors": 2 * args.tenants,
                "runs_ms": [round(t) for t in times],
                "median_ms": round(median(times)),
                "max_ms": round(max(times)),
                "api_of_median_run": sorted(
                    results, key=lambda r: abs(r["rendered_ms"] - median(times))
                )[0]["api"],
                "machine": machine(),
            }
            print(json.dumps(report, indent=2))
    finally:
        for h in handles:
            remove_test_containers(h.client)
        fleet.stop()


if __name__ == "__main__":
    main()
