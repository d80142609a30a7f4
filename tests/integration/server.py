"""A real ``cpdops serve`` (uvicorn) in a thread, for end-to-end tests, and API tokens for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import httpx
import uvicorn

from orchestrator.api.serving import uvicorn_options
from orchestrator.app import create_app
from orchestrator.auth.tokens import Role, create_token
from orchestrator.context import build_context
from orchestrator.db.session import session_scope
from orchestrator.settings import Settings
from tests.integration.fleet import free_port


def make_token(
    settings: Settings,
    role: str = "admin",
    *,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> str:
    """A new API token of ``role`` in the settings' database (as `cpdops token create`)."""
    ctx = build_context(settings)
    try:
        with session_scope(ctx.factory) as s:
            _row, plain = create_token(
                s,
                name=name or f"test-{role}-{time.monotonic_ns()}",
                role=Role[role],
                actor="test",
                expires_at=expires_at,
            )
    finally:
        ctx.close()
    return plain


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def running_server(settings: Settings) -> Iterator[str]:
    port = free_port()
    options = {**uvicorn_options(settings), "host": "127.0.0.1", "port": port}
    options.update(log_level="warning", lifespan="on")
    config = uvicorn.Config(create_app(settings), **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="cpdops-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("cpdops serve did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def api_client(settings: Settings, role: str = "admin") -> Iterator[httpx.Client]:
    """A running server and a client that sends a new token of ``role``."""
    with running_server(settings) as base:
        token = make_token(settings, role)
        with httpx.Client(base_url=base, timeout=30, headers=bearer(token)) as client:
            yield client
