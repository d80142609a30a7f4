"""Incidents: portal intake, list and show with the timeline, comments, status, attachments."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload
from starlette.datastructures import FormData, UploadFile

from orchestrator.api.auth import OperatorDep, ViewerDep
from orchestrator.api.deps import CtxDep, SessionDep
from orchestrator.api.schemas import (
    SLUG_PATTERN,
    CommentIn,
    IncidentDetail,
    IncidentOut,
    OwnerIn,
    PriorityIn,
    StatusChange,
    TicketCreate,
    TicketPriority,
    TicketStatus,
    TicketType,
)
from orchestrator.context import AppContext
from orchestrator.db.models import Incident, Tenant
from orchestrator.db.session import session_scope
from orchestrator.errors import InputError, NotFoundError
from orchestrator.incidents.attachments import (
    MAX_ATTACHMENT_BYTES,
    add_attachment,
    get_attachment,
    too_large,
)
from orchestrator.incidents.tickets import (
    PRIORITY_LABELS,
    STATUS_LABELS,
    TYPE_LABELS,
    add_comment,
    change_status,
    create_ticket,
    current_owner,
    get_by_number,
    list_tickets,
    set_owner,
    set_priority,
)

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"])

# A screenshot at its limit plus the form's other fields.
MAX_BODY_BYTES = MAX_ATTACHMENT_BYTES + 1024 * 1024

NumberPath = Annotated[
    str, Path(description="the ticket's DateChecksum number", examples=["2026120101000017"])
]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "bad input; `detail` names the field"},
    404: {"description": "no such ticket"},
    409: {"description": "the workflow forbids this change; `detail` names current and allowed"},
}


def to_out(incident: Incident) -> IncidentOut:
    return IncidentOut.model_validate(
        {
            **{
                k: getattr(incident, k)
                for k in IncidentOut.model_fields
                if k not in ("status_label", "labels")
            },
            "status_label": STATUS_LABELS[incident.status]["ru"],
            "labels": {
                "type": TYPE_LABELS.get(incident.type, {}),
                "status": STATUS_LABELS[incident.status],
                "priority": PRIORITY_LABELS.get(incident.priority, {}),
            },
        }
    )


def to_detail(incident: Incident) -> IncidentDetail:
    return IncidentDetail.model_validate(
        {
            **to_out(incident).model_dump(),
            "owner": current_owner(incident.events),
            "events": incident.events,
            "attachments": incident.attachments,
            "parent": incident.parent,
            "children": incident.children,
        }
    )


def _detail(session: Session, number: str) -> IncidentDetail:
    get_by_number(session, number)  # 404 for anything that is not a known number
    incident = session.scalars(
        select(Incident)
        .where(Incident.number == number)
        .options(
            selectinload(Incident.events),
            selectinload(Incident.attachments),
            selectinload(Incident.children),
            selectinload(Incident.parent),
        )
        .execution_options(populate_existing=True)
    ).one()
    return to_detail(incident)


@router.get(
    "",
    response_model=list[IncidentOut],
    summary="List tickets, newest first",
    description="Filter by type, status, tenant and priority; page with `limit` and `offset`.",
)
def list_incidents(
    session: SessionDep,
    _viewer: ViewerDep,
    type: Annotated[TicketType | None, Query(description="only this type")] = None,
    status: Annotated[TicketStatus | None, Query(description="only this status")] = None,
    tenant: Annotated[
        str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="tenant slug")
    ] = None,
    priority: Annotated[TicketPriority | None, Query(description="only this priority")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[IncidentOut]:
    found = list_tickets(
        session,
        type=type,
        status=status,
        tenant=tenant,
        priority=priority,
        limit=limit,
        offset=offset,
    )
    return [to_out(i) for i in found]


_CREATE_SCHEMA = TicketCreate.model_json_schema()
# A form has no null: an empty tenant (or description) is no tenant (no description).
_FORM_SCHEMA = {
    **_CREATE_SCHEMA,
    "properties": {
        **_CREATE_SCHEMA["properties"],
        "tenant": {
            "anyOf": [
                {"type": "string", "pattern": SLUG_PATTERN},
                {"type": "string", "maxLength": 0},
            ],
            "description": "slug of a tenant in the registry (404 if it is not); empty: none",
        },
    },
}
_MULTIPART_SCHEMA = {
    **_FORM_SCHEMA,
    "properties": {
        **_FORM_SCHEMA["properties"],
        "screenshot": {
            "type": "string",
            "format": "binary",
            "description": f"the customer's screenshot, at most {MAX_ATTACHMENT_BYTES} bytes",
        },
    },
}


@router.post(
    "",
    status_code=201,
    response_model=IncidentDetail,
    summary="Portal intake: open a ticket",
    description=(
        "Opens a new ticket in status `new` with a DateChecksum number. The body is JSON, "
        "`multipart/form-data` with the same fields and an optional `screenshot` file "
        f"(at most {MAX_ATTACHMENT_BYTES} bytes, else 413), or a url-encoded form of the same "
        "fields; any other content type is 415. A malformed field is 422 naming it; a tenant "
        "not in the registry is 404."
    ),
    responses={
        400: ERRORS[400],
        404: {"description": "the tenant is not in the registry; `detail` names it"},
        413: {"description": "the screenshot is too large"},
        415: {"description": "neither JSON nor a form"},
        422: {"description": "a field is missing or malformed"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _CREATE_SCHEMA,
                    "example": {
                        "type": "incident",
                        "subject": "Calls to extension 204 drop after 30 s",
                        "description": "Since 10:00 every call to 204 drops.",
                        "tenant": "acme",
                        "priority": "high",
                    },
                },
                "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
                "application/x-www-form-urlencoded": {"schema": _FORM_SCHEMA},
            },
        }
    },
)
async def create_incident(
    request: Request, ctx: CtxDep, _operator: OperatorDep
) -> IncidentDetail | Response:
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    screenshot: tuple[str | None, str | None, bytes] | None = None
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_large(int(length))
    if kind == "application/json":
        try:
            fields: Any = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise InputError("body: not valid JSON") from None
    elif kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=20)
        try:
            fields, screenshot = await _form_fields(form)
        finally:
            await form.close()
    else:
        return Response(
            content=json.dumps(
                {"detail": "send application/json or multipart/form-data (or a url-encoded form)"}
            ),
            status_code=415,
            media_type="application/json",
        )
    try:
        ticket = TicketCreate.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from None
    return await run_in_threadpool(_create, ctx, ticket, screenshot)


async def _form_fields(
    form: FormData,
) -> tuple[dict[str, Any], tuple[str | None, str | None, bytes] | None]:
    fields: dict[str, Any] = {}
    screenshot = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != "screenshot":
                raise InputError(f"{key}: only the screenshot field may be a file")
            data = await value.read(MAX_ATTACHMENT_BYTES + 1)
            if len(data) > MAX_ATTACHMENT_BYTES:
                raise too_large(len(data))
            screenshot = (value.filename, value.content_type, data)
        elif value != "" or key not in ("tenant", "description"):
            fields[key] = value
    return fields, screenshot


def _create(
    ctx: AppContext, ticket: TicketCreate, screenshot: tuple[str | None, str | None, bytes] | None
) -> IncidentDetail:
    with session_scope(ctx.factory) as s:
        if (
            ticket.tenant is not None
            and s.scalar(select(Tenant.id).where(Tenant.slug == ticket.tenant)) is None
        ):
            # a well-formed slug that names no tenant: not found (the schema cannot say it)
            raise NotFoundError(f"tenant: unknown tenant {ticket.tenant!r}")
        incident = create_ticket(
            s,
            system_id=ctx.settings.system_id,
            type=ticket.type,
            subject=ticket.subject,
            description=ticket.description,
            author=ticket.author,
            tenant=ticket.tenant,
            priority=ticket.priority,
            source="portal",
        )
        if screenshot is not None:
            filename, content_type, data = screenshot
            add_attachment(
                s,
                incident,
                filename=filename or "screenshot",
                content_type=content_type,
                content=data,
                author=ticket.author,
            )
        number = incident.number
    with ctx.factory() as s:
        return _detail(s, number)


@router.get(
    "/{number}",
    response_model=IncidentDetail,
    summary="A ticket with its timeline",
    description="The ticket, its timeline (every change with author and time), attachments "
    "(metadata), its parent mass incident and its children.",
    responses={404: ERRORS[404]},
)
def get_incident(number: NumberPath, session: SessionDep, _viewer: ViewerDep) -> IncidentDetail:
    return _detail(session, number)


@router.post(
    "/{number}/comments",
    status_code=201,
    response_model=IncidentDetail,
    summary="Comment on a ticket",
    description="Adds a comment to the timeline. A customer's reply (`customer: true`) on an "
    "`awaiting_info` or `solution_provided` ticket reopens it (`open`).",
    responses=ERRORS,
)
def post_comment(
    number: NumberPath, body: CommentIn, session: SessionDep, _operator: OperatorDep
) -> IncidentDetail:
    incident = get_by_number(session, number)
    add_comment(session, incident, author=body.author, body=body.body, customer=body.customer)
    session.commit()
    return _detail(session, number)


@router.post(
    "/{number}/status",
    response_model=IncidentDetail,
    summary="Change a ticket's status",
    description="Moves the ticket along the workflow new → open → awaiting_info ⇄ open → "
    "solution_provided → closed. `solution_provided` requires a `comment` that is not only "
    "spaces (the schema's `SolutionIn`; kept as «Решение предоставлено»); `closed` on a mass "
    "incident closes its children. A forbidden change is 409 naming the current and the "
    "allowed statuses; the same status is no change.",
    responses=ERRORS,
)
def post_status(
    number: NumberPath, body: StatusChange, session: SessionDep, _operator: OperatorDep
) -> IncidentDetail:
    incident = get_by_number(session, number)
    change_status(session, incident, body.status, author=body.author, comment=body.comment)
    session.commit()
    return _detail(session, number)


@router.post(
    "/{number}/priority",
    response_model=IncidentDetail,
    summary="Set a ticket's priority",
    description="low, normal, high or critical; the change is on the timeline.",
    responses=ERRORS,
)
def post_priority(
    number: NumberPath, body: PriorityIn, session: SessionDep, _operator: OperatorDep
) -> IncidentDetail:
    incident = get_by_number(session, number)
    set_priority(session, incident, body.priority, author=body.author)
    session.commit()
    return _detail(session, number)


@router.post(
    "/{number}/owner",
    response_model=IncidentDetail,
    summary="Give a ticket to an owner",
    description="Who works on the ticket (`null` or empty: nobody); the change is on the "
    "timeline (`owner`, from → to) and the ticket's `owner` is the last one.",
    responses=ERRORS,
)
def post_owner(
    number: NumberPath, body: OwnerIn, session: SessionDep, _operator: OperatorDep
) -> IncidentDetail:
    incident = get_by_number(session, number)
    set_owner(session, incident, body.owner, author=body.author)
    session.commit()
    return _detail(session, number)


@router.get(
    "/{number}/attachments/{attachment_id}",
    summary="An attachment's bytes",
    description="The stored bytes as a download: always `application/octet-stream` with "
    "`Content-Disposition: attachment` and `X-Content-Type-Options: nosniff`, whatever the "
    "uploader said (a browser never renders an uploaded file as a page). The uploader's "
    "content type is in the attachment's metadata (`content_type` in the ticket).",
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "the file",
            "headers": {
                "Content-Disposition": {
                    "description": "attachment; filename=…",
                    "schema": {"type": "string"},
                },
                "X-Content-Type-Options": {"schema": {"type": "string", "enum": ["nosniff"]}},
            },
        },
        404: {"description": "no such ticket or attachment"},
    },
)
def get_attachment_bytes(
    number: NumberPath,
    attachment_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    session: SessionDep,
    _viewer: ViewerDep,
) -> Response:
    att = get_attachment(session, get_by_number(session, number), attachment_id)
    ascii_name = att.filename.encode("ascii", "replace").decode().replace('"', "_")
    return Response(
        content=att.content,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": (
                f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(att.filename)}"
            ),
            "X-Content-Type-Options": "nosniff",
        },
    )
