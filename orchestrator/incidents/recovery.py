"""Verified recovery (SPEC §6), acting on the store: an active automatic ticket whose tenant
has recovered — for a mass incident, each of its children's tenants — moves to
``solution_provided`` with an automatic comment that says what recovered and when.

One rule for every path (``correlation.tenant_recovered``): none of the ticket's Alertmanager
alerts firing, every monitor of its tenant UP, and that for the recovery hold — counted from
the later of the last alert's resolution (its ``endsAt``) and the last monitor coming UP. The
periodic ``check-recovery`` applies it to every active ticket; the Alertmanager intake applies
it to the ticket whose alert it just resolved (solved there only when the hold has already
passed, else by a later ``check-recovery``). The fleet-level ticket of unknown tenants has no
tenant and so no monitors: its alerts alone decide. The comment is ``correlation``'s too."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from monitors.state import MonitorStatus
from orchestrator.db.models import AlertRecord, Host, Incident, MonitorRecord, UTCDateTime
from orchestrator.fleet.host_health import OK
from orchestrator.incidents.alertmanager import UNKNOWN_TENANTS_KEY
from orchestrator.incidents.correlation import (
    HOST_PREFIX,
    MASS_PREFIX,
    MonitorState,
    Recovered,
    TenantHealth,
    Thresholds,
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
                Incident.open_key == UNKNOWN_TENANTS_KEY,
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


def tenant_health(s: Session, tickets: Iterable[Incident]) -> dict[str, TenantHealth]:
    """Per tenant of ``tickets`` (``""`` for tickets without one): its monitors and the
    tickets' firing and resolved alerts, with the last resolution's time."""
    by_tenant: dict[str, list[int]] = {}
    for t in tickets:
        by_tenant.setdefault(t.tenant or "", []).append(t.id)
    if not by_tenant:
        return {}
    monitors: dict[str, list[MonitorRecord]] = {}
    named = [tenant for tenant in by_tenant if tenant]
    for r in s.scalars(select(MonitorRecord).where(MonitorRecord.tenant.in_(named))):
        monitors.setdefault(r.tenant, []).append(r)
    ids = [i for group in by_tenant.values() for i in group]
    alerts: dict[tuple[int, str], tuple[int, datetime | None]] = {}
    for incident_id, status, count, last in s.execute(
        select(
            AlertRecord.incident_id,
            AlertRecord.status,
            func.count(),
            func.max(AlertRecord.ends_at, type_=UTCDateTime()),
        )
        .where(AlertRecord.incident_id.in_(ids))
        .group_by(AlertRecord.incident_id, AlertRecord.status)
    ):
        if incident_id is not None:
            alerts[(incident_id, status)] = (count, last)
    out = {}
    for tenant, group in by_tenant.items():
        rows = monitors.get(tenant, [])
        resolved = [alerts[(i, "resolved")] for i in group if (i, "resolved") in alerts]
        ends = [last for _, last in resolved if last is not None]
        out[tenant] = TenantHealth(
            monitors=tuple(
                MonitorState(r.name, r.status == int(MonitorStatus.UP), r.changed_at) for r in rows
            ),
            firing_alerts=sum(alerts.get((i, "firing"), (0, None))[0] for i in group),
            resolved_alerts=sum(count for count, _ in resolved),
            resolved_at=max(ends) if ends else None,
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
                    tenant=ticket.tenant or str(event.data.get("unknown_tenant", "")),
                    name=str(event.data.get("name") or event.data.get("monitor")),
                    down_since=datetime.fromisoformat(down) if down else None,
                    up_since=datetime.fromisoformat(event.data["up_since"]),
                    kind="alert" if event.data.get("alert") else "monitor",
                )
            )
    return out
