"""``/healthz`` and ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.api.auth import PUBLIC
from orchestrator.api.deps import CtxDep

# The body is the text exposition format 0.0.4; say so (prometheus_client's CONTENT_TYPE_LATEST
# announces version 1.0.0 in recent releases).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Open without a token: load balancers and Prometheus scrape them (docs/api.md).
router = APIRouter(tags=["health"], dependencies=[PUBLIC])


@router.get("/healthz", summary="Liveness and database reachability")
def healthz(ctx: CtxDep) -> Any:
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return JSONResponse(
            {"status": "degraded", "database": f"unavailable: {type(exc).__name__}"},
            status_code=503,
        )
    out: dict[str, Any] = {"status": "ok", "database": "ok", "monitors": ctx.monitors is not None}
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
