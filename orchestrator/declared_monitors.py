"""Declared monitors: the ones somebody wrote down (API, fleet file), stored in the database.

Generated monitors (from the tenant registry and the container labels) are not stored here;
they are made again at every sync. Both kinds meet in :func:`orchestrator.context.apply_monitors`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from monitors.probe import MonitorSpec
from orchestrator.db.models import AuditEntry, DeclaredMonitor, MonitorMinute, MonitorRecord
from orchestrator.errors import CpdopsError
from orchestrator.fleet.fleetfile import MonitorDeclaration, resolve_secret

log = logging.getLogger(__name__)


def row_values(decl: MonitorDeclaration) -> dict[str, Any]:
    """The stored columns of a declaration (all but id, source and the timestamps)."""
    return {
        "name": decl.name,
        "tenant": decl.tenant,
        "host": decl.host or "",
        "kind": decl.kind,
        "target": decl.target,
        "interval_s": decl.interval,
        "timeout_s": decl.timeout,
        "failure_threshold": decl.failure_threshold,
        "recovery_threshold": decl.recovery_threshold,
        "expect_status": list(decl.expect_status) if decl.expect_status is not None else None,
        "options": dict(decl.options),
    }


def add(session: Session, decl: MonitorDeclaration, *, source: str, actor: str) -> DeclaredMonitor:
    """Store a new declared monitor; the caller has checked that its id is free."""
    row = DeclaredMonitor(id=decl.id, source=source, created_by=actor, **row_values(decl))
    session.add(row)
    session.add(
        AuditEntry(
            actor=actor,
            action="monitor.declare",
            target=decl.id,
            detail={"kind": decl.kind, "source": source},
        )
    )
    return row


def sync_fleet(
    session: Session, declared: Iterable[MonitorDeclaration], *, prune: bool
) -> tuple[list[str], list[str], list[str], list[str]]:
    """Make the fleet file's ``monitors.declared`` true; returns (created, updated, unchanged,
    removed) ids. A monitor declared through the API with the same id is taken over by the
    file; with ``prune``, monitors the file declared earlier and no longer lists are removed
    (those declared through the API are never pruned)."""
    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    removed: list[str] = []
    wanted = {d.id: d for d in declared}
    for monitor_id, decl in wanted.items():
        row = session.get(DeclaredMonitor, monitor_id)
        values = {**row_values(decl), "source": "fleet"}
        if row is None:
            session.add(DeclaredMonitor(id=monitor_id, created_by="fleet", **values))
            created.append(monitor_id)
            continue
        changed = {k: v for k, v in values.items() if getattr(row, k) != v}
        if not changed:
            unchanged.append(monitor_id)
            continue
        for key, value in changed.items():
            setattr(row, key, value)
        row.updated_at = datetime.now(UTC)
        updated.append(monitor_id)
    if prune:
        stale = session.scalars(
            select(DeclaredMonitor).where(
                DeclaredMonitor.source == "fleet", DeclaredMonitor.id.not_in(list(wanted))
            )
        )
        for row in list(stale):
            removed.append(row.id)
            forget(session, row.id)
    return created, updated, unchanged, removed


def forget(session: Session, monitor_id: str) -> None:
    """Remove a declared monitor with its last state and its history."""
    session.execute(delete(DeclaredMonitor).where(DeclaredMonitor.id == monitor_id))
    session.execute(delete(MonitorRecord).where(MonitorRecord.id == monitor_id))
    session.execute(delete(MonitorMinute).where(MonitorMinute.monitor_id == monitor_id))


def audit_removal(session: Session, monitor_id: str, *, source: str, actor: str) -> None:
    session.add(
        AuditEntry(
            actor=actor, action="monitor.delete", target=monitor_id, detail={"source": source}
        )
    )


def specs(session: Session, defaults: Mapping[str, Any]) -> list[MonitorSpec]:
    """The declared monitors as specs, defaults filled in and the fleet file's ``${VAR}``
    references resolved (:func:`resolved_target`); a monitor whose variable is unset (or that
    no longer validates) is skipped with a warning."""
    out = []
    for row in session.scalars(select(DeclaredMonitor).order_by(DeclaredMonitor.id)):
        try:
            out.append(to_spec(row, defaults))
        except (CpdopsError, ValueError) as exc:
            log.warning("declared monitor skipped monitor=%s: %s", row.id, exc)
    return out


def resolved_target(row: DeclaredMonitor) -> str:
    """The target to probe: ``${VAR}`` references resolved for a monitor of the fleet file
    (whose references ``cpdops apply`` checked against its ``environment`` list); one declared
    any other way (the API) is never resolved: a ``${`` in it (stored before the API refused
    them) skips the monitor, so an API token cannot make the server send its environment."""
    if row.source == "fleet":
        return resolve_secret(row.target, key=f"monitor {row.id} target")
    if "${" in row.target:
        raise ValueError(
            f"its target holds '${{' and it was declared through the {row.source}: references "
            "are resolved only in the fleet file; delete it and declare it again"
        )
    return row.target


def to_spec(row: DeclaredMonitor, defaults: Mapping[str, Any]) -> MonitorSpec:
    interval = row.interval_s if row.interval_s is not None else float(defaults["interval_s"])
    timeout = row.timeout_s if row.timeout_s is not None else float(defaults["timeout_s"])
    extra: dict[str, Any] = {}
    if row.expect_status:
        extra["expect_status"] = tuple(row.expect_status)
    return MonitorSpec(
        id=row.id,
        name=f"{row.tenant}-{row.name}",
        tenant=row.tenant,
        host=row.host,
        kind=row.kind,
        target=resolved_target(row),
        interval_s=interval,
        timeout_s=min(timeout, interval),
        failure_threshold=row.failure_threshold or int(defaults["failure_threshold"]),
        recovery_threshold=row.recovery_threshold or int(defaults["recovery_threshold"]),
        labels={"source": row.source},
        options=dict(row.options),
        **extra,
    )
