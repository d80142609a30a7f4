"""The operator's surface of the web UI in headless Chromium against a real ``cpdops serve`` (no
Docker): ticket evidence as facts and log text, the ticket's priority, owner and status
controls with their results beside them, status changes as «from → to», one language and one
time zone for every page, the fleet page refreshing under a kept filter, hosts counted, a
latency chart over the chosen window with DOWN bands and a heartbeat bar, no nav before
login, the server's reason on a 403, and no page wider than a 390 px phone."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import update

from orchestrator.context import build_context
from orchestrator.db.models import (
    MonitorMinute,
    MonitorRecord,
    Rollout,
    RolloutInstance,
    RolloutStep,
    Tenant,
)
from orchestrator.db.session import session_scope
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.incidents.tickets import open_or_join
from orchestrator.settings import Settings
from tests.integration.browser import launched, log_in, page_of, require_chromium, screenshot
from tests.integration.server import bearer, make_token, running_server

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.chromium

FLEET = """\
version: 1
hosts: []
tenants:
  - {slug: acme, name: Acme Corp, ring: canary}
  - {slug: globex, name: Globex, ring: general}
"""
DESCRIPTION = "Monitor acme/http is DOWN: connection refused"
LOGS = "10:00:01 starting SmartCPD\n10:00:02 Traceback: boom\n10:00:02 exit 1"
EVIDENCE = {
    "host": "local",
    "containers": [
        {
            "name": "acme-smartcpd",
            "status": "exited",
            "exit_code": 1,
            "oom_killed": False,
            "started_at": "2026-12-07T10:00:00Z",
            "finished_at": "0001-01-01T00:00:00Z",
            "logs": LOGS,
        }
    ],
}
MONITOR = "acme/http"
DOWN_MINUTES = (10, 11, 12)  # minutes ago whose checks failed
ZONE = "Asia/Yekaterinburg"  # UTC+05:00 all year


@dataclass(frozen=True)
class Served:
    base: str
    operator: str
    viewer: str
    settings: Settings
    number: str


def _seed(settings: Settings) -> str:
    """Tenants (acme placed on the implicit host ``local``), a monitor with an hour of history
    (three failing minutes whose checks took 1 s each), a DOWN ticket with container evidence."""
    ctx = build_context(settings)
    try:
        with session_scope(ctx.factory) as s:
            apply_fleet(s, parse_fleet_text(FLEET))
            s.execute(update(Tenant).where(Tenant.slug == "acme").values(host_name="local"))
            s.add(
                MonitorRecord(
                    id=MONITOR,
                    name="http",
                    tenant="acme",
                    host="local",
                    kind="http",
                    target="http://127.0.0.1:9/health",
                    status=1,
                    reason="HTTP 200",
                )
            )
            now_min = int(time.time() // 60)
            for ago in range(30):
                down = ago in DOWN_MINUTES
                s.add(
                    MonitorMinute(
                        monitor_id=MONITOR,
                        minute=now_min - ago,
                        checks=4,
                        failures=4 if down else 0,
                        maintenance=0,
                        duration_sum=4.0 if down else 0.08,
                        duration_max=1.0 if down else 0.03,
                    )
                )
        return open_down_ticket(settings)
    finally:
        ctx.close()


def open_down_ticket(settings: Settings) -> str:
    """acme's DOWN ticket with container evidence (an exited container, Docker's zero
    ``FinishedAt``, three log lines), as the incident engine opens it; its number."""
    ctx = build_context(settings)
    try:
        with session_scope(ctx.factory) as s:
            incident, _ = open_or_join(
                s,
                system_id="01",
                open_key="test:acme",
                type="incident",
                subject="acme is DOWN",
                description=DESCRIPTION,
                author="monitor",
                source="monitor",
                tenant="acme",
                evidence=EVIDENCE,
            )
            return incident.number
    finally:
        ctx.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'cpdops.db'}",
        local_docker_url=f"unix://{tmp_path}/no-docker.sock",
        run_scheduler=False,
    )
    number = _seed(settings)
    with running_server(settings) as base:
        yield Served(
            base,
            make_token(settings, "operator", name="ivanov"),
            make_token(settings, "viewer", name="guest"),
            settings,
            number,
        )


def _local(iso: str) -> str:
    """An API time as the UI must show it in ZONE (UTC+05:00)."""
    at = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (
        at.replace(tzinfo=None) - (at.utcoffset() or timedelta()) + timedelta(hours=5)
    ).strftime("%Y-%m-%d %H:%M:%S")


def _open_ticket(page: Page, served: Served) -> None:
    page.goto(f"{served.base}/#/incidents/{served.number}")
    page.wait_for_selector("#timeline")


def test_the_login_page_shows_no_nav(served: Served) -> None:
    chromium = require_chromium()
    with launched(chromium) as browser, page_of(browser) as page:
        page.goto(served.base + "/")
        page.get_by_role("heading", name="Log in to cpdops").wait_for()
        assert page.locator("#nav").is_hidden(), "no nav links before logging in"
        assert page.get_by_role("link", name="Incidents").count() == 0
        screenshot(page, "login-no-nav")
        log_in(page, served.base, served.operator)
        assert page.locator("#nav").is_visible()


def test_evidence_is_facts_and_log_text(served: Served) -> None:
    chromium = require_chromium()
    with launched(chromium) as browser, page_of(browser) as page:
        log_in(page, served.base, served.operator)
        _open_ticket(page, served)
        main = page.locator("main")
        ev = page.locator("#timeline .k-evidence")
        ev.locator("table.facts").first.wait_for()
        cells = {
            r.locator("th").inner_text(): r.locator("td").inner_text()
            for r in ev.locator("table.facts tr").all()
        }
        assert cells["host"] == "local" and cells["status"] == "exited"
        assert cells["exit_code"] == "1" and cells["oom_killed"] == "no"
        assert cells["finished_at"] == "—", "Docker's zero time is no time"
        assert cells["started_at"] == "2026-12-07 10:00:00"
        assert "containers 1: acme-smartcpd" in ev.inner_text()
        logs = ev.locator("pre.logs")
        assert logs.evaluate("e => e.textContent") == LOGS, "log lines with real line breaks"
        assert page.locator("pre.json").count() == 0, "no raw JSON"
        assert "0001-01-01" not in main.inner_text() and "\\n" not in main.inner_text()
        screenshot(page, "incident-evidence")


def test_priority_owner_and_status_controls(served: Served) -> None:
    chromium = require_chromium()
    with launched(chromium) as browser, page_of(browser, http_errors=True) as page:
        log_in(page, served.base, served.operator)
        _open_ticket(page, served)
        # the description once: not again as the timeline's "created" entry
        assert page.locator("main").inner_text().count(DESCRIPTION) == 1
        # priority and owner; each form says "Saved." beside its own button
        page.get_by_label("New priority").select_option("high")
        page.get_by_role("button", name="Set priority").click()
        page.locator("#priority-form-msg").get_by_text("Saved.").wait_for()
        assert page.locator("#ticket-priority-value").inner_text() == "High"
        assert "Normal → High" in page.locator("#timeline .k-priority").inner_text()
        page.get_by_label("Owner (empty: nobody)").fill("petrov")
        page.get_by_role("button", name="Set owner").click()
        page.locator("#owner-form-msg").get_by_text("Saved.").wait_for()
        assert page.locator("#ticket-owner-value").inner_text() == "petrov"
        assert "nobody → petrov" in page.locator("#timeline .k-owner").inner_text()
        # an error shows beside the action that caused it, not at the top of the page
        page.get_by_label("New status").select_option("solution_provided")
        page.get_by_role("button", name="Change status").click()
        error = page.locator("#status-form .msg.error")
        error.wait_for()
        assert "comment" in error.inner_text()
        assert page.locator("#flash").is_hidden()
        page.get_by_label(re.compile("^Comment \\(required")).fill("Restarted the trunk.")
        page.get_by_role("button", name="Change status").click()
        page.locator("#status-form-msg").get_by_text("Saved.").wait_for()
        change = page.locator("#timeline .k-solution")
        assert "New → Solution provided" in change.inner_text()
        assert "Restarted the trunk." in change.inner_text()
        assert page.locator("#timeline pre.json, #timeline details").count() == 0
        screenshot(page, "incident-controls")
    detail = _api(served, f"/api/v1/incidents/{served.number}")
    assert detail["owner"] == "petrov" and detail["priority"] == "high"
    assert detail["status"] == "solution_provided"
    owner_events = [e for e in detail["events"] if e["kind"] == "owner"]
    assert [(e["author"], e["data"]) for e in owner_events] == [
        ("ivanov", {"from": None, "to": "petrov"})
    ]


def test_one_language_and_one_time_zone(served: Served) -> None:
    chromium = require_chromium()
    solved = httpx.post(
        f"{served.base}/api/v1/incidents/{served.number}/status",
        json={"status": "solution_provided", "comment": "Restarted.", "author": "ivanov"},
        headers=bearer(served.operator),
    )
    assert solved.status_code == 200, solved.text
    ticket = solved.json()
    with launched(chromium) as browser, page_of(browser, timezone_id=ZONE) as page:
        log_in(page, served.base, served.operator)
        assert page.locator("#zone").inner_text() == f"Times in {ZONE} (UTC+05:00)"
        # English (the browser's language) for the page text and the ticket labels alike
        page.get_by_role("link", name="Incidents").click()
        row = page.locator(f"#incidents tr[data-number='{served.number}']")
        row.wait_for()
        assert page.get_by_role("heading", name="Incidents").is_visible()
        assert "Incident" in row.inner_text() and "Solution provided" in row.inner_text()
        assert "Решение" not in row.inner_text()
        # every time in the user's zone, none in UTC
        assert _local(ticket["updated_at"]) in row.inner_text() and "UTC" not in row.inner_text()
        _open_ticket(page, served)
        opened = page.locator("#ticket-status").inner_text()
        assert _local(ticket["created_at"]) in opened and "UTC" not in opened
        started = page.locator("#timeline .k-evidence tr", has_text="started_at")
        assert started.locator("td").inner_text() == "2026-12-07 15:00:00"
        assert "UTC" not in page.locator("main").inner_text()
        # one switch for every label, remembered across a reload
        page.get_by_role("button", name="RU").click()
        page.get_by_role("heading", name="История").wait_for()
        change = page.locator("#timeline .k-solution").inner_text()
        assert "Новая → Решение предоставлено" in change
        assert page.locator("#nav a[data-page='incidents']").inner_text() == "Инциденты"
        assert page.locator("#ticket-status-value").inner_text() == "Решение предоставлено"
        assert page.get_by_role("heading", name="Описание").is_visible()
        page.reload()
        page.get_by_role("heading", name="История").wait_for()
        assert page.locator("#nav a[data-page='fleet']").inner_text() == "Парк"
        assert page.locator("#zone").inner_text() == f"Время {ZONE} (UTC+05:00)"
        screenshot(page, "incident-ru")
        page.get_by_role("button", name="EN").click()
        page.get_by_role("heading", name="Timeline").wait_for()


def _paused_rollout(settings: Settings) -> int:
    """A paused two-wave rollout: acme updated in wave 1, globex waiting in wave 2; its id."""
    ctx = build_context(settings)
    try:
        with session_scope(ctx.factory) as s:
            rollout = Rollout(
                image="smartcpd-fake:2", target_version="2", status="paused", created_by="ivanov"
            )
            s.add(rollout)
            for position, (tenant, wave, state) in enumerate(
                [("acme", 0, "updated"), ("globex", 1, "pending")], start=1
            ):
                instance = RolloutInstance(
                    position=position,
                    tenant=tenant,
                    host="local",
                    container_name=f"{tenant}-smartcpd",
                    old_version="1",
                    state=state,
                    wave=wave,
                )
                rollout.instances.append(instance)
                if state == "updated":
                    instance.steps.append(RolloutStep(step="gate", state="done"))
            s.flush()
            return rollout.id
    finally:
        ctx.close()


# The labels of the rollouts, PostgreSQL and monitors pages in each language (data values —
# tenants, images, states — are the same in both).
ROLLOUTS_RU = ["Выкатки", "образ", "версия", "завершена", "Запустить выкатку", "Образ", "Клиенты"]
ROLLOUTS_RU += ["Волны", "Бюджет отказов", "При превышении бюджета", "План (без запуска)"]
ROLLOUTS_EN = ["Rollouts", "image", "finished", "Start a rollout", "Tenants", "Waves"]
ROLLOUTS_EN += ["Failure budget", "When over budget", "Plan (dry run)", "Start rollout"]
ROLLOUT_RU = ["Выкатка", "обновлено 1 / 2", "Волна 1", "Волна 2", "шаги", "продолжить"]
ROLLOUT_RU += ["прервать", "откатить", "ход", "← все выкатки"]
ROLLOUT_EN = ["Rollout", "1 / 2 updated", "Wave 1", "Wave 2", "steps", "resume", "abort"]
ROLLOUT_EN += ["progress", "← all rollouts"]
MONITORS_RU = ["Мониторы", "Фильтр", "монитор", "вид", "цель", "причина", "доступность 24h"]
MONITORS_EN = ["Monitors", "Filter", "monitor", "kind", "target", "reason", "uptime 24h"]
PLAN = {"waves": [[{"tenant": "acme", "host": "local", "version": "1"}]], "target_version": "2"}


def _shows(page: Page, present: list[str], absent: list[str]) -> None:
    text = page.locator("main").inner_text()
    missing = [x for x in present if x not in text]
    left = [x for x in absent if re.search(rf"(?<![\w-]){re.escape(x)}(?![\w-])", text)]
    assert not missing and not left, f"missing {missing}, still there {left}:\n{text}"


def test_rollouts_postgres_and_monitors_pages_follow_the_language_switch(
    served: Served,
) -> None:
    chromium = require_chromium()
    rollout = _paused_rollout(served.settings)
    with launched(chromium) as browser, page_of(browser, http_errors=True) as page:
        # the start form's plan needs the hosts' engines (none here): answered as they would
        page.route(
            "**/api/v1/rollouts/plan",
            lambda route: route.fulfill(json=PLAN),
        )
        log_in(page, served.base, served.operator)
        page.get_by_role("button", name="RU").click()
        page.locator("#nav a[data-page='fleet']", has_text="Парк").wait_for()
        page.goto(f"{served.base}/#/rollouts")
        page.locator(f"#rollouts tr[data-rollout='{rollout}']").wait_for()
        _shows(page, ROLLOUTS_RU, ROLLOUTS_EN)
        row = page.locator(f"#rollouts tr[data-rollout='{rollout}']").inner_text()
        assert "smartcpd-fake:2" in row and "paused" in row, "data values stay as they are"
        assert page.get_by_label("Параллельность", exact=True).input_value() == "1"
        assert page.get_by_label("Образ").get_attribute("placeholder") == "smartcpd-fake:2"
        assert page.get_by_label("Клиенты").get_attribute("placeholder") == "все"
        page.get_by_label("Образ").fill("smartcpd-fake:2")
        page.locator("#start-rollout button[type='submit']").click()
        dialog = page.locator("dialog.confirm")
        dialog.wait_for()
        asked = dialog.inner_text()
        assert "Запустить выкатку экземпляров: 1, волн: 1?" in asked, asked
        assert "при отказах: откатить" in asked and "сейчас" in asked
        assert "Start a rollout of" not in asked and "Cancel" not in asked
        dialog.get_by_role("button", name="Отмена").click()
        page.get_by_text("Не запущена.").wait_for()
        assert "План: экземпляров 1, волн 1, до версии 2" in page.locator("#plan-out").inner_text()
        screenshot(page, "rollouts-ru")

        page.goto(f"{served.base}/#/rollouts/{rollout}")
        page.locator("#rollout-progress").wait_for()
        _shows(page, ROLLOUT_RU, ROLLOUT_EN)
        assert "gate: done" in page.locator("main").inner_text(), "steps are data"

        page.goto(f"{served.base}/#/postgres")
        page.get_by_text("Нет мониторов PostgreSQL").wait_for()
        assert "No postgres monitors" not in page.locator("main").inner_text()

        page.goto(f"{served.base}/#/monitors")
        page.locator("#monitors tr[data-monitor='acme/http']").wait_for()
        _shows(page, MONITORS_RU, MONITORS_EN)
        filter_box = page.get_by_label("Фильтр")
        assert filter_box.get_attribute("placeholder") == "клиент, вид, статус"

        # and back: English everywhere, Russian nowhere
        page.get_by_role("button", name="EN").click()
        page.get_by_role("heading", name="Monitors").wait_for()
        _shows(page, MONITORS_EN, MONITORS_RU)
        page.goto(f"{served.base}/#/rollouts/{rollout}")
        page.locator("#rollout-progress").wait_for()
        _shows(page, ROLLOUT_EN, ROLLOUT_RU)
        page.goto(f"{served.base}/#/rollouts")
        page.locator(f"#rollouts tr[data-rollout='{rollout}']").wait_for()
        _shows(page, ROLLOUTS_EN, ROLLOUTS_RU)
        page.goto(f"{served.base}/#/postgres")
        page.get_by_text("No postgres monitors").wait_for()


def test_a_viewer_sees_the_servers_reason_for_a_403(served: Served) -> None:
    chromium = require_chromium()
    with launched(chromium) as browser, page_of(browser, http_errors=True) as page:
        log_in(page, served.base, served.viewer, name="guest")
        page.goto(f"{served.base}/#/incidents/{served.number}")
        page.get_by_label("Comment (as guest)").fill("hello")
        page.get_by_role("button", name="Add comment").click()
        error = page.locator("#comment-form .msg.error")
        error.wait_for()
        assert "403" in error.inner_text()
        assert "needs role operator" in error.inner_text(), error.inner_text()
        assert "has role viewer" in error.inner_text()


def _api(served: Served, path: str) -> Any:
    return httpx.get(served.base + path, headers=bearer(served.operator), timeout=30).json()


def test_fleet_refreshes_under_a_kept_filter_and_counts_its_hosts(served: Served) -> None:
    chromium = require_chromium()
    with launched(chromium) as browser, page_of(browser) as page:
        log_in(page, served.base, served.operator)
        summary = page.locator("#fleet-summary")
        assert "1 hosts" in summary.inner_text(), "host local runs acme: it is a host"
        assert page.locator("#fleet-hosts tr[data-host='local']").count() == 1
        page.get_by_label("Filter").fill("initech")
        assert page.locator("#fleet-grid tbody tr:visible").count() == 0
        ctx = build_context(served.settings)
        try:
            with session_scope(ctx.factory) as s:
                s.add(Tenant(slug="initech", name="Initech", ring="general", host_name="local"))
        finally:
            ctx.close()
        # the page refreshes itself; the filter keeps its text and applies to the new rows
        page.locator("#fleet-grid tr[data-tenant='initech']").wait_for(timeout=60_000)
        assert page.get_by_label("Filter").input_value() == "initech"
        assert page.locator("#fleet-grid tbody tr:visible").count() == 1
        assert "3 tenants" in summary.inner_text()
        screenshot(page, "fleet-refreshed")


def test_latency_chart_spans_the_window_with_down_bands_and_a_heartbeat(served: Served) -> None:
    chromium = require_chromium()
    with launched(chromium) as browser, page_of(browser) as page:
        log_in(page, served.base, served.operator)
        page.goto(f"{served.base}/#/monitors/acme%2Fhttp?window=1h")
        chart = page.locator("svg.chart")
        chart.wait_for()
        # one DOWN band per failing minute; their 1 s checks are no latency points
        assert chart.locator("rect.down").count() == len(DOWN_MINUTES)
        axis = chart.locator("text.axis").evaluate_all("els => els.map((e) => e.textContent)")
        assert not any(t.endswith("ms") and float(t.split()[0]) >= 100 for t in axis), axis
        lines = chart.locator("polyline.avg")
        assert lines.count() == 2, "the line breaks at the DOWN band"
        # the x axis is the last hour: 30 minutes of data start near the middle
        first_x = float(lines.nth(0).get_attribute("points").split()[0].split(",")[0])  # type: ignore[union-attr]
        pad_l, width = 64, 760 - 64 - 12
        assert pad_l + 0.4 * width < first_x < pad_l + 0.6 * width, first_x
        # a heartbeat bar: the last 60 minutes, a cell each, red where checks failed
        beats = page.locator("#heartbeat li")
        assert beats.count() == 60
        assert page.locator("#heartbeat li.down").count() == len(DOWN_MINUTES)
        assert page.locator("#heartbeat li.up").count() == 30 - len(DOWN_MINUTES)
        screenshot(page, "monitor-chart")


def test_no_page_is_wider_than_a_phone(served: Served) -> None:
    chromium = require_chromium()
    phone = {"viewport": {"width": 390, "height": 844}}
    pages = [
        ("fleet", "#fleet-grid"),
        ("incidents", "#incidents"),
        (f"incidents/{served.number}", "#timeline"),
        ("monitors", "#monitors"),
        ("monitors/acme%2Fhttp", "svg.chart"),
    ]
    with launched(chromium) as browser, page_of(browser, **phone) as page:
        log_in(page, served.base, served.operator)
        for route, ready in pages:
            page.goto(f"{served.base}/#/{route}")
            page.locator(ready).wait_for()
            width = page.evaluate("document.documentElement.scrollWidth")
            screenshot(page, "phone-" + route.split("/")[0] + ("-one" if "/" in route else ""))
            assert width <= 390, f"#/{route} is {width} px wide at 390 px"
