"""The web UI in headless Chromium against a real ``cpdops serve`` (no Docker needed here):
static files, login, every page renders, customer text stays text, the PostgreSQL page."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from orchestrator.db.session import session_scope
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.settings import Settings
from tests.integration.browser import launched, log_in, page_of, require_chromium, screenshot
from tests.integration.fleet import make_context
from tests.integration.server import bearer, make_token, running_server

XSS = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
FLEET = """\
version: 1
hosts: []
tenants:
  - {slug: acme, name: Acme Corp, ring: canary}
  - {slug: globex, name: "Globex <b>bold</b>", ring: general}
"""


@dataclass(frozen=True)
class Served:
    base: str
    token: str  # an operator's


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    # no engine answers here: /instances reports the host error, the grid shows the tenants
    ctx = make_context(tmp_path, db_url, local_docker_url=f"unix://{tmp_path}/no-docker.sock")
    try:
        with session_scope(ctx.factory) as s:
            apply_fleet(s, parse_fleet_text(FLEET))
    finally:
        ctx.close()
    settings = Settings(
        database_url=db_url,
        local_docker_url=f"unix://{tmp_path}/no-docker.sock",
        monitor_interval_s=1.0,
        monitor_timeout_s=1.0,
        run_scheduler=False,
    )
    with running_server(settings) as base:
        yield Served(base, make_token(settings, "operator", name="ivanov"))


def test_index_and_assets_are_served_with_a_strict_policy(served: Served) -> None:
    server = served.base
    page = httpx.get(server + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert '<script type="module" src="/ui/app.js">' in page.text
    for asset in ("app.js", "api.js", "dom.js", "fleet.js", "rollouts.js", "incidents.js"):
        resp = httpx.get(f"{server}/ui/{asset}")
        assert resp.status_code == 200, asset
        assert "javascript" in resp.headers["content-type"]
        assert "innerHTML" not in resp.text, f"{asset} must build the page with textContent"
    assert httpx.get(server + "/ui/style.css").headers["content-type"].startswith("text/css")
    # the UI does not shadow the API's JSON errors
    missing = httpx.get(server + "/api/v1/no-such-thing")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}


@pytest.mark.chromium
def test_login_pages_and_customer_text_stays_text(served: Served, tmp_path: Path) -> None:
    server, token = served.base, served.token
    chromium = require_chromium()
    with httpx.Client(base_url=server, timeout=30, headers=bearer(token)) as api:
        created = api.post(
            "/api/v1/incidents",
            json={
                "type": "consultation",
                "subject": f"Subject {XSS}",
                "description": f"Description {XSS}",
                "tenant": "acme",
                "author": "customer",
            },
        )
        assert created.status_code == 201, created.text
        number = created.json()["number"]
        sent_headers: list[str | None] = []
        with launched(chromium) as browser, page_of(browser) as page:
            page.on(
                "request",
                lambda r: (
                    sent_headers.append(r.headers.get("authorization"))
                    if "/api/v1/" in r.url
                    else None
                ),
            )
            page.goto(server + "/")
            assert page.get_by_role("heading", name="Log in to cpdops").is_visible()
            screenshot(page, "login")
            log_in(page, server, token)
            assert page.evaluate("sessionStorage.getItem('cpdops.token')") == token
            assert sent_headers and set(sent_headers) == {f"Bearer {token}"}

            grid = page.locator("#fleet-grid")
            assert grid.locator("tr[data-tenant='acme']").inner_text().startswith("acme")
            globex = grid.locator("tr[data-tenant='globex']")
            assert "Globex <b>bold</b>" in globex.inner_text(), "a name is shown as typed"
            assert globex.locator("b").count() == 0
            assert "no instance" in globex.inner_text()
            assert "no-docker.sock" in page.locator("main").inner_text(), "host error shown"
            screenshot(page, "fleet-no-engine")

            page.get_by_role("link", name="Incidents").click()
            # the browser's language (en-GB) for the ticket labels too, until RU is chosen
            row = page.locator(f"#incidents tr[data-number='{number}']")
            assert "Consultation" in row.inner_text() and "New" in row.inner_text()
            page.get_by_role("button", name="RU").click()
            row = page.locator(f"#incidents tr[data-number='{number}']")
            assert "Консультация" in row.inner_text() and "Новая" in row.inner_text()
            page.get_by_role("button", name="EN").click()
            row = page.locator(f"#incidents tr[data-number='{number}']")
            assert "Consultation" in row.inner_text() and "New" in row.inner_text()
            row.get_by_role("link", name=number).click()
            page.wait_for_selector("#timeline")
            assert page.locator("#ticket-subject").inner_text() == f"Subject {XSS}"
            assert XSS in page.locator(".description").inner_text()
            assert page.locator("main img, main script").count() == 0

            page.get_by_label("Comment (as ivanov)").fill(f"reply {XSS}")
            page.get_by_role("button", name="Add comment").click()
            page.locator("#timeline .k-comment").wait_for()
            assert f"reply {XSS}" in page.locator("#timeline").inner_text()
            page.get_by_label("New status").select_option("open")
            page.get_by_role("button", name="Change status").click()
            page.get_by_text("Saved.").wait_for()
            assert page.locator("#ticket-status-value").inner_text() == "Open"
            assert page.locator("main img, main script").count() == 0
            assert page.evaluate("window.__pwned") is None, "customer text ran as script"
            screenshot(page, "incident-xss-escaped")

            page.get_by_role("link", name="Monitors").click()
            page.wait_for_selector("#monitors")
            page.get_by_role("link", name="PostgreSQL").click()
            page.get_by_role("heading", name="PostgreSQL").wait_for()
            assert "No postgres monitors" in page.locator("main").inner_text()

            page.get_by_role("button", name="Log out").click()
            page.get_by_role("heading", name="Log in to cpdops").wait_for()
            assert page.evaluate("sessionStorage.getItem('cpdops.token')") is None
        detail = api.get(f"/api/v1/incidents/{number}").json()
        comments = [e for e in detail["events"] if e["kind"] == "comment"]
        assert [(c["author"], c["body"]) for c in comments] == [("ivanov", f"reply {XSS}")]
        assert detail["status"] == "open"


@pytest.mark.chromium
@pytest.mark.postgres
def test_postgres_page_shows_a_real_server(tmp_path: Path) -> None:
    pg_url = os.environ.get("CPDOPS_TEST_PG_URL")
    if not pg_url:
        if os.environ.get("CPDOPS_REQUIRE_POSTGRES") == "1":
            pytest.fail("CPDOPS_TEST_PG_URL is not set but CPDOPS_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL not configured (CPDOPS_TEST_PG_URL)")
    chromium = require_chromium()
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = make_context(tmp_path, db_url)
    try:
        with session_scope(ctx.factory) as s:
            apply_fleet(s, parse_fleet_text(FLEET))
    finally:
        ctx.close()
    dsn = pg_url.replace("postgresql+psycopg2://", "postgresql://")
    settings = Settings(
        database_url=db_url,
        local_docker_url=f"unix://{tmp_path}/no-docker.sock",
        monitor_interval_s=1.0,
        monitor_timeout_s=2.0,
        run_scheduler=False,
    )
    admin = make_token(settings, "admin")
    token = make_token(settings, "viewer")  # a viewer sees the page
    with (
        running_server(settings) as base,
        httpx.Client(base_url=base, timeout=30, headers=bearer(admin)) as api,
    ):
        resp = api.post(
            "/api/v1/monitors",
            json={"tenant": "acme", "name": "db", "kind": "postgres", "target": dsn},
        )
        assert resp.status_code == 201, resp.text
        with launched(chromium) as browser, page_of(browser) as page:
            log_in(page, base, token)
            page.goto(base + "/#/postgres")
            card = page.locator("section.pg[data-monitor='acme/db']")
            # shown after the first check
            card.get_by_text("primary", exact=True).wait_for(timeout=30_000)
            text = card.inner_text()
            assert "up" in text and "connections" in text
            assert "cpdops:" not in text, "the password is never shown"
            card.get_by_text("pg_* series").click()
            assert "pg_settings_max_connections" in card.inner_text()
            screenshot(page, "postgres")
            # the card's labels follow the language switch; the server's values do not
            page.get_by_role("button", name="RU").click()
            card.get_by_text("основной", exact=True).wait_for()
            # (the check's reason, "ok: 9/100 connections, primary", is the server's text)
            assert card.locator("dl.meta dt").all_inner_texts() == [
                "монитор",
                "последняя проверка",
                "подключения",
                "роль",
                "самая долгая транзакция",
                "ждут блокировок",
                "возраст до wraparound",
            ]
            heads = card.locator("table.databases th[scope='col']").all_inner_texts()
            assert heads[:3] == ["база", "размер", "сеансы"], heads
            assert card.locator("summary").first.inner_text().startswith("рядов pg_*")
            screenshot(page, "postgres-ru")
        servers = api.get("/api/v1/postgres").json()
        assert [s["monitor"] for s in servers] == ["acme/db"]
        assert servers[0]["details"]["max_connections"] > 0
        assert "cpdops:cpdops" not in servers[0]["target"]
