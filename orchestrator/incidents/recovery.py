"""Verified recovery (SPEC §6), acting on the store: an active automatic ticket whose tenant
has recovered — for a mass incident, each of its children's tenants — moves to
``solution_provided`` with an automatic comment that says what recovered and when. A tenant has
recovered when none of the ticket's Alertmanager alerts is firing and all its monitors are UP for
the recovery hold (``check-recovery``), or, at the moment its last firing alert is resolved, when
none of its monitors is DOWN (the intake). The decisions and the comment are the pure
``correlation`` functions."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from monitors.state import MonitorStatus
from orchestrator.db.models import AlertRecord, Host, Incident, MonitorRecord
from orchestrator.fleet.host_health import OK
from orchestrator.incidents.correlation import (
    HOST_PREFIX,
    MASS_PREFIX,
    MonitorState,
    Recovered,
    TenantHealth,
    Thresholds,
    alerts_cleared,
    host_comment,
    host_of_key,
    recovery_comment,
    recovery_verified,
    tenant_recovered,
)
from orchestrator.incidents.tickets import change_status
from orchestrator.incidents.workflow import ACTIVE

log = logging.getLogger(__name__)


def verify_recovery(
    s: Session,
    thresholds: Thresholds,
    now: datetime,
    *,
    author: str,
    only: Collection[int] | None = None,
) -> list[str]:
    """Solve every active tenant or correlated mass incident (of the ids ``only``, if given)
    whose recovery is verified at ``now``; returns their numbers. The caller commits (and keeps
    other writers out)."""
    solved: list[str] = []
    stmt = (
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
    if only is not None:
        stmt = stmt.where(Incident.id.in_(list(only)))
    for ticket in list(s.scalars(stmt)):
        covered = (
            list(s.scalars(select(Incident).where(Incident.parent_id == ticket.id)))
            if ticket.type == "mass_incident"
            else [ticket]
        )
        health = tenant_health(s, covered)
        if not health or not all(
            tenant_recovered(h, thresholds.recovery_hold_s, now) for h in health.values()
        ):
            continue
        recovered = _recovered(covered) or [
            Recovered(r.tenant, r.name, None, r.changed_at)
            for r in s.scalars(select(MonitorRecord).where(MonitorRecord.tenant.in_(health)))
        ]
        comment = recovery_comment(recovered, thresholds.recovery_hold_s, now)
        if change_status(s, ticket, "solution_provided", author=author, comment=comment):
            solved.append(ticket.number)
            log.info("recovery verified number=%s tenants=%d", ticket.number, len(health))
    return solved


def verify_host_recovery(
    s: Session, thresholds: Thresholds, now: datetime, *, author: str
) -> list[str]:
    """Solve every active host incident whose host answers again (``hosts.status`` ok) and
    whose monitors on that host are all UP for the recovery hold (a host with no monitors: ok
    for the hold). The comment names the host's outage and the monitors, Russian then
    English. Returns the numbers solved; the caller commits."""
    solved: list[str] = []
    hold = timedelta(seconds=thresholds.recovery_hold_s)
    tickets = s.scalars(
        select(Incident)
        .where(Incident.status.in_(ACTIVE), Incident.open_key.like(f"{HOST_PREFIX}%"))
        .order_by(Incident.id)
    )
    for ticket in list(tickets):
        assert ticket.open_key is not None
        name = host_of_key(ticket.open_key)
        host = s.scalars(select(Host).where(Host.name == name)).first()
        if host is None or host.status != OK:
            continue
        back = host.status_since
        if back is None or now - back < hold:
            continue
        rows = [
            r
            for r in s.scalars(select(MonitorRecord).where(MonitorRecord.host == name))
            if r.kind != "postgres"
        ]
        states = [
            MonitorState(r.name, r.status == int(MonitorStatus.UP), r.changed_at) for r in rows
        ]
        if rows and not recovery_verified(states, thresholds.recovery_hold_s, now):
            continue
        down = _host_down_since(ticket.open_key) or ticket.created_at
        recovered = [Recovered(r.tenant, r.name, down, r.changed_at) for r in rows]
        comment = f"{host_comment(name, down, back)}\n\n" + recovery_comment(
            recovered, thresholds.recovery_hold_s, now
        )
        if change_status(s, ticket, "solution_provided", author=author, comment=comment):
            solved.append(ticket.number)
            log.info("host recovery verified number=%s host=%s", ticket.number, name)
    return solved


def _host_down_since(key: str) -> datetime | None:
    try:
        return datetime.fromisoformat(key[len(HOST_PREFIX) :].partition(":")[2])
    except ValueError:
        return None


def solve_by_alerts(s: Session, ticket: Incident, now: datetime, *, author: str) -> bool:
    """The intake's rule: a tenant incident whose last firing alert was just resolved, with
    none of the tenant's monitors DOWN, moves to solution_provided. True when it did."""
    if ticket.status not in ACTIVE or ticket.tenant is None:
        return False
    health = tenant_health(s, [ticket]).get(ticket.tenant)
    if health is None or not alerts_cleared(health):
        return False
    comment = recovery_comment(_recovered([ticket]), None, now)
    if not change_status(s, ticket, "solution_provided", author=author, comment=comment):
        return False
    log.info("alerts resolved number=%s tenant=%s", ticket.number, ticket.tenant)
    return True


def tenant_health(s: Session, tickets: Iterable[Incident]) -> dict[str, TenantHealth]:
    """Per tenant of ``tickets``: its monitors and the tickets' firing and resolved alerts."""
    by_tenant: dict[str, list[int]] = {}
    for t in tickets:
        if t.tenant is not None:
            by_tenant.setdefault(t.tenant, []).append(t.id)
    if not by_tenant:
        return {}
    monitors: dict[str, list[MonitorRecord]] = {}
    for r in s.scalars(select(MonitorRecord).where(MonitorRecord.tenant.in_(by_tenant))):
        monitors.setdefault(r.tenant, []).append(r)
    ids = [i for group in by_tenant.values() for i in group]
    alerts: dict[tuple[int, str], int] = {}
    for incident_id, status, count in s.execute(
        select(AlertRecord.incident_id, AlertRecord.status, func.count())
        .where(AlertRecord.incident_id.in_(ids))
        .group_by(AlertRecord.incident_id, AlertRecord.status)
    ):
        if incident_id is not None:
            alerts[(incident_id, status)] = count
    out = {}
    for tenant, group in by_tenant.items():
        rows = monitors.get(tenant, [])
        out[tenant] = TenantHealth(
            monitors=tuple(
                MonitorState(r.name, r.status == int(MonitorStatus.UP), r.changed_at) for r in rows
            ),
            firing_alerts=sum(alerts.get((i, "firing"), 0) for i in group),
            resolved_alerts=sum(alerts.get((i, "resolved"), 0) for i in group),
            monitors_down=sum(r.status == int(MonitorStatus.DOWN) for r in rows),
        )
    return out


def _recovered(tickets: list[Incident]) -> list[Recovered]:
    """What the tickets' timelines say recovered (their ``recovered`` entries: monitors UP
    again, alerts resolved)."""
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
                    kind="alert" if event.data.get("alert") else "monitor",
                )
            )
    return out
