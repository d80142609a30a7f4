"""The rollout and monitor pages in headless Chromium against a real ``cpdops serve`` with no
Docker: live refresh leaves the user's input alone, the start form's defaults and fields,
confirmations, and controls that match what the API accepts. Rollouts are written straight
into the store (no engine here to run one); the API and the scheduler are real."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent

from orchestrator.db.models import Rollout, RolloutInstance, RolloutStep
from orchestrator.db.session import session_scope
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.scheduler import make_scheduler, schedule_rollout
from orchestrator.settings import Settings
from tests.integration.browser import launched, log_in, page_of, require_chromium, screenshot
from tests.integration.fleet import make_context, wait_for
from tests.integration.server import bearer, make_token, running_server

CPDOPS = str(Path(sys.executable).parent / "cpdops")
FLEET = """\
version: 1
hosts: []
tenants:
  - {slug: acme, name: Acme Corp, ring: canary}
  - {slug: globex, name: Globex, ring: general}
"""


@dataclass(frozen=True)
class Served:
    base: str
    operator: str
    admin: str
    db_url: str
    tmp_path: Path

    def add_rollout(self, status: str, states: list[str], **fields: Any) -> int:
        """A rollout row as the executor leaves it, with one instance per state."""
        ctx = make_context(self.tmp_path, self.db_url, local_docker_url=_no_docker(self.tmp_path))
        try:
            with session_scope(ctx.factory) as s:
                r = Rollout(
                    image="smartcpd-fake:2",
                    target_version="2",
                    status=status,
                    selection={},
                    options={"strategy": {"waves": ["1", "100%"]}},
                    created_by="test",
                    progress=fields.pop("progress", {}),
                    **fields,
                )
                for n, state in enumerate(states):
                    r.instances.append(
                        RolloutInstance(
                            position=n,
                            wave=min(n, 1),
                            tenant=["acme", "globex", "initech"][n % 3],
                            host="h1",
                            container_name=f"smartcpd-{n}",
                            old_image="smartcpd-fake:1",
                            old_version="1",
                            state=state,
                        )
                    )
                s.add(r)
                s.flush()
                return r.id
        finally:
            ctx.close()


def _no_docker(tmp_path: Path) -> str:
    return f"unix://{tmp_path}/no-docker.sock"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = make_context(tmp_path, db_url, local_docker_url=_no_docker(tmp_path))
    try:
        with session_scope(ctx.factory) as s:
            apply_fleet(s, parse_fleet_text(FLEET))
    finally:
        ctx.close()
    settings = Settings(
        database_url=db_url,
        local_docker_url=_no_docker(tmp_path),
        monitor_interval_s=1.0,
        monitor_timeout_s=1.0,
        run_scheduler=False,
    )
    with running_server(settings) as base:
        yield Served(
            base,
            make_token(settings, "operator", name="ivanov"),
            make_token(settings, "admin"),
            db_url,
            tmp_path,
        )


def _wait_requests(page: Any, path: str, n: int) -> None:
    """Wait for ``n`` more GET requests for ``path`` (query included): refresh events, each
    given a generous deadline (Playwright's events are pumped while it waits)."""
    for _ in range(n):
        page.wait_for_event(
            "request",
            lambda r: r.method == "GET" and r.url.endswith(path),
            timeout=60_000,
        )


# A plan as POST /api/v1/rollouts/plan answers it (no engine answers here: the page's own
# handling of it is what is tested; the docker tests plan for real).
PLAN = {
    "image": "smartcpd-fake:2",
    "target_version": "2",
    "waves": [
        [{"tenant": "acme", "host": "h1", "container": "smartcpd-acme", "version": "1"}],
        [
            {"tenant": "globex", "host": "h1", "container": "smartcpd-globex", "version": "1"},
            {"tenant": "initech", "host": "h2", "container": "smartcpd-initech", "version": "1"},
        ],
    ],
}


def _fake_plan(page: Any) -> None:
    page.route(
        "**/api/v1/rollouts/plan",
        lambda route: route.fulfill(status=200, json=PLAN),
    )


@pytest.mark.chromium
def test_live_refresh_keeps_the_start_form_and_the_plan(
    served: Served,
) -> None:
    chromium = require_chromium()
    # a scheduled rollout keeps the list live (refreshed every 3 s), as the demo's does
    served.add_rollout(
        "scheduled", ["pending"], scheduled_for=datetime.now(UTC) + timedelta(hours=1)
    )
    with launched(chromium) as browser, page_of(browser) as page:
        _fake_plan(page)
        log_in(page, served.base, served.operator)
        page.goto(served.base + "/#/rollouts")
        page.locator("#rollouts tbody tr").first.wait_for()
        typed = {
            "Image": "smartcpd-fake:2",
            "Tenants": "acme, globex",
            "Parallelism": "3",
            "Health gate passes": "2",
        }
        for label, value in typed.items():
            page.get_by_label(label, exact=True).fill(value)
        page.get_by_role("button", name="Plan (dry run)").click()
        plan_out = page.locator("#start-rollout h3")
        plan_out.wait_for()
        answer = plan_out.inner_text()
        assert answer.startswith("Plan: ")
        page.locator("#ro-tenants").focus()
        # four refreshes of the list (>= 10 s at one every 3 s), counted, not timed
        _wait_requests(page, "/api/v1/rollouts?limit=100", 4)
        for label, value in typed.items():
            assert page.get_by_label(label, exact=True).input_value() == value, label
        assert plan_out.inner_text() == answer, "the plan output is the user's"
        assert page.evaluate("document.activeElement.id") == "ro-tenants", "focus kept"
        screenshot(page, "rollouts-form-after-refresh")


@pytest.mark.chromium
def test_live_refresh_keeps_the_monitor_filter(served: Served) -> None:
    chromium = require_chromium()
    with httpx.Client(base_url=served.base, timeout=30, headers=bearer(served.admin)) as api:
        created = api.post(
            "/api/v1/monitors",
            json={
                "tenant": "acme",
                "name": "web",
                "kind": "http",
                "target": "http://127.0.0.1:9/health",
            },
        )
        assert created.status_code == 201, created.text
    with launched(chromium) as browser, page_of(browser) as page:
        log_in(page, served.base, served.operator)
        page.get_by_role("link", name="Monitors").click()
        row = page.locator("#monitors tr[data-monitor='acme/web']")
        row.wait_for()
        page.get_by_label("Filter").fill("globex")
        assert row.is_hidden()
        _wait_requests(page, "/api/v1/monitors", 1)  # one refresh, 15 s
        page.wait_for_function(
            "document.querySelector(\"#monitors tr[data-monitor='acme/web']\") !== null"
        )
        assert page.get_by_label("Filter").input_value() == "globex"
        assert page.locator("#monitors tr[data-monitor='acme/web']").is_hidden(), (
            "the filter applies to the refreshed rows"
        )


@pytest.mark.chromium
def test_start_form_defaults_to_a_canary_first_plan_and_has_the_cli_options(
    served: Served,
) -> None:
    chromium = require_chromium()
    rid = served.add_rollout("succeeded", ["updated"])
    with launched(chromium) as browser, page_of(browser) as page:
        log_in(page, served.base, served.operator)
        page.goto(served.base + "/#/rollouts")
        page.locator("#rollouts tbody tr").first.wait_for()
        assert page.get_by_label("Waves", exact=True).input_value() == "1, 25%, 100%"
        for label in (
            "Per-host parallelism",
            "Max unavailable",
            "Bake after each wave (s)",
            "Order",
            "Migration command",
            "Container labels",
            "no backup (skip pg_dump of tenant databases)",
        ):
            assert page.get_by_label(label, exact=True).count() == 1, label
        # the image field offers the images the hosts have (none answer here: an empty list)
        assert page.locator("#ro-image").get_attribute("list") == "ro-images"
        # Start plans, then asks with the plan's numbers; only a confirmation sends it
        _fake_plan(page)
        posted: list[Any] = []

        def create(route: Any) -> None:
            posted.append(route.request.post_data_json)
            route.fulfill(status=202, json={"id": rid})

        page.route("**/api/v1/rollouts", create)
        page.get_by_label("Image", exact=True).fill("smartcpd-fake:2")
        page.get_by_label("Per-host parallelism", exact=True).fill("2")
        page.get_by_label("Max unavailable", exact=True).fill("1")
        page.get_by_label("Bake after each wave (s)", exact=True).fill("30")
        page.get_by_label("Order", exact=True).select_option("start-first")
        page.get_by_label("Migration command", exact=True).fill("/app/migrate --apply")
        page.get_by_label("Container labels", exact=True).fill("dc=msk")
        page.get_by_label("no backup (skip pg_dump of tenant databases)").check()
        page.get_by_role("button", name="Start rollout").click()
        dialog = page.locator("dialog[open]")
        dialog.wait_for()
        title = dialog.get_by_role("heading").inner_text()
        assert title == "Start a rollout of 3 instance(s) in 2 wave(s)?"
        assert "Waves: 1 → 2" in dialog.inner_text()
        screenshot(page, "start-confirm")
        dialog.get_by_role("button", name="Cancel").click()
        page.get_by_text("Not started.").wait_for()
        assert posted == [], "nothing is started without the confirmation"
        page.get_by_role("button", name="Start rollout").click()
        page.locator("dialog[open]").get_by_role("button", name="Start rollout").click()
        page.wait_for_url(f"**/#/rollouts/{rid}")
        assert len(posted) == 1
        body = posted[0]
        assert body["strategy"]["waves"] == ["1", "25%", "100%"]
        assert body["strategy"]["per_host_parallelism"] == 2
        assert body["strategy"]["max_unavailable"] == 1
        assert body["strategy"]["bake_s"] == 30 and body["strategy"]["order"] == "start-first"
        assert body["migrate"] == ["/app/migrate", "--apply"]
        assert body["labels"] == {"dc": "msk"} and body["backup"] is False


@pytest.mark.chromium
def test_controls_follow_what_the_api_accepts_and_ask_first(served: Served) -> None:
    chromium = require_chromium()
    failed = served.add_rollout(
        "failed",
        ["failed", "reverted", "pending"],
        progress={"reason": "every updated instance is back on its previous version"},
        error="1 failed instance(s), budget 0",
    )
    aborted = served.add_rollout("aborted", ["pending", "pending"])
    succeeded = served.add_rollout("succeeded", ["updated", "updated"])
    paused = served.add_rollout("paused", ["updated", "pending"])
    gating = served.add_rollout("running", ["updating"])
    ctx = make_context(served.tmp_path, served.db_url, local_docker_url=_no_docker(served.tmp_path))
    try:
        with session_scope(ctx.factory) as s:
            inst = s.query(RolloutInstance).filter_by(rollout_id=gating).one()
            progress = {"passes": 1, "needed": 3, "attempts": 4, "last": "HTTP 500"}
            s.add(
                RolloutStep(
                    instance_id=inst.id,
                    step="gate",
                    state="started",
                    detail={"progress": {**progress, "status_code": 500, "left_s": 42.0}},
                )
            )
    finally:
        ctx.close()
    with httpx.Client(base_url=served.base, timeout=30, headers=bearer(served.operator)) as api:
        # the API: what it refuses is not in `actions`
        for rid in (failed, aborted):
            assert "rollback" not in api.get(f"/api/v1/rollouts/{rid}").json()["actions"]
            refused = api.post(f"/api/v1/rollouts/{rid}/rollback")
            assert refused.status_code == 409, refused.text
        assert "nothing to roll back" in api.post(f"/api/v1/rollouts/{aborted}/rollback").text
        assert api.get(f"/api/v1/rollouts/{aborted}").json()["status"] == "aborted"
        assert "rollback" in api.get(f"/api/v1/rollouts/{succeeded}").json()["actions"]

        with launched(chromium) as browser, page_of(browser) as page:
            log_in(page, served.base, served.operator)
            page.goto(f"{served.base}/#/rollouts/{failed}")
            page.locator("#rollout-status").get_by_text("failed").wait_for()
            assert page.get_by_role("button", name="rollback").is_disabled()
            bar = page.locator("#rollout-progress progress")
            assert bar.get_attribute("value") == "0", "failures are not progress"
            text = page.locator("#rollout-progress").inner_text()
            assert "0 / 3 updated" in text and "1 failed" in text and "1 reverted" in text
            assert "back on its previous version" in page.locator("#rollout-reason").inner_text()
            screenshot(page, "rollout-failed-progress")

            page.goto(f"{served.base}/#/rollouts/{aborted}")
            page.locator("#rollout-status").get_by_text("aborted").wait_for()
            assert page.get_by_role("button", name="rollback").is_disabled()

            page.goto(f"{served.base}/#/rollouts/{gating}")
            gate = page.locator("tr[data-tenant='acme'] .gate-progress")
            gate.wait_for()
            assert gate.inner_text().strip() == "(gate 1/3 passes · last HTTP 500 · 42 s left)"

            # rollback asks first, with the numbers; Cancel sends nothing
            page.goto(f"{served.base}/#/rollouts/{succeeded}")
            page.locator("#rollout-status").get_by_text("succeeded").wait_for()
            page.get_by_role("button", name="rollback").click()
            dialog = page.locator("dialog[open]")
            assert "2 updated instance(s) of 2" in dialog.inner_text()
            screenshot(page, "rollback-confirm")
            dialog.get_by_role("button", name="Cancel").click()
            assert page.locator("dialog[open]").count() == 0
            assert api.get(f"/api/v1/rollouts/{succeeded}").json()["status"] == "succeeded"
            page.get_by_role("button", name="rollback").click()
            page.locator("dialog[open]").get_by_role("button", name="Roll back").click()
            page.locator("#rollout-status").get_by_text("rolling_back").wait_for()
            assert api.get(f"/api/v1/rollouts/{succeeded}").json()["control"] == "rollback"

            page.goto(f"{served.base}/#/rollouts/{paused}")
            page.locator("#rollout-status").get_by_text("paused").wait_for()
            page.get_by_role("button", name="abort").click()
            dialog = page.locator("dialog[open]")
            assert "1 of 2 instance(s) updated so far" in dialog.inner_text()
            dialog.get_by_role("button", name="Abort rollout").click()
            wait_for(
                lambda: api.get(f"/api/v1/rollouts/{paused}").json()["control"] == "abort",
                timeout=30,
                what="the abort requested",
            )


def test_a_start_time_in_the_past_is_refused(served: Served) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    body = {"image": "smartcpd-fake:2", "tenants": ["acme"], "schedule": {"at": past}}
    with httpx.Client(base_url=served.base, timeout=30, headers=bearer(served.operator)) as api:
        for path in ("/api/v1/rollouts", "/api/v1/rollouts/plan"):
            resp = api.post(path, json=body)
            assert resp.status_code == 422, resp.text
            (error,) = resp.json()["detail"]
            assert error["loc"][-2:] == ["schedule", "at"] and "in the past" in error["msg"]
        assert api.get("/api/v1/rollouts").json() == [], "nothing stored"
    env = {**os.environ, "CPDOPS_DATABASE_URL": served.db_url}
    env.pop("CPDOPS_URL", None)
    for extra in ([], ["--url", served.base, "--token", served.operator]):
        res = subprocess.run(
            [CPDOPS, *extra, "rollout", "start", "--image", "smartcpd-fake:2", "--at", past],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert res.returncode == 2, (extra, res.stdout, res.stderr)
        assert "in the past" in res.stderr, res.stderr


def test_a_missed_scheduled_start_ends_the_rollout_and_frees_its_instances(
    tmp_path: Path,
) -> None:
    """Past the misfire grace (24 h) APScheduler drops the job: the rollout must not stay
    ``scheduled`` holding its instances."""
    ctx = make_context(tmp_path, local_docker_url=_no_docker(tmp_path))
    served = Served("", "", "", str(ctx.settings.database_url), tmp_path)
    long_ago = datetime.now(UTC) - timedelta(days=3)
    rid = served.add_rollout("scheduled", ["pending"], scheduled_for=long_ago)
    scheduler = make_scheduler(ctx, with_loops=False)
    missed: list[JobExecutionEvent] = []
    scheduler.add_listener(missed.append, EVENT_JOB_MISSED)
    scheduler.start()
    try:
        schedule_rollout(scheduler, rid, long_ago)
        wait_for(lambda: missed, timeout=30, what="the job missed")

        def status() -> tuple[str, str | None]:
            with ctx.factory() as s:
                r = s.get_one(Rollout, rid)
                return r.status, r.error

        wait_for(lambda: status()[0] != "scheduled", timeout=30, what="the rollout ended")
        final, error = status()
        assert final == "aborted" and error is not None and "missed" in error
    finally:
        scheduler.shutdown(wait=False)
        ctx.close()


def test_budget_help_shows_a_plain_percent() -> None:
    for command in ("start", "plan"):
        res = subprocess.run(
            [CPDOPS, "rollout", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert res.returncode == 0, res.stderr
        text = " ".join(res.stdout.split())  # as wrapped to the terminal
        assert "N or N% (default 0)" in text and "%%" not in text, res.stdout
