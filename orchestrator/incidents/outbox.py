"""The persistent outbox (SPEC §3.6): notifications about ticket changes, nothing lost.

* ``enqueue_event`` runs inside the transaction of the ticket change (``tickets.add_event``
  calls it), so a change that rolls back leaves no notification and a committed one always
  has its rows. One row per channel and recipient; its ``dedup_key``
  ``<channel>:<recipient>:<ticket number>:<event id>`` makes a second enqueue a no-op.
* ``deliver_due`` claims due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, a conditional
  UPDATE on SQLite), sends each through the channel's notifier and marks it ``sent``; a
  failure schedules a retry with exponential back-off (``backoff``), and after
  ``max_attempts`` the row is ``dead``. A claim is a lease: a row held by a process that died
  is due again when the lease ends.

The back-off and the message text (``render``) are pure functions; the notifiers live in
``orchestrator.incidents.notifiers`` and are found through ``NOTIFIERS`` and ``CHANNEL_KINDS``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Incident, IncidentEvent, Notifier, OutboxMessage, Tenant
from orchestrator.incidents.workflow import STATUS_LABELS, TYPE_LABELS

log = logging.getLogger(__name__)

# Timeline kinds that tell the customer something.
NOTIFY_KINDS = ("created", "status", "solution")
BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 3600.0
MAX_ATTEMPTS = 10
LEASE_S = 60.0


# --------------------------------------------------------------------------- pure parts


def backoff(
    attempts: int,
    *,
    base: float = BACKOFF_BASE_S,
    cap: float = BACKOFF_CAP_S,
    jitter: float = 0.1,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds before the next try after ``attempts`` failed ones: ``base · 2^(attempts-1)``,
    at most ``cap``, spread by ±``jitter`` (a fraction) so that retries do not come in step."""
    if attempts < 1:
        return 0.0
    delay: float = min(cap, base * float(2 ** min(attempts - 1, 62)))
    return max(0.0, delay * (1 + jitter * (2 * rand() - 1)))


def dedup_key(channel: str, recipient: str, number: str, event_id: int) -> str:
    return f"{channel}:{recipient}:{number}:{event_id}"[:255]


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str


_TEXT = {
    "ru": {
        "hello": "Здравствуйте, {name}!",
        "created": "Зарегистрирована заявка {number} ({type}).",
        "status": "Статус заявки {number} изменён: «{label}».",
        "solution": "По заявке {number} предоставлено решение («{label}»).",
        "solution_text": "Решение:",
        "comment": "Комментарий:",
        "subject": "Тема:",
        "status_line": "Статус:",
        "footer": "Чтобы ответить, ответьте на это письмо, сохранив [Ticket#{number}] в теме.",
    },
    "en": {
        "hello": "Hello {name},",
        "created": "Ticket {number} ({type}) has been registered.",
        "status": "Ticket {number} changed status: {label}.",
        "solution": "A solution has been provided for ticket {number} ({label}).",
        "solution_text": "Solution:",
        "comment": "Comment:",
        "subject": "Subject:",
        "status_line": "Status:",
        "footer": "To reply, answer this e-mail keeping [Ticket#{number}] in the subject.",
    },
}


def render(payload: Mapping[str, Any]) -> Rendered:
    """The notification's subject and plain-text body, in the tenant's language (ru or en)."""
    lang = "ru" if payload.get("language") == "ru" else "en"
    text = _TEXT[lang]
    number = str(payload["number"])
    status = str(payload["status"])
    kind = str(payload["kind"])
    label = STATUS_LABELS.get(status, {}).get(lang, status)
    type_label = TYPE_LABELS.get(str(payload.get("type")), {}).get(lang, str(payload.get("type")))
    lines = []
    if payload.get("contact_name"):
        lines += [text["hello"].format(name=payload["contact_name"]), ""]
    lines.append(
        text[kind if kind in text else "status"].format(number=number, type=type_label, label=label)
    )
    lines += ["", f"{text['subject']} {payload['subject']}", f"{text['status_line']} {label}"]
    comment = str(payload.get("comment") or "").strip()
    if comment:
        lines += ["", text["solution_text" if kind == "solution" else "comment"], comment]
    lines += ["", "--", text["footer"].format(number=number)]
    return Rendered(subject=f"[Ticket#{number}] {payload['subject']}", body="\n".join(lines) + "\n")


