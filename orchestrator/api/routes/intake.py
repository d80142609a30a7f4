"""Webhook intakes: ``POST /api/v1/intake/alertmanager`` (Alertmanager webhook v4) and
``POST /api/v1/intake/telegram`` (a Telegram bot's webhook ``Update``)."""

from __future__ import annotations

import hmac
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, SecretStr, ValidationError
from starlette.concurrency import run_in_threadpool

from orchestrator.api.auth import SHARED_SECRET
from orchestrator.api.deps import CtxDep
from orchestrator.incidents import telegram
from orchestrator.incidents.alertmanager import MAX_BODY_BYTES, AlertmanagerWebhook

router = APIRouter(prefix="/api/v1/intake", tags=["intake"])


class RefusedAlertOut(BaseModel):
    fingerprint: str = Field(description="the alert's fingerprint, escaped to printable ASCII")
    tenant: str = Field(description="its tenant label, escaped to printable ASCII")
    reason: str


class AlertmanagerIntakeOut(BaseModel):
    created: list[str] = Field(description="numbers of the tickets opened by firing alerts")
    joined: list[str] = Field(
        description="tickets a firing alert joined (its tenant's incident, or a new occurrence)"
    )
    resolved: list[str] = Field(description="tickets moved to solution_provided")
    ignored: int = Field(
        description="repeats of alerts already seen, resolved alerts without a firing one"
    )
    refused: list[RefusedAlertOut] = Field(
        default_factory=list,
        description="alerts of tenants not in the registry, refused "
        "(CPDOPS_ALERTMANAGER_UNKNOWN_TENANTS=refuse; by default they join the fleet-level "
        "ticket instead)",
    )


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


def configured_secret(secret: SecretStr | None, intake: str, setting: str) -> str:
    """The intake's shared secret; 503 when none is configured (the intake is off)."""
    expected = secret.get_secret_value() if secret is not None else ""
    if not expected:
        raise HTTPException(
            status_code=503, detail=f"the {intake} intake is disabled: set {setting}"
        )
    return expected


