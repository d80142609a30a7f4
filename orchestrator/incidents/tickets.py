"""Tickets: numbering, creation with exactly-once open keys, timeline, status changes."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator.db.models import Incident, IncidentEvent, TicketCounter
from orchestrator.errors import ConflictError, InputError, NotFoundError
from orchestrator.incidents.numbers import format_number

log = logging.getLogger(__name__)

TYPES = ("incident", "mass_incident", "consultation", "development_request")
STATUSES = ("new", "open", "awaiting_info", "solution_provided", "closed")
STATUS_LABELS = {
    "new": {"ru": "Новая", "en": "New"},
    "open": {"ru": "В работе", "en": "Open"},
    "awaiting_info": {"ru": "Запрошена информация", "en": "Awaiting information"},
    "solution_provided": {"ru": "Решение предоставлено", "en": "Solution provided"},
    "closed": {"ru": "Закрыта", "en": "Closed"},
}
TYPE_LABELS = {
    "incident": {"ru": "Инцидент", "en": "Incident"},
    "mass_incident": {"ru": "Массовый инцидент", "en": "Mass incident"},
    "consultation": {"ru": "Консультация", "en": "Consultation"},
    "development_request": {"ru": "Запрос на доработку", "en": "Development request"},
}
# Allowed transitions (SPEC §3.6); a customer reply reopens a solved ticket.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "new": ("open", "awaiting_info", "solution_provided", "closed"),
    "open": ("awaiting_info", "solution_provided", "closed"),
    "awaiting_info": ("open", "solution_provided", "closed"),
    "solution_provided": ("open", "closed"),
    "closed": ("open",),
}
ACTIVE = ("new", "open", "awaiting_info")


def next_number(session: Session, system_id: str, today: date | None = None) -> str:
    """Allocate the next ticket number atomically (one UPSERT … RETURNING)."""
    day = today or datetime.now(UTC).date()
    key = f"{day:%Y%m%d}"
    dialect = session.get_bind().dialect.name
    ins = (
        postgresql.insert(TicketCounter)
        if dialect == "postgresql"
        else sqlite.insert(TicketCounter)
    )
    stmt = (
        ins.values(day=key, value=1)
        .on_conflict_do_update(
            index_elements=[TicketCounter.day], set_={"value": TicketCounter.value + 1}
        )
        .returning(TicketCounter.value)
    )
    counter = session.execute(stmt).scalar_one()
    return format_number(day, system_id, counter)


def add_event(
    session: Session,
    incident: Incident,
    *,
    author: str,
    kind: str,
    body: str = "",
    data: dict[str, Any] | None = None,
) -> IncidentEvent:
    event = IncidentEvent(incident=incident, author=author, kind=kind, body=body, data=data or {})
    incident.updated_at = datetime.now(UTC)
    session.add(event)
    return event


def open_or_join(
    session: Session,
    *,
    system_id: str,
    open_key: str,
    type: str,
    subject: str,
    description: str,
    author: str,
    source: str,
    tenant: str | None = None,
    rollout_id: int | None = None,
    evidence: dict[str, Any] | None = None,
) -> tuple[Incident, bool]:
    """Open the incident for ``open_key``, or join the active one. Returns (incident, created).

    The unique ``open_key`` makes this exactly-once under concurrency: a racing insert
    fails on the constraint and the loser joins the winner's ticket.
    """
    existing = session.scalars(select(Incident).where(Incident.open_key == open_key)).first()
    if existing is not None:
        add_event(session, existing, author=author, kind="evidence", body=subject, data=evidence)
        return existing, False
    if type not in TYPES:
        raise InputError(f"unknown incident type {type!r}; expected one of {', '.join(TYPES)}")
    incident = Incident(
        number=next_number(session, system_id),
        type=type,
        status="new",
        tenant=tenant,
        subject=subject,
        description=description,
        source=source,
        open_key=open_key,
        rollout_id=rollout_id,
    )
    try:
        with session.begin_nested():
            session.add(incident)
            session.flush()
    except IntegrityError:
        winner = session.scalars(select(Incident).where(Incident.open_key == open_key)).one()
        add_event(session, winner, author=author, kind="evidence", body=subject, data=evidence)
        return winner, False
    add_event(session, incident, author=author, kind="created", body=description)
    if evidence:
        add_event(session, incident, author=author, kind="evidence", body=subject, data=evidence)
    log.info("incident opened number=%s type=%s tenant=%s", incident.number, type, tenant)
    return incident, True


def get_by_number(session: Session, number: str) -> Incident:
    incident = session.scalars(select(Incident).where(Incident.number == number)).first()
    if incident is None:
        raise NotFoundError(f"no incident with number {number}")
    return incident


def change_status(
    session: Session, incident: Incident, status: str, *, author: str, comment: str = ""
) -> None:
    if status not in STATUSES:
        raise InputError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
    if status == incident.status:
        return
    if status not in TRANSITIONS[incident.status]:
        raise ConflictError(
            f"incident {incident.number} cannot go from {incident.status} to {status}"
        )
    if status == "solution_provided" and not comment.strip():
        raise InputError("status solution_provided («Решение предоставлено») requires a comment")
    old = incident.status
    incident.status = status
    if status not in ACTIVE:
        incident.open_key = None
    add_event(
        session,
        incident,
        author=author,
        kind="status",
        body=comment,
        data={"from": old, "to": status, "label_ru": STATUS_LABELS[status]["ru"]},
    )
