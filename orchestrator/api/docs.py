"""The API documentation pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served whole
from this process: no request leaves the machine when a page loads.

FastAPI's own pages load their scripts and styles from a CDN (and ReDoc's from Google Fonts),
so without the internet they are blank. Here the same HTML (FastAPI's ``get_swagger_ui_html``
/ ``get_redoc_html``) points at the files of the PyPI package ``fastapi-standalone-docs``
(Swagger UI's bundle and CSS, ReDoc's standalone bundle, FastAPI's favicon, their licenses
beside them), mounted at ``/docs/assets`` (and ReDoc's logo where its bundle asks for it,
``/redoc/logo-mini.svg``). Swagger UI's online validator badge is off
(``validatorUrl: null``: it would send the document's URL to validator.swagger.io), ReDoc's
web fonts too (the system's fonts are used).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from orchestrator.api.auth import PUBLIC

ASSETS_PATH = "/docs/assets"
ASSETS_DIR = Path(str(files("fastapi_standalone_docs") / "static"))  # a plain package dir
DOCS_PATH = "/docs"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
REDOC_PATH = "/redoc"


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/docs/oauth2-redirect``, ``/redoc`` and their assets (public, like
    ``/openapi.json``). ``app`` is made with ``docs_url=None, redoc_url=None``."""
    title = app.title
    # GET and HEAD, as FastAPI's own pages; public like /openapi.json
    page: dict[str, Any] = {
        "methods": ["GET", "HEAD"],
        "include_in_schema": False,
        "dependencies": [PUBLIC],
    }

    def urls(request: Request) -> tuple[str, str]:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return root + (app.openapi_url or "/openapi.json"), root + ASSETS_PATH

    @app.api_route(DOCS_PATH, **page)
    def swagger_ui(request: Request) -> HTMLResponse:
        openapi_url, assets = urls(request)
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=OAUTH2_REDIRECT_PATH,
            swagger_js_url=f"{assets}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger/swagger-ui.css",
            swagger_favicon_url=f"{assets}/fastapi/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.api_route(OAUTH2_REDIRECT_PATH, **page)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.api_route(REDOC_PATH, **page)
    def redoc(request: Request) -> HTMLResponse:
        openapi_url, assets = urls(request)
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{assets}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/fastapi/favicon.png",
            with_google_fonts=False,
        )

    @app.api_route(f"{REDOC_PATH}/logo-mini.svg", **page)
    def redoc_logo() -> FileResponse:
        # the package's ReDoc bundle asks for its logo at <page path>/logo-mini.svg
        return FileResponse(ASSETS_DIR / "redoc" / "logo-mini.svg", media_type="image/svg+xml")

    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
