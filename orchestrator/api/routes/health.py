"""``/healthz`` and ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.api.auth import PUBLIC
from orchestrator.api.deps import CtxDep
from orchestrator.db.outage import RETRY_AFTER_S, describe

# The body is the text exposition format 0.0.4; say so (prometheus_client's CONTENT_TYPE_LATEST
# announces version 1.0.0 in recent releases).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Open without a token: load balancers and Prometheus scrape them (docs/api.md).
router = APIRouter(tags=["health"], dependencies=[PUBLIC])


@router.get(
    "/healthz",
    summary="Liveness and database reachability",
    description="200 `{status: ok, database: ok, …}`; 503 `{status: degraded, database: "
    "unavailable, error, …}` with `Retry-After` while the state database cannot be reached "
    "(the monitors keep probing meanwhile; `pending_changes` counts their state changes "
    "waiting to be written, `pending_audit` the API audit entries). `leading`/`leader`: "
    "which replica runs the scheduler.",
)
def healthz(ctx: CtxDep) -> Any:
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        body: dict[str, Any] = {
            "status": "degraded",
            "database": "unavailable",
            "error": f"{type(exc).__name__}: {describe(exc)}",
            "monitors": ctx.monitors is not None,
        }
        if ctx.changes is not None:  # state changes waiting for the database
            body["pending_changes"] = ctx.changes.pending()
        if ctx.audit is not None:  # audit entries waiting for the database
            body["pending_audit"] = ctx.audit.pending()
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    out: dict[str, Any] = {"status": "ok", "database": "ok", "monitors": ctx.monitors is not None}
    if ctx.changes is not None:
        out["pending_changes"] = ctx.changes.pending()
    if ctx.audit is not None:
        out["pending_audit"] = ctx.audit.pending()
    if ctx.leadership is not None:  # which replica runs the scheduler, monitors and rollouts
        out["replica"] = ctx.leadership.replica_id
        out["leading"] = ctx.leadership.leading
        out["leader"] = ctx.leadership.leader()
    return out


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=PlainTextResponse,
)
def metrics(ctx: CtxDep) -> Response:
    # the same bytes as generate_latest(ctx.registry); the monitors write their own text
    return Response(ctx.registry.render(), media_type=CONTENT_TYPE)
