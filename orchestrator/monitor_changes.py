"""``monitor_changes`` in the database: reading a monitor's changes, and their retention.

Every monitor status change is a row (``orchestrator.change_writer`` writes them, through
``IncidentEngine.on_monitor_changes``). The leader prunes the rows older than
``CPDOPS_MONITOR_CHANGES_RETENTION_DAYS`` (default 30) every ``PRUNE_INTERVAL_S``, in batches
of ``PRUNE_BATCH`` rows, one transaction each, so a large backlog never holds one long
transaction (nor a lock on the whole table) and the monitors' writes go on between batches.

A row is pruned only when both its ``at`` (when the change happened) and its ``written_at``
(when it was written) are older than the retention: the row is the idempotency guard of its
change (a change written again after an ambiguous commit is recognised by its monitor and
``at``), so it must outlive every retry of that change. Retries come within seconds, and a
change that waited in memory through a long database outage is written with its old ``at``
but a fresh ``written_at``, so it is kept for the retention from then on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from monitors.state import MonitorStatus
from orchestrator.db.models import MonitorChange
from orchestrator.db.session import session_scope

PRUNE_BATCH = 5000
PRUNE_INTERVAL_S = 3600.0
# At most this many batches a run: a backlog larger than this is pruned over several runs.
PRUNE_MAX_BATCHES = 200


def cutoff(now: datetime, retention_days: float) -> datetime:
    """Rows older than this (``at`` and ``written_at``) are pruned."""
    if retention_days <= 0:
        raise ValueError("retention_days must be > 0")
    return now - timedelta(days=retention_days)


def prune(
    factory: sessionmaker[Session],
    retention_days: float,
    *,
    now: datetime | None = None,
    batch: int = PRUNE_BATCH,
    max_batches: int = PRUNE_MAX_BATCHES,
) -> int:
    """Delete the rows older than the retention, ``batch`` rows a transaction, at most
    ``max_batches`` transactions; the number of rows deleted."""
    if batch < 1 or max_batches < 1:
        raise ValueError("batch and max_batches must be >= 1")
    limit = cutoff(now or datetime.now(UTC), retention_days)
    deleted = 0
    for _ in range(max_batches):
        with session_scope(factory) as s:
            ids = list(
                s.scalars(
                    select(MonitorChange.id)
                    .where(MonitorChange.at < limit, MonitorChange.written_at < limit)
                    .order_by(MonitorChange.id)
                    .limit(batch)
                )
            )
            if ids:
                s.execute(delete(MonitorChange).where(MonitorChange.id.in_(ids)))
        deleted += len(ids)
        if len(ids) < batch:
            break
    return deleted


@dataclass(frozen=True)
class Change:
    id: int
    monitor: str
    tenant: str
    old: int
    new: int
    reason: str
    at: datetime
    written_at: datetime


def status_name(value: int) -> str:
    """``up``, ``down``, ``pending`` or ``maintenance`` (the number itself if unknown)."""
    try:
        return MonitorStatus(value).name.lower()
    except ValueError:
        return str(value)


def as_dict(change: Change) -> dict[str, object]:
    """The change as the API shows it: statuses by name."""
    return {
        "id": change.id,
        "monitor": change.monitor,
        "tenant": change.tenant,
        "old": status_name(change.old),
        "new": status_name(change.new),
        "reason": change.reason,
        "at": change.at,
        "written_at": change.written_at,
    }


def query(
    session: Session,
    monitor_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Change]:
    """A monitor's changes, newest first (by ``at``); ``since`` inclusive, ``until``
    exclusive; a time without a zone is UTC."""
    since = since.replace(tzinfo=UTC) if since and since.tzinfo is None else since
    until = until.replace(tzinfo=UTC) if until and until.tzinfo is None else until
    stmt = select(MonitorChange).where(MonitorChange.monitor_id == monitor_id)
    if since is not None:
        stmt = stmt.where(MonitorChange.at >= since)
    if until is not None:
        stmt = stmt.where(MonitorChange.at < until)
    stmt = stmt.order_by(MonitorChange.at.desc(), MonitorChange.id.desc())
    return [
        Change(r.id, r.monitor_id, r.tenant, r.old, r.new, r.reason, r.at, r.written_at)
        for r in session.scalars(stmt.limit(limit).offset(offset))
    ]


def exists(session: Session, monitor_id: str) -> bool:
    """Whether any change of the monitor is stored (a deleted monitor's changes remain)."""
    found = session.scalar(
        select(MonitorChange.id).where(MonitorChange.monitor_id == monitor_id).limit(1)
    )
    return found is not None
