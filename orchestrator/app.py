"""``create_app(settings)``: the API, the scheduler and the monitors of one cpdops process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy import select

from orchestrator.api import errors
from orchestrator.api.auth import secure
from orchestrator.api.docs import install_docs
from orchestrator.api.middleware import Audit, BodyLimit
from orchestrator.api.routes import (
    audit,
    fleet,
    health,
    incidents,
    intake,
    monitors,
    outbox,
    postgres,
    rollouts,
    tokens,
)
from orchestrator.api.serving import install_log_redaction, trust_proxies
from orchestrator.auth.tokens import is_active
from orchestrator.context import AppContext, build_context, start_monitors
from orchestrator.db.models import ApiToken
from orchestrator.incidents.mail_listener import IntakeHandler, MailListener
from orchestrator.leader import Leadership, replica_id
from orchestrator.scheduler import follow, lead, make_scheduler
from orchestrator.settings import Settings, listen_address
from orchestrator.webui import mount_webui

log = logging.getLogger(__name__)

DESCRIPTION = """
cpdops drives mass automatic updates and rollbacks of SmartCPD containers across a fleet of
Docker hosts, monitors availability, and opens incident tickets automatically.

Every route under `/api/v1` needs `Authorization: Bearer <token>` (`cpdops token create
--role viewer|operator|admin`): viewers read, operators act (rollouts, incidents), admins manage
tokens and configuration and read the audit log; each operation names its role. `/healthz`,
`/metrics` and these docs are open; the webhook intakes check their own shared secret.

Errors are JSON `{"detail": …}`: 400 bad input, 401 missing/invalid/expired/revoked token,
403 role too low, 404 unknown object, 409 conflict, 413 body too large, 422 malformed
request, 502/503 when a Docker host fails or does not answer, 503 with `Retry-After` while the
state database is unavailable (it restarted; answers come back by themselves once it is up).
"""


def _warn_without_tokens(context: AppContext) -> None:
    with context.factory() as s:
        active = [t for t in s.scalars(select(ApiToken)) if is_active(t)]
    if not any(t.role == "admin" for t in active):
        log.warning(
            "no active admin API token: every /api/v1 request is refused (401) until one is "
            "made with `cpdops token create --role admin --name <who>`"
        )


def create_app(settings: Settings | None = None, *, ctx: AppContext | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = ctx or build_context(settings)
        if settings.run_monitors and context.monitors is None:
            start_monitors(context)
        scheduler = make_scheduler(context)
        leadership: Leadership | None = None
        if settings.run_scheduler:
            # Every replica runs the API; the leader alone runs the scheduler's jobs, the
            # monitors and the rollouts (orchestrator/leader.py). A follower's scheduler is
            # started paused, so the jobs it is given (scheduled rollouts) are stored.
            context.executor.owner = replica_id()
            leadership = Leadership(
                context.engine,
                context.executor.owner,
                on_change=lambda leading: lead(scheduler, context, leading),
                on_follow=lambda: follow(context),
                poll_s=settings.leader_poll_s,
            )
            context.leadership = leadership
            context.executor.should_run = lambda: leadership is not None and leadership.leading
            if leadership.postgres:
                context.executor.dead_owners = leadership.dead
            scheduler.start(paused=True)
            leadership.start()
        app.state.ctx = context
        _warn_without_tokens(context)
        app.state.scheduler = scheduler
        listener = start_mail_listener(context)
        log.info("cpdops started database=%s", context.engine.url.render_as_string())
        try:
            yield
        finally:
            if listener is not None:
                listener.stop()
            if leadership is not None:
                leadership.on_change = leadership.on_follow = None
            if scheduler.running:
                scheduler.shutdown(wait=True)
            if leadership is not None:
                leadership.stop()  # after the jobs: a rollout in progress stops first
            context.close()

    app = FastAPI(
        title="cpdops",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from the package's files by install_docs: no CDN
        redoc_url=None,
    )
    errors.install(app)
    for module in (
        health,
        fleet,
        rollouts,
        incidents,
        intake,
        monitors,
        postgres,
        tokens,
        audit,
        outbox,
    ):
        app.include_router(module.router)
    mount_webui(app)
    install_docs(app)
    secure(app)
    # outermost last: proxy headers (when configured) → CORS (when configured) → audit →
    # body limit → the routes
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        larger={"/api/v1/incidents": incidents.MAX_BODY_BYTES},
    )
    app.add_middleware(Audit)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    trust_proxies(app, settings)  # outermost: every part sees the client it gives
    install_log_redaction()
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
