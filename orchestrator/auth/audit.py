"""The audit log: writing an API request's entry, reading entries with filters."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import AuditEntry
from orchestrator.db.session import session_scope

# Requests with these methods are reads: audited only when refused (401/403).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _text(value: str, limit: int) -> str:
    """``value`` as PostgreSQL can store it: NUL shown as ``\\x00`` (a text column refuses
    NUL, and an entry must not be lost because a request path held one), cut at ``limit``."""
    return value.replace("\x00", "\\x00")[:limit]


def _clean(value: Any) -> Any:
    """``value`` (a JSON detail) with NUL replaced in every string, keys included."""
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:100]
    except (OSError, KeyError):
        return "cli"


def record_cli(
    session: Session, *, action: str, target: str, detail: dict[str, Any] | None = None
) -> None:
    """An entry for a change the CLI makes in the database directly (in its transaction)."""
    session.add(
        AuditEntry(
            actor=_text(cli_actor(), 100),
            action=_text(action, 64),
            target=_text(target, 255),
            detail=_clean(detail or {}),
        )
    )


def should_record(method: str, status: int) -> bool:
    return method not in SAFE_METHODS or status in (401, 403)


def record_request(
    factory: sessionmaker[Session],
    *,
    actor: str,
    role: str | None,
    token_id: int | None,
    method: str,
    route: str | None,
    path: str,
    status: int,
    client: str | None,
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """One ``http`` entry: the path without its query string (which may hold secrets) and
    never the body; ``at``: when the request was answered (default now)."""
    record_requests(
        factory,
        [
            {
                "actor": actor,
                "role": role,
                "token_id": token_id,
                "method": method,
                "route": route,
                "path": path,
                "status": status,
                "client": client,
                "detail": detail,
                "at": at,
            }
        ],
    )


def record_requests(factory: sessionmaker[Session], entries: list[dict[str, Any]]) -> None:
    """Several ``http`` entries (the fields of :func:`record_request`) in one transaction, in
    order, each at its own ``at`` (entries written late, after a database outage)."""
    with session_scope(factory) as s:
        for e in entries:
            client, route = e.get("client"), e.get("route")
            s.add(
                AuditEntry(
                    at=e.get("at") or datetime.now(UTC),
                    actor=_text(e["actor"], 100),
                    action="http",
                    target=_text(e["path"], 255),
                    detail=_clean(e.get("detail") or {}),
                    role=e.get("role"),
                    token_id=e.get("token_id"),
                    method=_text(e["method"], 8),
                    route=_text(route, 255) if route else None,
                    status=e["status"],
                    client=_text(client, 64) if client else None,
                )
            )


def query(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    method: str | None = None,
    status: int | None = None,
    token_id: int | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[AuditEntry]:
    """Entries newest first; ``action`` and ``target`` match as prefixes; a time without a
    zone is UTC."""
    since = since.replace(tzinfo=UTC) if since and since.tzinfo is None else since
    until = until.replace(tzinfo=UTC) if until and until.tzinfo is None else until
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc())
    if actor is not None:
        stmt = stmt.where(AuditEntry.actor == actor)
    if action is not None:
        stmt = stmt.where(AuditEntry.action.startswith(action, autoescape=True))
    if method is not None:
        stmt = stmt.where(AuditEntry.method == method.upper())
    if status is not None:
        stmt = stmt.where(AuditEntry.status == status)
    if token_id is not None:
        stmt = stmt.where(AuditEntry.token_id == token_id)
    if target is not None:
        stmt = stmt.where(AuditEntry.target.startswith(target, autoescape=True))
    if since is not None:
        stmt = stmt.where(AuditEntry.at >= since)
    if until is not None:
        stmt = stmt.where(AuditEntry.at < until)
    return list(session.scalars(stmt.limit(limit).offset(offset)))
