"""Headless Debian Chromium driven by Playwright, for the web UI tests.

Playwright's own browser downloads are not used (no network): it launches the system binary
``/usr/bin/chromium`` (``CPDOPS_CHROMIUM`` overrides it). Without it the tests are skipped,
unless ``CPDOPS_REQUIRE_CHROMIUM=1`` (scripts/test.sh), which makes that a failure.
Screenshots go to ``test-artifacts/webui/`` (CI keeps ``test-artifacts/``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "webui"
# Chromium as root needs --no-sandbox; /dev/shm is small in containers.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"]


def chromium_path() -> str | None:
    explicit = os.environ.get("CPDOPS_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )


def require_chromium() -> str:
    path = chromium_path()
    reason = None
    if path is None:
        reason = "chromium is not installed (Debian package chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install -e .[dev])"
    if reason is not None:
        if os.environ.get("CPDOPS_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"CPDOPS_REQUIRE_CHROMIUM=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    assert path is not None
    return path


@contextmanager
def launched(path: str) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def page_of(browser: Browser, *, http_errors: bool = False, **options: Any) -> Iterator[Page]:
    """A fresh context (own sessionStorage) and page; page errors fail the test (with
    ``http_errors``, Chromium's console line for a 4xx the test provokes does not). ``options``
    are Playwright's context options (``timezone_id``, ``viewport``, ``locale``, …)."""
    context = browser.new_context(
        **{"viewport": {"width": 1280, "height": 900}, "locale": "en-GB", **options}
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error"
            and not (http_errors and msg.text.startswith("Failed to load resource"))
            else None
        ),
    )
    page.set_default_timeout(20_000)
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"errors in the page: {errors}"


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page: Page, base: str, token: str, name: str = "ivanov") -> None:
    page.goto(base + "/")
    page.get_by_label("API token").fill(token)
    page.get_by_label("Your name").fill(name)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector("#fleet-grid")
