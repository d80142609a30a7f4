"""API tokens: created with a role, shown once, stored as a SHA-256 hash, revocable.

A token reads ``cpd_<key_id>_<secret>``: ``key_id`` (12 hex digits) is public and finds the
row in O(1); the whole token is hashed (SHA-256; the secret has 256 random bits, so a slow
password hash adds nothing) and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.db.models import ApiToken, AuditEntry, utcnow
from orchestrator.errors import ConflictError, InputError, NotFoundError

PREFIX = "cpd_"
TOKEN_RE = re.compile(r"^cpd_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,99}$")
# last_used_at is written at most this often per token (not one write per request)
TOUCH_EVERY = timedelta(seconds=60)
UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# What the API accepts as a lifetime (its schema's pattern): what parse_duration reads, without
# spaces, leading zeros or a zero.
TOKEN_LIFETIME_PATTERN = r"^[1-9][0-9]{0,5}[mhdw]$"


class Role(IntEnum):
    """Ordered: a higher role may do everything a lower one may."""

    viewer = 1
    operator = 2
    admin = 3

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value]
        except KeyError:
            raise InputError(
                f"role: {value!r} is not one of {', '.join(r.name for r in cls)}"
            ) from None


@dataclass(frozen=True)
class Principal:
    """Who a request acts as."""

    token_id: int
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"token:{self.name}"[:100]


class TokenRefused(Exception):
    """The token is missing, malformed, unknown, expired or revoked (HTTP 401)."""

    def __init__(self, reason: str, *, name: str | None = None, token_id: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.name = name
        self.token_id = token_id


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_duration(text: str) -> timedelta:
    """``30m``, ``12h``, ``90d``, ``2w`` → a timedelta (for ``--expires``)."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*([mhdw])\s*", text)
    if not m:
        raise InputError(f"expires: {text!r} is not a duration such as 30m, 12h, 90d or 2w")
    n, unit = int(m.group(1)), m.group(2)
    if n == 0:
        raise InputError("expires: the duration must be positive")
    return timedelta(**{UNITS[unit]: n})


def is_active(token: ApiToken, now: datetime | None = None) -> bool:
    now = now or utcnow()
    return token.revoked_at is None and (token.expires_at is None or token.expires_at > now)


def create_token(
    session: Session,
    *,
    name: str,
    role: Role,
    actor: str,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """A new token and its plain text (to be shown once). Audited as ``token.create``."""
    if not NAME_RE.match(name):
        raise InputError(
            f"name: {name!r} must be 1-100 letters, digits or _.@:- starting with a letter or digit"
        )
    now = utcnow()
    if expires_at is not None and expires_at <= now:
        raise InputError("expires: the expiry is in the past")
    for other in session.scalars(select(ApiToken).where(ApiToken.name == name)):
        if is_active(other, now):
            raise ConflictError(
                f"an active token is named {name!r} (id {other.id}); revoke it or pick another name"
            )
    key_id = secrets.token_hex(6)
    plain = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiToken(
        key_id=key_id,
        secret_hash=digest(plain),
        name=name,
        role=role.name,
        created_at=now,
        created_by=actor[:100],
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    session.add(
        AuditEntry(
            actor=actor[:100],
            action="token.create",
            target=f"token/{row.id}",
            detail={
                "name": name,
                "role": role.name,
                "key_id": key_id,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
    )
    return row, plain


def find_token(session: Session, ref: str) -> ApiToken:
    """A token by id, key id or name (the name of exactly one active token)."""
    ref = ref.strip()
    if ref.isdigit() and len(ref) < 10:
        row = session.get(ApiToken, int(ref))
        if row is not None:
            return row
    row = session.scalars(select(ApiToken).where(ApiToken.key_id == ref)).first()
    if row is not None:
        return row
    named = list(session.scalars(select(ApiToken).where(ApiToken.name == ref)))
    active = [t for t in named if is_active(t)]
    if len(active) == 1:
        return active[0]
    if len(named) == 1:
        return named[0]
    if len(active) > 1:  # not reachable through create_token; kept for hand-made rows
        raise InputError(f"{len(active)} active tokens are named {ref!r}: give the id")
    raise NotFoundError(f"no token {ref!r} (give its id, key id or name)")


def revoke_token(session: Session, ref: str, *, actor: str) -> ApiToken:
    """Revoke at once (the next request with it is 401). Revoking twice is no change."""
    row = find_token(session, ref)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        row.revoked_by = actor[:100]
        session.add(
            AuditEntry(
                actor=actor[:100],
                action="token.revoke",
                target=f"token/{row.id}",
                detail={"name": row.name, "role": row.role, "key_id": row.key_id},
            )
        )
    return row


def list_tokens(session: Session, *, include_revoked: bool = True) -> list[ApiToken]:
    stmt = select(ApiToken).order_by(ApiToken.id)
    if not include_revoked:
        stmt = stmt.where(ApiToken.revoked_at.is_(None))
    return list(session.scalars(stmt))


def authenticate(session: Session, token: str, *, client: str | None = None) -> Principal:
    """The principal of a presented token, or :class:`TokenRefused` saying why."""
    m = TOKEN_RE.match(token)
    if not m:
        raise TokenRefused("malformed token (expected cpd_<id>_<secret>)")
    row = session.scalars(select(ApiToken).where(ApiToken.key_id == m.group(1))).first()
    # compare even when the key id is unknown, so timing says nothing about which part is wrong
    expected = row.secret_hash if row is not None else "0" * 64
    if not hmac.compare_digest(digest(token), expected) or row is None:
        raise TokenRefused("invalid token")
    now = utcnow()
    if row.revoked_at is not None:
        raise TokenRefused("token revoked", name=row.name, token_id=row.id)
    if row.expires_at is not None and row.expires_at <= now:
        raise TokenRefused("token expired", name=row.name, token_id=row.id)
    if row.last_used_at is None or now - row.last_used_at >= TOUCH_EVERY:
        row.last_used_at = now
        row.last_used_from = (client or "")[:64] or None
        session.commit()
    return Principal(token_id=row.id, name=row.name, role=Role[row.role])
