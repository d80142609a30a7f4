"""Webhook intakes: ``POST /api/v1/intake/alertmanager`` (Alertmanager webhook v4)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from orchestrator.api.auth import SHARED_SECRET
from orchestrator.api.deps import CtxDep
from orchestrator.incidents.alertmanager import (
    MAX_BODY_BYTES,
    SOURCE,
    AlertmanagerWebhook,
    ingest,
)

router = APIRouter(prefix="/api/v1/intake", tags=["intake"])


class AlertmanagerIntakeOut(BaseModel):
    created: list[str] = Field(description="numbers of the tickets opened by firing alerts")
    joined: list[str] = Field(description="tickets a firing alert joined (a new occurrence)")
    resolved: list[str] = Field(description="tickets moved to solution_provided")
    ignored: int = Field(description="repeats of alerts already seen, resolved alerts unknown")


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references replaced by the definitions (for openapi_extra)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined


BODY_SCHEMA = _inline(AlertmanagerWebhook.model_json_schema())


def check_secret(ctx: CtxDep, request: Request) -> None:
    secret = ctx.settings.alertmanager_secret
    expected = secret.get_secret_value() if secret is not None else ""
    if not expected:
        raise HTTPException(
            status_code=503,
            detail="the Alertmanager intake is disabled: set CPDOPS_ALERTMANAGER_SECRET",
        )
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), expected.encode()
    )
    if not ok:
        raise HTTPException(
            status_code=401,
            detail="missing or wrong Authorization: Bearer <CPDOPS_ALERTMANAGER_SECRET>",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def read_limited(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(status_code=413, detail=f"body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(status_code=413, detail=f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/alertmanager",
    dependencies=[SHARED_SECRET],
    response_model=AlertmanagerIntakeOut,
    summary="Alertmanager webhook v4: firing alerts open tickets, resolved ones resolve them",
    description=(
        "The receiver of an Alertmanager `webhook_configs` entry (`send_resolved: true`). "
        "Authenticated by `Authorization: Bearer <CPDOPS_ALERTMANAGER_SECRET>` "
        "(Alertmanager: `http_config.authorization.credentials`); 401 when missing or wrong, "
        "503 when no secret is configured. Each alert is read by its own status: a firing "
        "alert opens (or joins) the ticket of `am:<fingerprint>` exactly once — the same "
        "alert delivered again adds nothing; a resolved alert moves its open ticket to "
        "`solution_provided` with an automatic comment; a resolved alert without an open "
        "ticket is ignored. 413 over 1 MiB, 422 names the malformed field."
    ),
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": BODY_SCHEMA}}}
    },
    responses={
        401: {"description": "missing or wrong shared secret"},
        413: {"description": "body over 1 MiB"},
        422: {"description": "malformed body; `detail[].loc` names the field"},
        503: {"description": "intake disabled (no CPDOPS_ALERTMANAGER_SECRET)"},
    },
)
async def alertmanager(ctx: CtxDep, request: Request) -> AlertmanagerIntakeOut:
    check_secret(ctx, request)
    raw = await read_limited(request, MAX_BODY_BYTES)
    try:
        body = AlertmanagerWebhook.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from exc

    def created(kind: str) -> None:
        ctx.incidents.created.labels(type=kind, source=SOURCE).inc()

    result = await run_in_threadpool(
        ingest, ctx.factory, body, system_id=ctx.settings.system_id, on_created=created
    )
    return AlertmanagerIntakeOut(
        created=result.created,
        joined=result.joined,
        resolved=result.resolved,
        ignored=result.ignored,
    )
