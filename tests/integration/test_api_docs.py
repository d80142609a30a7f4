"""/docs (Swagger UI) and /redoc (ReDoc) in headless Chromium against a real ``cpdops serve``:
each renders the API's operations, and every request the page makes while it loads goes to
the server itself (127.0.0.1), none to a CDN or font service (issue 12, item 19)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from orchestrator.settings import Settings
from tests.integration.browser import launched, page_of, require_chromium, screenshot
from tests.integration.server import running_server

if TYPE_CHECKING:
    from playwright.sync_api import Page


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'cpdops.db'}",
        local_docker_url=f"unix://{tmp_path}/no-docker.sock",
        run_scheduler=False,
    )
    with running_server(settings) as url:
        yield url


def test_the_doc_pages_name_only_local_assets(base: str) -> None:
    for path in ("/docs", "/redoc"):
        page = httpx.get(base + path)
        assert page.status_code == 200, path
        assert "http://" not in page.text and "https://" not in page.text, page.text
    for asset in (
        "/docs/assets/swagger/swagger-ui-bundle.js",
        "/docs/assets/swagger/swagger-ui.css",
        "/docs/assets/redoc/redoc.standalone.js",
        "/docs/assets/fastapi/favicon.png",
    ):
        assert httpx.get(base + asset).status_code == 200, asset


def load(page: Page, url: str, rendered: str) -> None:
    page.goto(url)
    page.wait_for_selector(rendered)
    page.wait_for_load_state("networkidle")
    screenshot(page, "api" + url.rsplit("/", 1)[-1])


@pytest.mark.chromium
@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        # Swagger UI: one block per operation, the health check among them
        ("/docs", ".opblock-summary-path[data-path='/healthz']"),
        # ReDoc: the operation's heading in the document pane
        ("/redoc", "h2:has-text('Liveness and database reachability')"),
    ],
)
def test_doc_page_renders_with_no_request_beyond_localhost(
    base: str, path: str, rendered: str
) -> None:
    chromium = require_chromium()
    requested: list[str] = []
    refused: list[str] = []
    with launched(chromium) as browser, page_of(browser) as page:
        page.on("request", lambda request: requested.append(request.url))
        page.on(
            "response",
            lambda response: (
                refused.append(f"{response.status} {response.url}")
                if response.status >= 400
                else None
            ),
        )
        try:
            load(page, base + path, rendered)
        finally:
            print("requested:", *requested, "refused:", *refused, sep="\n  ")
    assert refused == []

    assert requested, "the browser made no request at all"
    # (ReDoc starts a worker from a blob: URL of the page's own origin)
    beyond = [url for url in requested if not url.removeprefix("blob:").startswith(base + "/")]
    assert beyond == [], f"{path} requested beyond the server: {beyond}"
    assert f"{base}/openapi.json" in requested
