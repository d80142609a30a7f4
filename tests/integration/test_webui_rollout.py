"""The web UI end to end in headless Chromium: a real ``cpdops serve`` with stand-in tenants
on two test Docker daemons. An operator logs in, sees the fleet, starts a rollout of a failing
image from the form, watches it fail and roll back, opens the mass incident it opened and adds
a comment — checked on the page and then in the API (the store). Screenshots of every page go
to test-artifacts/webui/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.settings import Settings
from tests.integration.browser import launched, log_in, page_of, require_chromium, screenshot
from tests.integration.dockerd import remove_test_containers
from tests.integration.fleet import make_context, place_tenants, wait_for, wait_health
from tests.integration.server import bearer, make_token, running_server

pytestmark = [pytest.mark.docker, pytest.mark.chromium]

COMMENT = "Rolled back by the orchestrator; we <b>retry</b> after the fix."


def test_operator_rolls_out_watches_and_comments_on_the_incident(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    chromium = require_chromium()
    hosts = docker_hosts[:2]
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = make_context(tmp_path, db_url)
    try:
        placed = place_tenants(ctx, hosts, [("acme", 0), ("globex", 1)], standin_images["1"])
        ctx.close()
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        settings = Settings(
            database_url=db_url,
            monitor_interval_s=1.0,
            monitor_timeout_s=1.0,
            discovery_interval_s=1.0,
        )
        token = make_token(settings, "operator", name="ivanov")
        admin = make_token(settings, "admin")
        with (
            running_server(settings) as base,
            httpx.Client(base_url=base, timeout=30, headers=bearer(admin)) as api,
            launched(chromium) as browser,
            page_of(browser) as page,
        ):
            log_in(page, base, token)
            grid = page.locator("#fleet-grid")
            for p in placed:
                row = grid.locator(f"tr[data-tenant='{p.tenant.slug}']")
                assert row.locator("td.version").inner_text() == "1"
                assert p.host in row.inner_text() and "running" in row.inner_text()
            screenshot(page, "fleet")

            page.get_by_role("link", name="Rollouts").click()
            page.get_by_text("No rollouts yet.").wait_for()
            page.get_by_label("Image", exact=True).fill(standin_images["2-fail-health"])
            page.get_by_label("Tenants").fill("acme, globex")
            page.get_by_label("Health gate passes").fill("2")
            page.get_by_label("Health gate deadline (s)").fill("5")
            # the image list offers what the hosts have
            offered = page.locator("#ro-images option").evaluate_all("os => os.map(o => o.value)")
            assert standin_images["2-fail-health"] in offered
            assert page.get_by_label("Waves", exact=True).input_value() == "1, 25%, 100%"
            page.get_by_role("button", name="Plan (dry run)").click()
            page.get_by_text("Plan: 2 instance(s) in 2 wave(s) to version 2").wait_for()
            screenshot(page, "rollouts-plan")
            page.get_by_role("button", name="Start rollout").click()
            dialog = page.locator("dialog[open]")
            assert "2 instance(s) in 2 wave(s)" in dialog.get_by_role("heading").inner_text()
            assert "Waves: 1 → 1" in dialog.inner_text()
            dialog.get_by_role("button", name="Start rollout").click()
            page.wait_for_url("**/#/rollouts/*")
            rollout_id = int(page.url.rsplit("/", 1)[1])
            # live progress until the rollout is over (the page polls the API)
            page.locator("#rollout-status").get_by_text("failed", exact=True).wait_for(
                timeout=90_000
            )
            acme = page.locator("tr[data-tenant='acme']")
            assert acme.locator("td.state").inner_text() == "failed"
            # the canary failed: globex (wave 2) was never touched
            globex = page.locator("tr[data-tenant='globex']")
            assert globex.locator("td.state").inner_text() == "pending"
            assert page.locator("#rollout-progress progress").get_attribute("value") == "0"
            assert page.get_by_role("button", name="rollback").is_disabled()
            assert "gate: failed" in acme.inner_text() and "rollback: ok" in acme.inner_text()
            assert "HTTP 500" in acme.inner_text()
            assert page.get_by_role("button", name="resume").is_disabled()
            screenshot(page, "rollout-failed")

            incident_link = page.locator("dl.meta a[href^='#/incidents/']")
            number = incident_link.inner_text()
            incident_link.click()
            page.wait_for_selector("#timeline")
            assert f"Rollout {rollout_id}" in page.locator("#ticket-subject").inner_text()
            assert "Mass incident" in page.locator("#ticket-status").inner_text()  # en-GB
            assert page.locator("#timeline .k-evidence").count() >= 1
            page.get_by_label("Comment (as ivanov)").fill(COMMENT)
            page.get_by_role("button", name="Add comment").click()
            page.locator("#timeline .k-comment").get_by_text(COMMENT).wait_for()
            screenshot(page, "incident")

            page.get_by_role("link", name="Fleet").click()
            row = page.locator("#fleet-grid tr[data-tenant='acme']")
            row.wait_for()
            assert row.locator("td.version").inner_text() == "1", "rolled back to v1"

            monitor = next(
                m["id"]
                for m in api.get("/api/v1/monitors").json()
                if m["tenant"] == "globex" and m["kind"] == "http"
            )
            history = f"/api/v1/monitors/{monitor}/history"
            wait_for(
                lambda: api.get(history, params={"window": "1h"}).json()["points"],
                timeout=30,
                what="the first minute of history flushed",
            )
            page.get_by_role("link", name="Monitors").click()
            row = page.locator(f"#monitors tr[data-monitor='{monitor}']")
            assert row.locator("td").first.inner_text() == "up"
            screenshot(page, "monitors")
            row.get_by_role("link", name=monitor).click()
            chart = page.locator("svg.chart")
            chart.wait_for()
            # a line per run of healthy minutes (a DOWN band breaks it)
            assert chart.locator("polyline.avg, circle.avg").count() >= 1, "latency drawn"
            assert "failed checks" in chart.locator("desc").text_content()
            screenshot(page, "monitor-history")

            # the store, through the API: the rollout failed, the comment is on the ticket
            rollout = api.get(f"/api/v1/rollouts/{rollout_id}").json()
            assert rollout["status"] == "failed" and rollout["incident"] == number
            assert rollout["selection"]["tenants"] == ["acme", "globex"]
            ticket = api.get(f"/api/v1/incidents/{number}").json()
            assert ticket["type"] == "mass_incident" and ticket["rollout_id"] == rollout_id
            comments = [e for e in ticket["events"] if e["kind"] == "comment"]
            assert [(c["author"], c["body"]) for c in comments] == [("ivanov", COMMENT)]
        wait_for(
            lambda: httpx.get(placed[0].tenant.health_url, timeout=2).json()["version"] == "1",
            timeout=10,
            what="acme on v1 again",
        )
    finally:
        for h in hosts:
            remove_test_containers(h.client)
