"""Verified recovery (SPEC §6), acting on the store: an active automatic ticket whose
monitors — for a mass incident, those of all its children's tenants — are all UP for the
recovery hold moves to ``solution_provided`` with an automatic comment that says what recovered
and when. The decision and the comment are the pure ``correlation`` functions."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from monitors.state import MonitorStatus
from orchestrator.db.models import Incident, MonitorRecord
from orchestrator.incidents.correlation import (
    MASS_PREFIX,
    MonitorState,
    Recovered,
    Thresholds,
    recovery_comment,
    recovery_verified,
)
from orchestrator.incidents.tickets import change_status
from orchestrator.incidents.workflow import ACTIVE

log = logging.getLogger(__name__)


def verify_recovery(s: Session, thresholds: Thresholds, now: datetime, *, author: str) -> list[str]:
    """Solve every active tenant or correlated mass incident whose recovery is verified at
    ``now``; returns their numbers. The caller commits (and keeps other writers out)."""
    solved: list[str] = []
    tickets = list(
        s.scalars(
            select(Incident)
            .where(
                Incident.status.in_(ACTIVE),
                or_(
                    Incident.open_key.like("tenant:%"),
                    Incident.open_key.like(f"{MASS_PREFIX}%"),
                ),
            )
            .order_by(Incident.id)
        )
    )
    for ticket in tickets:
        covered = (
            list(s.scalars(select(Incident).where(Incident.parent_id == ticket.id)))
            if ticket.type == "mass_incident"
            else [ticket]
        )
        tenants = {t.tenant for t in covered if t.tenant is not None}
        if not tenants:
            continue
        records = list(s.scalars(select(MonitorRecord).where(MonitorRecord.tenant.in_(tenants))))
        states = [
            MonitorState(r.name, r.status == int(MonitorStatus.UP), r.changed_at) for r in records
        ]
        if not recovery_verified(states, thresholds.recovery_hold_s, now):
            continue
        recovered = _recovered(covered) or [
            Recovered(r.tenant, r.name, None, r.changed_at) for r in records
        ]
        comment = recovery_comment(recovered, thresholds.recovery_hold_s, now)
        if change_status(s, ticket, "solution_provided", author=author, comment=comment):
            solved.append(ticket.number)
            log.info("recovery verified number=%s tenants=%d", ticket.number, len(tenants))
    return solved


def _recovered(tickets: list[Incident]) -> list[Recovered]:
    """What the tickets' timelines say recovered (their ``recovered`` entries)."""
    out = []
    for ticket in tickets:
        for event in ticket.events:
            if event.kind != "recovered" or not event.data.get("up_since"):
                continue
            down = event.data.get("down_since")
            out.append(
                Recovered(
                    tenant=ticket.tenant or "",
                    name=str(event.data.get("name") or event.data.get("monitor")),
                    down_since=datetime.fromisoformat(down) if down else None,
                    up_since=datetime.fromisoformat(event.data["up_since"]),
                )
            )
    return out
