"""The built-in web UI (SPEC §7): static ES modules served by ``cpdops serve`` at ``/``.

No build step: ``index.html`` loads ``/ui/app.js`` and the modules next to it. The page talks
to the REST API with ``Authorization: Bearer <token>`` (the token the operator typed in, kept
in ``sessionStorage``). Everything the API returns is put into the page with ``textContent``
(never ``innerHTML``), and the document's Content-Security-Policy allows scripts, styles and
connections to this origin only — so customer text in tickets cannot run in an operator's
browser.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from orchestrator.api.auth import PUBLIC

STATIC_DIR = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def mount_webui(app: FastAPI) -> None:
    """``GET /`` is the page; ``/ui/…`` its scripts and styles. Both are public (the page
    holds no data: everything comes from the API, with the token typed into its login form)."""

    @app.get("/", include_in_schema=False, dependencies=[PUBLIC])
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=HEADERS)

    app.mount("/ui", StaticFiles(directory=STATIC_DIR), name="webui")