# --------------------------------------------------------------------------- enqueue


def _tenants_of(session: Session, incident: Incident) -> list[str]:
    """The tenants affected: the ticket's, or for a mass incident its children's."""
    slugs: list[str] = []
    if incident.tenant:
        slugs.append(incident.tenant)
    if incident.type == "mass_incident" and incident.id is not None:
        children = session.scalars(
            select(Incident.tenant).where(Incident.parent_id == incident.id).order_by(Incident.id)
        )
        slugs += [slug for slug in children if slug]
    return list(dict.fromkeys(slugs))


def recipients(tenant: Tenant) -> list[tuple[str, str, str]]:
    """(channel, recipient, contact name) for each of the tenant's channels that has a
    notifier kind in ``CHANNEL_KINDS`` and each contact reachable on it."""
    out = []
    for channel in tenant.channels or []:
        address_key = CHANNEL_ADDRESS.get(channel)
        if address_key is None or channel not in CHANNEL_KINDS:
            continue
        for contact in tenant.contacts or []:
            address = contact.get(address_key)
            if address:
                out.append((channel, str(address), str(contact.get("name", ""))))
    return list(dict.fromkeys(out))


def enqueue_event(session: Session, incident: Incident, event: IncidentEvent) -> int:
    """Enqueue the notifications for one timeline event, in the caller's transaction.
    Returns the number of rows new in the outbox (0 when they were there already)."""
    if event.kind not in NOTIFY_KINDS:
        return 0
    session.flush()  # the event id is part of the dedup key
    slugs = _tenants_of(session, incident)
    if not slugs:
        return 0
    tenants = session.scalars(select(Tenant).where(Tenant.slug.in_(slugs)).order_by(Tenant.slug))
    dialect = session.get_bind().dialect.name
    ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
    added = 0
    now = datetime.now(UTC)
    for tenant in tenants:
        for channel, recipient, name in recipients(tenant):
            payload = {
                "number": incident.number,
                "subject": incident.subject,
                "type": incident.type,
                "status": incident.status,
                "kind": event.kind,
                "comment": event.body if event.kind != "created" else incident.description,
                "language": tenant.language,
                "tenant": tenant.slug,
                "contact_name": name,
                "event_id": event.id,
            }
            stmt = (
                ins(OutboxMessage)
                .values(
                    dedup_key=dedup_key(channel, recipient, incident.number, event.id),
                    created_at=now,
                    channel=channel,
                    recipient=recipient,
                    tenant=tenant.slug,
                    incident_number=incident.number,
                    payload=payload,
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                )
                .on_conflict_do_nothing(index_elements=[OutboxMessage.dedup_key])
            )
            added += session.execute(stmt).rowcount or 0  # type: ignore[attr-defined]
    if added:
        log.info("outbox enqueued number=%s kind=%s rows=%s", incident.number, event.kind, added)
    return added


# --------------------------------------------------------------------------- notifiers


@dataclass(frozen=True)
class Notification:
    """What a notifier gets: the row's identity and payload (no database objects)."""

    id: int
    channel: str
    recipient: str
    payload: dict[str, Any]


class OutboundNotifier(Protocol):
    """A channel's sender; raise on failure (the outbox retries), return when delivered."""

    def send(self, notification: Notification) -> None: ...


def _smtp_factory(settings: Mapping[str, Any]) -> OutboundNotifier:
    from orchestrator.incidents.notifiers.smtp import SmtpMailer

    return SmtpMailer.from_settings(settings)


