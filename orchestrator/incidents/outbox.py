"""The persistent outbox (SPEC §3.6): notifications about ticket changes, nothing lost.

* ``enqueue_event`` runs inside the transaction of the ticket change (``tickets.add_event``
  calls it), so a change that rolls back leaves no notification and a committed one always
  has its rows. One row per channel and recipient (``recipients``: a contact's address, the
  tenant for ``webhook``, the ticket for ``otrs``), and per part of a text too long for one
  message (``CHANNEL_PARTS``); its ``dedup_key``
  ``<channel>:<recipient>:<ticket number>:<event id>[.<part>]`` makes a second enqueue a no-op.
* ``deliver_due`` claims due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, a conditional
  UPDATE on SQLite), sends each through the channel's notifier and marks it ``sent``; a
  failure schedules a retry with exponential back-off (``backoff``: 5 s doubling, at most
  ``backoff_cap_s``, 30 s by default, so a receiver that comes back gets its mail within the
  cap), and a row that has failed ``max_attempts`` times and for ``retry_for_s`` since it was
  enqueued is ``dead``. A notifier raising :class:`Permanent` (an HTTP 4xx rejection, an SMTP
  5xx) makes the row ``dead`` at once: trying again cannot help. A claim is a lease: a row held
  by a process that died is due again when the lease ends. ``requeue`` makes a dead (or
  pending) row due now with a fresh count (the operator's redelivery).
* A row goes out only after the earlier rows of its channel, recipient and ticket (so a
  ticket's updates never overtake its creation), and not sooner than ``CHANNEL_PACE_S`` after
  the last one to the same recipient. A row held back by either, or by a notifier raising
  :class:`Deferred` (a server's "retry after N s"), is due again then **without** the attempt
  counting towards ``dead``.

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

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Incident, IncidentEvent, Notifier, OutboxMessage, Tenant
from orchestrator.incidents.workflow import STATUS_LABELS, TYPE_LABELS

log = logging.getLogger(__name__)

# Timeline kinds that tell the customer something.
NOTIFY_KINDS = ("created", "status", "solution")
BACKOFF_BASE_S = 5.0
# The longest wait between two tries: a receiver back after an outage of any length gets its
# notifications within this (+ jitter, + the worker's interval). CPDOPS_OUTBOX_BACKOFF_CAP_S.
BACKOFF_CAP_S = 30.0
BACKOFF_JITTER = 0.1
# A failing row is dead after this many attempts **and** this long since it was enqueued
# (CPDOPS_OUTBOX_MAX_ATTEMPTS, CPDOPS_OUTBOX_RETRY_FOR_S): with the 30 s cap, 10 attempts alone
# would be over in under 4 minutes.
MAX_ATTEMPTS = 10
RETRY_FOR_S = 3600.0
LEASE_S = 60.0


# --------------------------------------------------------------------------- pure parts


def backoff(
    attempts: int,
    *,
    base: float = BACKOFF_BASE_S,
    cap: float = BACKOFF_CAP_S,
    jitter: float = BACKOFF_JITTER,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds before the next try after ``attempts`` failed ones: ``base · 2^(attempts-1)``,
    at most ``cap``, spread by ±``jitter`` (a fraction) so that retries do not come in step."""
    if attempts < 1:
        return 0.0
    delay: float = min(cap, base * float(2 ** min(attempts - 1, 62)))
    return max(0.0, delay * (1 + jitter * (2 * rand() - 1)))


def dedup_key(channel: str, recipient: str, number: str, event_id: int, part: int = 1) -> str:
    suffix = f".{part}" if part > 1 else ""
    return f"{channel}:{recipient}:{number}:{event_id}"[: 255 - len(suffix)] + suffix


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


