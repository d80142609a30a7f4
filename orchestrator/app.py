"""``create_app(settings)``: the API, the scheduler and the monitors of one cpdops process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from orchestrator.api import errors
from orchestrator.api.routes import (
    fleet,
    health,
    incidents,
    intake,
    monitors,
    postgres,
    rollouts,
)
from orchestrator.context import AppContext, build_context, start_monitors
from orchestrator.incidents.mail_listener import IntakeHandler, MailListener
from orchestrator.scheduler import make_scheduler
from orchestrator.settings import Settings, listen_address
from orchestrator.webui import mount_webui

log = logging.getLogger(__name__)

DESCRIPTION = """
cpdops drives mass automatic updates and rollbacks of SmartCPD containers across a fleet of
Docker hosts, monitors availability, and opens incident tickets automatically.

Errors are JSON `{"detail": …}`: 400 bad input, 404 unknown object, 409 conflict,
422 malformed request, 502/503 when a Docker host fails or does not answer.
"""


def create_app(settings: Settings | None = None, *, ctx: AppContext | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = ctx or build_context(settings)
        if settings.run_monitors and context.monitors is None:
            start_monitors(context)
        scheduler = make_scheduler(context)
        if settings.run_scheduler:
            scheduler.start()
        app.state.ctx = context
        app.state.scheduler = scheduler
        listener = start_mail_listener(context)
        log.info("cpdops started database=%s", context.engine.url.render_as_string())
        try:
            yield
        finally:
            if listener is not None:
                listener.stop()
            if scheduler.running:
                scheduler.shutdown(wait=True)
            context.close()

    app = FastAPI(
        title="cpdops",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    errors.install(app)
    for module in (health, fleet, rollouts, incidents, intake, monitors, postgres):
        app.include_router(module.router)
    mount_webui(app)
    return app


def start_mail_listener(ctx: AppContext) -> MailListener | None:
    """The inbound mail listener, when ``CPDOPS_SMTP_LISTEN`` is set."""
    if not ctx.settings.smtp_listen:
        return None
    host, port = listen_address(ctx.settings.smtp_listen)

    def created(kind: str) -> None:
        ctx.incidents.created.labels(type=kind, source="email").inc()

    handler = IntakeHandler(ctx.factory, system_id=ctx.settings.system_id, on_created=created)
    listener = MailListener(handler, host, port, max_bytes=ctx.settings.smtp_max_bytes)
    listener.start()
    return listener