# Notifier kind (fleet file ``notifiers[].kind``) → factory from the stored settings.
# Telegram, webhook and OTRS/Znuny plug in here.
NOTIFIERS: dict[str, Callable[[Mapping[str, Any]], OutboundNotifier]] = {
    "smtp": _smtp_factory,
}
# Tenant channel → notifier kind, and the contact field that holds the address.
CHANNEL_KINDS: dict[str, str] = {"email": "smtp"}
CHANNEL_ADDRESS: dict[str, str] = {
    "email": "email",
    "telegram": "telegram_chat_id",
}


class NoNotifier(Exception):
    pass


def _notifier_for(
    session: Session, channel: str, cache: dict[str, OutboundNotifier]
) -> OutboundNotifier:
    if channel in cache:
        return cache[channel]
    kind = CHANNEL_KINDS.get(channel)
    factory = NOTIFIERS.get(kind or "")
    if kind is None or factory is None:
        raise NoNotifier(f"no notifier kind handles channel {channel!r}")
    row = session.scalars(
        select(Notifier).where(Notifier.kind == kind).order_by(Notifier.name)
    ).first()
    if row is None:
        raise NoNotifier(f"no {kind} notifier in the fleet file (channel {channel})")
    cache[channel] = factory(row.settings)
    return cache[channel]


# --------------------------------------------------------------------------- delivery


@dataclass
class DeliveryReport:
    sent: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)


def _claim(
    factory: sessionmaker[Session], now: datetime, owner: str, lease_s: float, batch: int
) -> list[Notification]:
    until = now + timedelta(seconds=lease_s)
    due = (OutboxMessage.state == "pending") & (OutboxMessage.next_attempt_at <= now)
    claimed: list[Notification] = []
    with factory() as s, s.begin():
        postgres = s.get_bind().dialect.name == "postgresql"
        query = select(OutboxMessage).where(due).order_by(OutboxMessage.id).limit(batch)
        if postgres:
            query = query.with_for_update(skip_locked=True)
        for row in s.scalars(query).all():
            if not postgres:
                # SQLite: another process may have taken it since the SELECT.
                result = s.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id == row.id, due)
                    .values(claimed_by=owner, next_attempt_at=until)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                s.refresh(row)
            row.claimed_by, row.next_attempt_at = owner, until
            row.attempts += 1
            claimed.append(Notification(row.id, row.channel, row.recipient, dict(row.payload)))
    return claimed


def deliver_due(
    factory: sessionmaker[Session],
    now: datetime | None = None,
    *,
    owner: str = "cpdops",
    lease_s: float = LEASE_S,
    batch: int = 50,
    max_attempts: int = MAX_ATTEMPTS,
    rand: Callable[[], float] = random.random,
) -> DeliveryReport:
    """Send the rows due at ``now``; each outcome is committed as soon as it is known."""
    now = now or datetime.now(UTC)
    report = DeliveryReport()
    notifiers: dict[str, OutboundNotifier] = {}
    for note in _claim(factory, now, owner, lease_s, batch):
        error: str | None = None
        try:
            with factory() as s:
                notifier = _notifier_for(s, note.channel, notifiers)
            notifier.send(note)
        except Exception as exc:  # any failure of the channel: retry later
            error = f"{type(exc).__name__}: {exc}"[:2000]
        with factory() as s, s.begin():
            row = s.get_one(OutboxMessage, note.id)
            if row.claimed_by != owner or row.state != "pending":
                continue  # the lease lapsed and another worker took it over
            row.claimed_by = None
            if error is None:
                row.state, row.sent_at, row.last_error = "sent", datetime.now(UTC), None
                report.sent.append(row.id)
                log.info(
                    "outbox sent id=%s channel=%s number=%s",
                    row.id,
                    row.channel,
                    row.incident_number,
                )
            elif row.attempts >= max_attempts:
                row.state, row.last_error = "dead", error
                report.dead.append(row.id)
                log.error("outbox dead id=%s after %s attempts: %s", row.id, row.attempts, error)
            else:
                row.last_error = error
                row.next_attempt_at = now + timedelta(seconds=backoff(row.attempts, rand=rand))
                report.retried.append(row.id)
                log.warning("outbox retry id=%s attempt=%s: %s", row.id, row.attempts, error)
    return report
