"""Attachments on tickets: bytes kept in the database with their size and SHA-256."""

from __future__ import annotations

import hashlib
import re
import unicodedata

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.db.models import Incident, IncidentAttachment
from orchestrator.errors import NotFoundError, TooLarge
from orchestrator.incidents.tickets import add_event

MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")


def too_large(size: int, limit: int = MAX_ATTACHMENT_BYTES) -> TooLarge:
    return TooLarge(f"screenshot: an attachment may be at most {limit} bytes, got {size} or more")


def clean_filename(name: str | None) -> str:
    """A file name safe to store and to put in a header: no path, no control characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip(" .")
    return base[:255] or "attachment"


def clean_content_type(value: str | None) -> str:
    main = (value or "").split(";", 1)[0].strip().lower()
    return main if len(main) <= 255 and _CONTENT_TYPE.match(main) else "application/octet-stream"


def add_attachment(
    session: Session,
    incident: Incident,
    *,
    filename: str | None,
    content_type: str | None,
    content: bytes,
    author: str,
    limit: int = MAX_ATTACHMENT_BYTES,
) -> IncidentAttachment:
    if len(content) > limit:
        raise too_large(len(content), limit)
    att = IncidentAttachment(
        incident=incident,
        filename=clean_filename(filename),
        content_type=clean_content_type(content_type),
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        content=content,
        author=author,
    )
    session.add(att)
    session.flush()
    add_event(
        session,
        incident,
        author=author,
        kind="attachment",
        body=att.filename,
        data={"attachment": att.id, "size": att.size, "content_type": att.content_type},
    )
    return att


def get_attachment(session: Session, incident: Incident, attachment_id: int) -> IncidentAttachment:
    att = session.scalars(
        select(IncidentAttachment).where(
            IncidentAttachment.id == attachment_id, IncidentAttachment.incident_id == incident.id
        )
    ).first()
    if att is None:
        raise NotFoundError(f"incident {incident.number} has no attachment {attachment_id}")
    return att