def render(payload: Mapping[str, Any], *, footer: bool = True) -> Rendered:
    """The notification's subject and plain-text body, in the tenant's language (ru or en).
    ``footer`` adds how to reply by e-mail (only mail has that)."""
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
    if footer:
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
    notifier kind in ``CHANNEL_KINDS``: each contact reachable on it (``CHANNEL_ADDRESS``),
    or one per tenant (``webhook``: the tenant's slug) or one per ticket (``otrs``: every
    tenant of a mass incident gives the same row, deduplicated by its key)."""
    out = []
    for channel in tenant.channels or []:
        if channel not in CHANNEL_KINDS:
            continue
        if channel in PER_TENANT_CHANNELS:
            out.append((channel, tenant.slug, tenant.name))
            continue
        if channel in PER_TICKET_CHANNELS:
            out.append((channel, PER_TICKET_RECIPIENT, ""))
            continue
        address_key = CHANNEL_ADDRESS.get(channel)
        if address_key is None:
            continue
        for contact in tenant.contacts or []:
            address = contact.get(address_key)
            if address:
                out.append((channel, str(address), str(contact.get("name", ""))))
    return list(dict.fromkeys(out))


def _parts(channel: str, payload: Mapping[str, Any]) -> int:
    counter = CHANNEL_PARTS.get(channel)
    return max(1, counter(payload)) if counter is not None else 1


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
            payload: dict[str, Any] = {
                "number": incident.number,
                "subject": incident.subject,
                "type": incident.type,
                "status": incident.status,
                "priority": incident.priority,
                "kind": event.kind,
                "comment": event.body if event.kind != "created" else incident.description,
                "language": tenant.language,
                "tenant": tenant.slug,
                "ticket_tenant": incident.tenant,
                "contact_name": name,
                "event_id": event.id,
            }
            parts = _parts(channel, payload)
            for part in range(1, parts + 1):
                key = dedup_key(channel, recipient, incident.number, event.id, part)
                extra = {"part": part, "parts": parts} if parts > 1 else {}
                stmt = (
                    ins(OutboxMessage)
                    .values(
                        dedup_key=key,
                        created_at=now,
                        channel=channel,
                        recipient=recipient,
                        tenant=tenant.slug,
                        incident_number=incident.number,
                        payload={**payload, **extra, "dedup_key": key},
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
    """A channel's sender; raise on failure (the outbox retries), raise :class:`Permanent`
    when retrying cannot help (the row is dead at once), raise :class:`Deferred` to be tried
    again later without counting an attempt, return when delivered."""

    def send(self, notification: Notification) -> None: ...


class Permanent(Exception):
    """The receiver refused this message for good (an HTTP 4xx other than 408/429, an SMTP 5xx,
    Telegram's 400/403): the row is ``dead`` at once with the reason, not retried."""


class Deferred(Exception):
    """Not now, and not a failure: try again in ``delay_s`` (the attempt does not count)."""

    def __init__(self, reason: str, delay_s: float) -> None:
        super().__init__(reason)
        self.delay_s = max(0.0, delay_s)


@dataclass(frozen=True)
class NotifierSetup:
    """What a factory gets: the notifier's fleet-file name and settings, and the store (for
    a notifier that keeps state of its own, like the Znuny ticket ids)."""

    name: str
    settings: Mapping[str, Any]
    store: sessionmaker[Session]


def _smtp_factory(setup: NotifierSetup) -> OutboundNotifier:
    from orchestrator.incidents.notifiers.smtp import SmtpMailer

    return SmtpMailer.from_settings(setup.settings)


def _telegram_factory(setup: NotifierSetup) -> OutboundNotifier:
    from orchestrator.incidents.notifiers.telegram import TelegramSender

    return TelegramSender.from_settings(setup.settings)


def _webhook_factory(setup: NotifierSetup) -> OutboundNotifier:
    from orchestrator.incidents.notifiers.webhook import WebhookSender

    return WebhookSender.from_settings(setup.settings)


def _otrs_factory(setup: NotifierSetup) -> OutboundNotifier:
    from orchestrator.incidents.notifiers.otrs import ZnunyConnector

    return ZnunyConnector.from_setup(setup)


def _telegram_parts(payload: Mapping[str, Any]) -> int:
    from orchestrator.incidents.notifiers.telegram import message_parts

    return len(message_parts(payload))


# Notifier kind (fleet file ``notifiers[].kind``) → factory from the stored settings.
NOTIFIERS: dict[str, Callable[[NotifierSetup], OutboundNotifier]] = {
    "smtp": _smtp_factory,
    "telegram": _telegram_factory,
    "webhook": _webhook_factory,
    "otrs": _otrs_factory,
}
# Tenant channel → notifier kind, and the contact field that holds the address.
CHANNEL_KINDS: dict[str, str] = {
    "email": "smtp",
    "telegram": "telegram",
    "webhook": "webhook",
    "otrs": "otrs",
}
CHANNEL_ADDRESS: dict[str, str] = {
    "email": "email",
    "telegram": "telegram_chat_id",
}
# Channels with one row per tenant (no contact address), and per ticket.
PER_TENANT_CHANNELS = frozenset({"webhook"})
PER_TICKET_CHANNELS = frozenset({"otrs"})
PER_TICKET_RECIPIENT = "ticket"
# Channel → how many rows (messages) one notification takes.
CHANNEL_PARTS: dict[str, Callable[[Mapping[str, Any]], int]] = {"telegram": _telegram_parts}
# Channel → the least seconds between two messages to one recipient (Telegram: ≈1/s per chat).
CHANNEL_PACE_S: dict[str, float] = {"telegram": 1.0}


class NoNotifier(Exception):
    pass


def _notifier_for(
    session: Session,
    channel: str,
    cache: dict[str, OutboundNotifier],
    store: sessionmaker[Session],
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
    cache[channel] = factory(NotifierSetup(row.name, dict(row.settings), store))
    return cache[channel]


# --------------------------------------------------------------------------- delivery


@dataclass
class DeliveryReport:
    sent: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)  # held back, the attempt not counted


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


def _held_until(
    s: Session,
    note: Notification,
    now: datetime,
    hold: Mapping[tuple[str, str], datetime],
) -> tuple[datetime, str] | None:
    """When ``note`` may go at the earliest, and why, if something holds it back: an earlier
    row of the same channel, recipient and ticket still pending, or the channel's pace."""
    earlier = s.scalars(
        select(OutboxMessage.next_attempt_at)
        .where(
            OutboxMessage.incident_number == str(note.payload["number"]),
            OutboxMessage.channel == note.channel,
            OutboxMessage.recipient == note.recipient,
            OutboxMessage.state == "pending",
            OutboxMessage.id < note.id,
        )
        .order_by(OutboxMessage.id)
        .limit(1)
    ).first()
    if earlier is not None:  # even if it is due: it has to go first
        return max(earlier, now + timedelta(seconds=1)), "an earlier one of this ticket is pending"
    pace = CHANNEL_PACE_S.get(note.channel)
    if pace is None:
        return None
    last = s.scalar(
        select(func.max(OutboxMessage.sent_at)).where(
            OutboxMessage.channel == note.channel,
            OutboxMessage.recipient == note.recipient,
            OutboxMessage.state == "sent",
        )
    )
    ready = [t for t in (hold.get((note.channel, note.recipient)),) if t is not None]
    if last is not None:
        ready.append(last + timedelta(seconds=pace))
    return (max(ready), f"paced: at most one message per {pace:g} s") if ready else None


def deliver_due(
    factory: sessionmaker[Session],
    now: datetime | None = None,
    *,
    owner: str = "cpdops",
    lease_s: float = LEASE_S,
    batch: int = 50,
    max_attempts: int = MAX_ATTEMPTS,
    retry_for_s: float = RETRY_FOR_S,
    backoff_cap_s: float = BACKOFF_CAP_S,
    rand: Callable[[], float] = random.random,
) -> DeliveryReport:
    """Send the rows due at ``now``; each outcome is committed as soon as it is known."""
    now = now or datetime.now(UTC)
    report = DeliveryReport()
    notifiers: dict[str, OutboundNotifier] = {}
    # (channel, recipient) → nothing more to them before this time, in this run.
    hold: dict[tuple[str, str], datetime] = {}
    for note in _claim(factory, now, owner, lease_s, batch):
        error: str | None = None
        permanent = False
        deferred: Deferred | None = None
        try:
            with factory() as s:
                held = _held_until(s, note, now, hold)
                if held is not None and held[0] > now:
                    raise Deferred(held[1], (held[0] - now).total_seconds())
                notifier = _notifier_for(s, note.channel, notifiers, factory)
            notifier.send(note)
        except Deferred as exc:
            deferred = exc
        except Permanent as exc:  # refused for good: dead now, the reason kept
            permanent = True
            error = f"permanent: {type(exc).__name__}: {exc}"[:2000]
        except Exception as exc:  # any failure of the channel: retry later
            error = f"{type(exc).__name__}: {exc}"[:2000]
        key = (note.channel, note.recipient)
        if note.channel in CHANNEL_PACE_S and deferred is None:
            hold[key] = now + timedelta(seconds=CHANNEL_PACE_S[note.channel])
        if deferred is not None:
            hold[key] = max(hold.get(key, now), now + timedelta(seconds=deferred.delay_s))
        with factory() as s, s.begin():
            row = s.get_one(OutboxMessage, note.id)
            if row.claimed_by != owner or row.state != "pending":
                continue  # the lease lapsed and another worker took it over
            row.claimed_by = None
            if deferred is not None:
                row.attempts = max(0, row.attempts - 1)  # the claim counted it: undo
                row.last_error = f"deferred: {deferred}"[:2000]
                row.next_attempt_at = now + timedelta(seconds=max(deferred.delay_s, 0.001))
                report.deferred.append(row.id)
                log.info(
                    "outbox deferred id=%s channel=%s for %.1fs: %s",
                    row.id,
                    row.channel,
                    deferred.delay_s,
                    deferred,
                )
            elif error is None:
                row.state, row.sent_at, row.last_error = "sent", datetime.now(UTC), None
                report.sent.append(row.id)
                log.info(
                    "outbox sent id=%s channel=%s number=%s",
                    row.id,
                    row.channel,
                    row.incident_number,
                )
            elif permanent or (
                row.attempts >= max_attempts
                and (now - row.created_at).total_seconds() >= retry_for_s
            ):
                row.state, row.last_error = "dead", error
                report.dead.append(row.id)
                log.error("outbox dead id=%s after %s attempts: %s", row.id, row.attempts, error)
            else:
                row.last_error = error
                delay = backoff(row.attempts, cap=backoff_cap_s, rand=rand)
                row.next_attempt_at = now + timedelta(seconds=delay)
                report.retried.append(row.id)
                log.warning("outbox retry id=%s attempt=%s: %s", row.id, row.attempts, error)
    return report


# --------------------------------------------------------------------------- operator


REQUEUE_STATES = ("dead", "pending")


def requeue(session: Session, row: OutboxMessage, now: datetime | None = None) -> bool:
    """Make a ``dead`` or ``pending`` row due now with its attempts counted afresh (the
    operator's redelivery, ``cpdops outbox requeue``); the last error stays until the next
    try. False for a ``sent`` row: requeueing it would send it twice. A row a worker holds
    right now keeps its lease (the worker's outcome stands)."""
    if row.state not in REQUEUE_STATES:
        return False
    now = now or datetime.now(UTC)
    row.state, row.attempts = "pending", 0
    if row.claimed_by is None:
        row.next_attempt_at = now
    log.warning(
        "outbox requeued id=%s channel=%s number=%s", row.id, row.channel, row.incident_number
    )
    return True
