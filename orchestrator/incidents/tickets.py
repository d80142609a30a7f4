"""Tickets: numbering, creation with exactly-once open keys, timeline, status changes.

Evidence is aggregated (:func:`add_evidence`): a ticket keeps one ``evidence`` entry per kind
of evidence (:func:`evidence_key`: an alert's name, a monitor, else the data's shape with its
tenant and host). A repeat updates that entry — its data becomes the latest sample and
``data["occurrences"]`` counts it (``count``, ``first_seen``, ``last_seen``, ``key``) — so an
alert storm leaves a handful of entries with their counts, not one per alert.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator.db.models import Incident, IncidentEvent, Tenant, TicketCounter
from orchestrator.errors import InputError, NotFoundError
from orchestrator.incidents import outbox
from orchestrator.incidents.numbers import NUMBER_RE, format_number
from orchestrator.incidents.workflow import (
    ACTIVE,
    PRIORITIES,
    PRIORITY_LABELS,
    STATUS_LABELS,
    STATUSES,
    TRANSITIONS,
    TYPE_LABELS,
    TYPES,
    check_priority,
    check_type,
    decide_transition,
    reopens,
)

log = logging.getLogger(__name__)

# The workflow's vocabulary lives with its pure rules; kept importable from here.
__all__ = [
    "ACTIVE",
    "PRIORITIES",
    "PRIORITY_LABELS",
    "STATUSES",
    "STATUS_LABELS",
    "TRANSITIONS",
    "TYPES",
    "TYPE_LABELS",
]


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
    # Customer notifications go into the outbox in this same transaction.
    outbox.enqueue_event(session, incident, event)
    return event


OCCURRENCES = "occurrences"
EVIDENCE = "evidence"


def evidence_key(author: str, data: Mapping[str, Any]) -> str:
    """Which evidence entry of a ticket ``data`` (written by ``author``) repeats: the same alert
    name (Alertmanager; and the same label on the ticket of unknown tenants), the same monitor
    (a DOWN), else the same field names, tenant and host
    (a host's, a correlation's, a rollout's, the containers')."""
    for field, what in (("alertname", "alert"), ("monitor", "monitor")):
        value = data.get(field)
        if isinstance(value, str) and value:
            # the fleet-level ticket of unknown tenants: one entry per label it was sent
            unknown = data.get("unknown_tenant")
            return f"{author}:{what}:{value}" + (f":{unknown}" if isinstance(unknown, str) else "")
    shape = ",".join(sorted(k for k in data if k != OCCURRENCES))
    where = "@".join(str(data.get(k) or "") for k in ("tenant", "host"))
    return f"{author}:{shape}:{where}"


def add_evidence(
    session: Session, incident: Incident, *, author: str, body: str, data: Mapping[str, Any]
) -> IncidentEvent:
    """Evidence on ``incident``'s timeline, aggregated (see the module docstring): the entry of
    the same :func:`evidence_key` takes ``data`` and ``body`` as its latest sample and counts
    one more occurrence, else a new entry counts the first."""
    now = datetime.now(UTC)
    key = evidence_key(author, data)
    entries = _evidence_entries(session, incident)
    entry = entries.get(key)
    if entry is not None:
        seen = dict(entry.data.get(OCCURRENCES) or {})
        seen.update(count=int(seen.get("count", 1)) + 1, last_seen=now.isoformat())
        entry.data = {**data, OCCURRENCES: seen}
        entry.body = body
        incident.updated_at = now
        return entry
    at = now.isoformat()
    seen = {"key": key, "count": 1, "first_seen": at, "last_seen": at}
    entry = add_event(
        session, incident, author=author, kind=EVIDENCE, body=body, data={**data, OCCURRENCES: seen}
    )
    entries[key] = entry
    return entry


_ENTRIES = "cpdops_evidence_entries"


def _evidence_entries(session: Session, incident: Incident) -> dict[str, IncidentEvent]:
    """The ticket's aggregated evidence entries by key, read once per transaction after its
    row is locked (PostgreSQL ``FOR UPDATE``; SQLite's write lock, by a write): concurrent
    repeats wait for each other and are all counted, in one entry. A ticket not flushed yet
    has none."""
    transaction = session.get_transaction()
    cached = session.info.get(_ENTRIES)
    if cached is None or cached[0] is not transaction:
        cached = (transaction, {})
        session.info[_ENTRIES] = cached
    by_ticket: dict[int, dict[str, IncidentEvent]] = cached[1]
    if incident.id is None:
        return {}
    entries = by_ticket.get(incident.id)
    if entries is None:
        if session.get_bind().dialect.name == "sqlite":
            # no FOR UPDATE: a write takes SQLite's one write lock before the entries are
            # read (reads before a transaction's first write see no lock and would race)
            session.execute(
                update(Incident).where(Incident.id == incident.id).values(id=Incident.id)
            )
        else:
            session.execute(select(Incident.id).where(Incident.id == incident.id).with_for_update())
        key = IncidentEvent.data[(OCCURRENCES, "key")].as_string()
        entries = {}
        for event in session.scalars(
            select(IncidentEvent)
            .where(
                IncidentEvent.incident_id == incident.id,
                IncidentEvent.kind == EVIDENCE,
                key.is_not(None),
            )
            .order_by(IncidentEvent.id)
        ):
            entries.setdefault(str(event.data[OCCURRENCES]["key"]), event)
        by_ticket[incident.id] = entries
    return entries


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
        add_evidence(session, existing, author=author, body=subject, data=evidence or {})
        return existing, False
    check_type(type)
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
        add_evidence(session, winner, author=author, body=subject, data=evidence or {})
        return winner, False
    add_event(session, incident, author=author, kind="created", body=description)
    if evidence:
        add_evidence(session, incident, author=author, body=subject, data=evidence)
    log.info("incident opened number=%s type=%s tenant=%s", incident.number, type, tenant)
    return incident, True


def get_by_number(session: Session, number: str) -> Incident:
    # Anything but a well-formed number cannot exist (and never reaches the database).
    incident = (
        session.scalars(select(Incident).where(Incident.number == number)).first()
        if NUMBER_RE.match(number)
        else None
    )
    if incident is None:
        raise NotFoundError(f"no incident with number {number}")
    return incident


def list_tickets(
    session: Session,
    *,
    type: str | None = None,
    status: str | None = None,
    tenant: str | None = None,
    priority: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Incident]:
    """Tickets newest first, filtered by whichever of the fields are given."""
    stmt = select(Incident).order_by(Incident.id.desc()).limit(limit).offset(offset)
    for column, value in (
        (Incident.type, type),
        (Incident.status, status),
        (Incident.tenant, tenant),
        (Incident.priority, priority),
    ):
        if value:
            stmt = stmt.where(column == value)
    return list(session.scalars(stmt))


def _check_author(author: str) -> None:
    if not author.strip() or len(author) > 100:
        raise InputError("author: give a name of 1 to 100 characters")


def create_ticket(
    session: Session,
    *,
    system_id: str,
    type: str,
    subject: str,
    description: str = "",
    author: str,
    source: str = "portal",
    tenant: str | None = None,
    priority: str = "normal",
) -> Incident:
    """A new ticket from a person (portal, CLI): no open key, every one is its own ticket."""
    check_type(type)
    check_priority(priority)
    _check_author(author)
    if not subject.strip() or len(subject) > 500:
        raise InputError("subject: a ticket needs a subject of at most 500 characters")
    if (
        tenant is not None
        and session.scalars(select(Tenant.id).where(Tenant.slug == tenant)).first() is None
    ):
        raise InputError(f"tenant: unknown tenant {tenant!r}")
    incident = Incident(
        number=next_number(session, system_id),
        type=type,
        status="new",
        priority=priority,
        tenant=tenant,
        subject=subject.strip(),
        description=description,
        source=source,
    )
    session.add(incident)
    add_event(session, incident, author=author, kind="created", body=description)
    session.flush()
    log.info("ticket created number=%s type=%s tenant=%s", incident.number, type, tenant)
    return incident


def change_status(
    session: Session, incident: Incident, status: str, *, author: str, comment: str = ""
) -> bool:
    """Move ``incident`` to ``status`` under the workflow rules; False when it is already there.

    ``solution_provided`` keeps its comment as «Решение предоставлено» on the timeline;
    ``closed`` frees the open key and, on a mass incident, closes its open children.
    """
    _check_author(author)
    step = decide_transition(
        number=incident.number,
        type=incident.type,
        current=incident.status,
        wanted=status,
        comment=comment,
    )
    if step is None:
        return False
    incident.status = step.new
    if step.clears_open_key:
        incident.open_key = None
    add_event(
        session,
        incident,
        author=author,
        kind="solution" if step.new == "solution_provided" else "status",
        body=step.comment,
        data=_status_data(step.old, step.new),
    )
    if step.closes_children:
        for child in session.scalars(select(Incident).where(Incident.parent_id == incident.id)):
            if child.status == "closed":
                continue
            old = child.status
            child.status, child.open_key = "closed", None
            add_event(
                session,
                child,
                author=author,
                kind="status",
                body=f"Closed with mass incident {incident.number}",
                data={**_status_data(old, "closed"), "parent": incident.number},
            )
    log.info("ticket status number=%s %s->%s by=%s", incident.number, step.old, step.new, author)
    return True


def add_comment(
    session: Session, incident: Incident, *, author: str, body: str, customer: bool = False
) -> IncidentEvent:
    """A comment on the timeline; a customer's reply reopens a ticket waiting on them."""
    _check_author(author)
    if not body.strip():
        raise InputError("body: a comment cannot be empty")
    event = add_event(
        session, incident, author=author, kind="comment", body=body, data={"customer": customer}
    )
    if reopens(incident.status, customer=customer):
        old = incident.status
        incident.status = "open"
        add_event(
            session,
            incident,
            author=author,
            kind="status",
            body="Reopened by the customer's reply",
            data={**_status_data(old, "open"), "reason": "customer_reply"},
        )
    return event


def set_priority(session: Session, incident: Incident, priority: str, *, author: str) -> bool:
    check_priority(priority)
    _check_author(author)
    if incident.priority == priority:
        return False
    old, incident.priority = incident.priority, priority
    add_event(
        session,
        incident,
        author=author,
        kind="priority",
        data={"from": old, "to": priority, "label_ru": PRIORITY_LABELS[priority]["ru"]},
    )
    return True


def current_owner(events: list[IncidentEvent]) -> str | None:
    """Who owns the ticket: the last ``owner`` entry of its timeline (None: nobody). The owner
    lives on the timeline, not in a column: every change is there with its author and time."""
    for event in reversed(events):
        if event.kind == "owner":
            owner = event.data.get("to")
            return owner if isinstance(owner, str) else None
    return None


def set_owner(session: Session, incident: Incident, owner: str | None, *, author: str) -> bool:
    """Give the ticket to ``owner`` (None or blank: to nobody); False when nothing changes."""
    _check_author(author)
    wanted = (owner or "").strip() or None
    if wanted is not None and len(wanted) > 100:
        raise InputError("owner: give a name of 1 to 100 characters (or none)")
    old = current_owner(list(incident.events))
    if old == wanted:
        return False
    add_event(session, incident, author=author, kind="owner", data={"from": old, "to": wanted})
    return True


def _status_data(old: str, new: str) -> dict[str, Any]:
    return {
        "from": old,
        "to": new,
        "label_ru": STATUS_LABELS[new]["ru"],
        "label_en": STATUS_LABELS[new]["en"],
    }
