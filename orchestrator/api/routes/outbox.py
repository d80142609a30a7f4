"""The outbox for the operator (admin): list the notifications, requeue a dead one."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from sqlalchemy import select

from orchestrator.api.auth import AdminDep
from orchestrator.api.deps import NO_NUL, SessionDep
from orchestrator.api.schemas import OutboxOut
from orchestrator.db.models import AuditEntry, OutboxMessage
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.incidents import outbox

router = APIRouter(prefix="/api/v1/outbox", tags=["outbox"])

OutboxId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the outbox row's id")]


def outbox_out(row: OutboxMessage) -> OutboxOut:
    kind = row.payload.get("kind") if isinstance(row.payload, dict) else None
    return OutboxOut.model_validate(row).model_copy(update={"kind": kind})


@router.get(
    "",
    response_model=list[OutboxOut],
    summary="The outbox: notifications pending, sent and dead",
    description=(
        "Every notification enqueued with a ticket change, by id (oldest first); filter by "
        "`status` (`dead`: refused for good or out of retries, with the reason in "
        "`last_error`), `channel` and ticket `number`; page with `limit` and `offset`."
    ),
)
def get_outbox(
    session: SessionDep,
    _admin: AdminDep,
    status: Annotated[
        Literal["pending", "sent", "dead"] | None, Query(description="the row's state")
    ] = None,
    channel: Annotated[
        str | None, Query(max_length=16, pattern=NO_NUL, description="email, telegram, …")
    ] = None,
    number: Annotated[
        str | None, Query(max_length=32, pattern=NO_NUL, description="the ticket's number")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[OutboxOut]:
    query = select(OutboxMessage).order_by(OutboxMessage.id).limit(limit).offset(offset)
    if status is not None:
        query = query.where(OutboxMessage.state == status)
    if channel is not None:
        query = query.where(OutboxMessage.channel == channel)
    if number is not None:
        query = query.where(OutboxMessage.incident_number == number)
    return [outbox_out(row) for row in session.scalars(query)]


@router.post(
    "/{outbox_id}/requeue",
    response_model=OutboxOut,
    summary="Send a dead notification again",
    description=(
        "Makes a `dead` (or `pending`) notification due now with its attempts counted afresh: "
        "the worker sends it within `CPDOPS_OUTBOX_INTERVAL_S`, retrying as usual. A `sent` "
        "one is 409 (it would reach the recipient twice). Audited as `outbox.requeue`."
    ),
    responses={404: {"description": "no such notification"}, 409: {"description": "sent"}},
)
def post_requeue(outbox_id: OutboxId, session: SessionDep, admin: AdminDep) -> OutboxOut:
    row = session.get(OutboxMessage, outbox_id)
    if row is None:
        raise NotFoundError(f"no outbox notification {outbox_id}")
    before = row.state
    if not outbox.requeue(session, row):
        raise ConflictError(
            f"outbox notification {outbox_id} is {row.state}: only dead or pending ones "
            "are requeued (a sent one would reach its recipient twice)"
        )
    session.add(
        AuditEntry(
            actor=admin.actor[:100],
            action="outbox.requeue",
            target=f"outbox/{row.id}",
            detail={"state": before, "channel": row.channel, "number": row.incident_number},
        )
    )
    session.commit()
    return outbox_out(row)
