"""What the customer intakes (Telegram, inbound mail) share: exactly-once receipts, finding a
tenant by a contact's address, and which ticket a message may follow up on.

* A **receipt** ``(source, external_id)`` — ``("telegram", "<update_id>")``,
  ``("email", "<Message-ID>")`` — is written in the transaction that creates the ticket or the
  comment; its unique constraint makes a retried delivery (Telegram resends an update until it
  gets 200, a mail server resends a mail it is unsure of) add nothing, also when two deliveries
  race.
* A message **follows up** on a ticket it names (``[Ticket#<number>]``, ``#<number>``) when the
  ticket is its sender's tenant's, or one that this same sender (chat, address) opened or
  commented before through this intake (a receipt says so) — which is how a sender that is no
  tenant's contact follows up. Any other number is just text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator.db.models import Incident, IntakeReceipt, Tenant
from orchestrator.incidents.numbers import is_valid_number

MAX_EXTERNAL_ID = 255  # IntakeReceipt.external_id
_MENTION = re.compile(r"(?:\[Ticket#|Ticket#|#)(\d{16})(?!\d)", re.IGNORECASE)


# --------------------------------------------------------------------------- pure parts


def mentioned_numbers(text: str) -> list[str]:
    """Ticket numbers named in ``text`` (``[Ticket#N]``, ``Ticket#N``, ``#N``) with a valid
    check digit, in order, each once."""
    found = (m.group(1) for m in _MENTION.finditer(text))
    return list(dict.fromkeys(n for n in found if is_valid_number(n)))


def tenant_for(tenants: Iterable[Tenant], field: str, address: str) -> str | None:
    """The slug of the one tenant with a contact whose ``field`` equals ``address``
    (e-mail: case-insensitive); None when no tenant — or more than one — lists it."""
    wanted = address.strip().lower()
    if not wanted:
        return None
    slugs = {
        t.slug
        for t in tenants
        for c in t.contacts or []
        if isinstance(c, dict) and str(c.get(field) or "").strip().lower() == wanted
    }
    return slugs.pop() if len(slugs) == 1 else None


def receipt_id(external_id: str) -> str:
    """``external_id`` as stored: as it is, or ``sha256:<hex>`` of it when it is too long."""
    if len(external_id) <= MAX_EXTERNAL_ID:
        return external_id
    return "sha256:" + hashlib.sha256(external_id.encode("utf-8", "replace")).hexdigest()


def without_nul(text: str) -> str:
    """``text`` without NUL characters (PostgreSQL text cannot hold them)."""
    return text.replace("\x00", "")


# --------------------------------------------------------------------------- store parts


def seen(session: Session, source: str, external_id: str) -> bool:
    return (
        session.scalars(
            select(IntakeReceipt.id).where(
                IntakeReceipt.source == source,
                IntakeReceipt.external_id == receipt_id(external_id),
            )
        ).first()
        is not None
    )


def record(
    session: Session, source: str, external_id: str, *, number: str | None, sender: str | None
) -> IntakeReceipt | None:
    """Write the receipt in the caller's transaction; None when it exists already (the message
    was taken in before, or a racing delivery of it just was)."""
    receipt = IntakeReceipt(
        source=source,
        external_id=receipt_id(external_id),
        incident_number=number,
        sender=sender[:255] if sender else None,
    )
    try:
        with session.begin_nested():
            session.add(receipt)
            session.flush()
    except IntegrityError:
        return None
    return receipt


def tenant_of_contact(session: Session, field: str, address: str) -> str | None:
    return tenant_for(session.scalars(select(Tenant).order_by(Tenant.slug)), field, address)


def follow_up(
    session: Session,
    numbers: Iterable[str],
    *,
    tenant: str | None,
    sources: tuple[str, ...],
    sender: str,
) -> Incident | None:
    """The first ticket of ``numbers`` that a message from ``sender`` (of ``tenant``) may
    comment on, or None (see the module docstring)."""
    for number in numbers:
        incident = session.scalars(select(Incident).where(Incident.number == number)).first()
        if incident is None:
            continue
        if tenant is not None and incident.tenant == tenant:
            return incident
        own = session.scalars(
            select(IntakeReceipt.id).where(
                IntakeReceipt.source.in_(sources),
                IntakeReceipt.sender == sender,
                IntakeReceipt.incident_number == number,
            )
        ).first()
        if own is not None:
            return incident
    return None


def ticket_of(session: Session, source: str, external_id: str) -> str | None:
    """The ticket a receipt points at (e.g. the one a replied-to Telegram message made)."""
    return session.scalars(
        select(IntakeReceipt.incident_number).where(
            IntakeReceipt.source == source, IntakeReceipt.external_id == receipt_id(external_id)
        )
    ).first()