def check_secret(ctx: CtxDep, request: Request) -> None:
    expected = configured_secret(
        ctx.settings.alertmanager_secret, "Alertmanager", "CPDOPS_ALERTMANAGER_SECRET"
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
        "503 when no secret is configured. Each alert is read by its own status. A firing "
        "alert with a `tenant` (or `smartcpd_tenant`) label opens or joins that tenant's "
        "incident (`tenant:<slug>`) and takes part in mass-incident correlation; the "
        "incident moves to `solution_provided` (automatic comment) once none of its alerts "
        "fires and the tenant's monitors are UP, for `incidents.recovery_hold` from the last "
        "resolution (the rule of the periodic recovery check; `resolved` lists it when the hold "
        "has already passed). A tenant label that is no registered tenant's slug is an unknown "
        "tenant: its alerts join ONE fleet-level ticket (`fleet:unknown-tenants`, no tenant), "
        "or are refused (`refused`) with CPDOPS_ALERTMANAGER_UNKNOWN_TENANTS=refuse. "
        "An alert without a tenant opens (or "
        "joins) the ticket of `am:<fingerprint>`; resolved, it moves that ticket to "
        "`solution_provided`. The same alert delivered again (same fingerprint and "
        "`startsAt`) changes nothing. 413 over 1 MiB, 422 names the malformed field."
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

    result = await run_in_threadpool(
        partial(ctx.incidents.on_alerts, unknown_tenants=ctx.settings.alertmanager_unknown_tenants),
        body,
    )
    return AlertmanagerIntakeOut(
        created=result.created,
        joined=result.joined,
        resolved=result.resolved,
        ignored=result.ignored,
        refused=[
            RefusedAlertOut(fingerprint=r.fingerprint, tenant=r.tenant, reason=r.reason)
            for r in result.refused
        ],
    )


# --------------------------------------------------------------------------- Telegram

TELEGRAM_HEADER = "X-Telegram-Bot-Api-Secret-Token"
TELEGRAM_SCHEMA = _inline(telegram.TelegramUpdate.model_json_schema(by_alias=True))


class TelegramIntakeOut(BaseModel):
    action: Literal["created", "commented", "duplicate", "ignored"] = Field(
        description="created: a new ticket; commented: a customer comment on `ticket`; "
        "duplicate: this update_id was taken in before; ignored: not a message to keep"
    )
    ticket: str | None = Field(default=None, description="the ticket's number")
    attachment: int | None = Field(default=None, description="id of the stored photo/document")
    note: str | None = Field(default=None, description="why a file could not be kept")


def check_telegram_secret(ctx: CtxDep, request: Request) -> None:
    expected = configured_secret(ctx.settings.telegram_secret, "Telegram", "CPDOPS_TELEGRAM_SECRET")
    given = request.headers.get(TELEGRAM_HEADER, "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status_code=403,
            detail=f"missing or wrong {TELEGRAM_HEADER} (the webhook's secret_token)",
        )


@router.post(
    "/telegram",
    dependencies=[SHARED_SECRET],
    response_model=TelegramIntakeOut,
    summary="Telegram bot webhook: a customer's message opens a ticket or comments one",
    description=(
        "The URL given to the Bot API's `setWebhook` (with `secret_token` = "
        '`CPDOPS_TELEGRAM_SECRET`, `allowed_updates: ["message"]`). Authenticated by the '
        f"header `{TELEGRAM_HEADER}` (compared in constant time): 403 when missing or wrong, "
        "503 when no secret is configured. A `message` whose text or caption names "
        "`[Ticket#<number>]` or `#<number>` of a ticket of the chat's tenant (the tenant with "
        "a contact `telegram_chat_id` equal to `chat.id`), or of one this chat opened or "
        "commented, or that replies to such a message, is a customer comment on it (reopening "
        "an `awaiting_info` or `solution_provided` ticket); any other message with text, a "
        "photo or a document opens a `consultation` ticket (subject: its first line; an unknown "
        "chat's ticket has no tenant). The largest photo size or the document is fetched "
        "through the Bot API (`getFile`) of the fleet file's `telegram` notifier and attached "
        "(at most 10 MiB; one that cannot be fetched is noted on the timeline). Each "
        "`update_id` is taken in once: a retried update answers `duplicate`. Other update "
        "kinds, `/start`, `/help` and messages with nothing to keep answer `ignored`. "
        "413 over 1 MiB, 422 names the malformed field."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": TELEGRAM_SCHEMA,
                    "example": {
                        "update_id": 815000001,
                        "message": {
                            "message_id": 42,
                            "from": {"id": 1001, "first_name": "Ivan", "username": "ivanov"},
                            "chat": {"id": 1001, "type": "private"},
                            "date": 1796112000,
                            "text": "Calls to 204 drop\nSince 10:00 every call drops after 30 s",
                        },
                    },
                }
            },
        }
    },
    responses={
        403: {"description": f"missing or wrong {TELEGRAM_HEADER}"},
        413: {"description": "body over 1 MiB"},
        422: {"description": "malformed update; `detail[].loc` names the field"},
        503: {"description": "intake disabled (no CPDOPS_TELEGRAM_SECRET)"},
    },
)
async def telegram_update(ctx: CtxDep, request: Request) -> TelegramIntakeOut:
    check_telegram_secret(ctx, request)
    raw = await read_limited(request, telegram.MAX_BODY_BYTES)
    try:
        update = telegram.TelegramUpdate.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from exc

    def created(kind: str) -> None:
        ctx.incidents.created.labels(type=kind, source=telegram.SOURCE).inc()

    result = await run_in_threadpool(
        telegram.ingest,
        ctx.factory,
        update,
        system_id=ctx.settings.system_id,
        on_created=created,
        redactor=ctx.incidents.redactor,
    )
    return TelegramIntakeOut(
        action=result.action, ticket=result.ticket, attachment=result.attachment, note=result.note
    )
