"""The Alertmanager intake's store part: one body applied in one transaction, one intake (or
correlation, or recovery check) at a time per database. The decisions are ``alertmanager``'s.

A tenant's firing alert opens or joins the tenant's incident (``tenant:<slug>``, the ticket a
monitor DOWN opens) with the alert as an evidence entry, and its state goes into the ``alerts``
table; the engine correlates after the transaction. A resolved alert marks its row resolved and
puts a ``recovered`` entry on the ticket, then the ticket is checked by the one recovery rule
(``recovery.verify_recovery``, the rule of ``check-recovery`` too): it is solved here only when
its alerts were resolved, and its tenant's monitors UP, for ``recovery_hold`` already (a late
delivery, a hold of 0 s); otherwise ``check-recovery`` solves it once the hold has passed.

The tenant label is trusted only when it names a registered tenant (the ``tenants`` table,
read once per body). Alerts of unknown tenants join one fleet-level ticket
(``fleet:unknown-tenants``, the same path, with no tenant and no correlation) or, with
``unknown_tenants="refuse"``, are refused one by one (``IntakeResult.refused``). Alerts without
a tenant (or declaring a mass incident) keep their own ``am:<fingerprint>`` tickets.

What of an alert is written — ticket text, evidence, timeline entries, the ``alerts`` row — is
redacted by the caller's redactor of the body's session (the engine's, with the secrets cpdops
knows; read once per body), so a label holding a tenant's DB password bare is stored as ``***``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import AlertRecord, Incident, IncidentEvent, Tenant
from orchestrator.db.session import session_scope
from orchestrator.incidents.alertmanager import (
    AlertmanagerAlert,
    AlertmanagerWebhook,
    AlertState,
    Draft,
    Known,
    UnknownTenants,
    alert_name,
    as_utc,
    decide,
    decide_alert,
    dedup_key,
    draft,
    ends_at,
    fingerprint,
    is_tenant_failure,
    printable,
    resolution_comment,
    scope,
)
from orchestrator.incidents.correlation import Thresholds
from orchestrator.incidents.locks import one_writer
from orchestrator.incidents.recovery import verify_recovery
from orchestrator.incidents.redact import PATTERNS_ONLY, Redactor
from orchestrator.incidents.tickets import ACTIVE, STATUS_LABELS, add_event, open_or_join

log = logging.getLogger(__name__)

AUTHOR = "alertmanager"
SOURCE = "alertmanager"
EVENT_KIND = "evidence"


@dataclass(frozen=True)
class Refused:
    """An alert of an unknown tenant, refused (``unknown_tenants="refuse"``)."""

    fingerprint: str  # escaped, like the label
    tenant: str  # the label, escaped
    reason: str


@dataclass
class IntakeResult:
    created: list[str] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    ignored: int = 0
    refused: list[Refused] = field(default_factory=list)
    created_types: list[str] = field(default_factory=list)
    # A tenant's alert fired (also a repeat): correlate after the transaction.
    correlate: bool = False
    # Mass incidents whose child was solved here: check their recovery.
    parents: set[int] = field(default_factory=set)


def ingest(
    factory: sessionmaker[Session],
    body: AlertmanagerWebhook,
    *,
    system_id: str,
    now: datetime,
    thresholds: Callable[[Session], Thresholds],
    unknown_tenants: UnknownTenants = "fleet",
    redactor: Callable[[Session], Redactor] = lambda _s: PATTERNS_ONLY,
) -> IntakeResult:
    """Apply every alert of ``body`` in one transaction; nothing of it is kept on an error.
    ``thresholds`` reads the fleet file's ``incidents`` (the recovery hold); ``redactor`` gives
    the redactor of what is written (the engine's: with the known secrets)."""
    result = IntakeResult()
    with session_scope(factory) as s:
        # Read, decide, write: one intake at a time (also across replicas), so two deliveries
        # of one body cannot both see the alert as new.
        one_writer(s)
        registered = set(s.scalars(select(Tenant.slug)))
        hold = Recheck(thresholds)
        red = redactor(s)
        for alert in body.alerts:
            d = draft(alert, registered, red)
            if d.unknown_tenant is not None and unknown_tenants == "refuse":
                action = "refused"
                result.refused.append(
                    Refused(printable(fingerprint(alert)), d.unknown_tenant, REFUSED)
                )
            elif is_tenant_failure(d):
                action = _tenant_alert(s, alert, d, system_id, now, result, hold, red)
            else:
                action = _own_ticket(s, alert, d, system_id, now, result, red)
            s.flush()
            log.info(
                "alertmanager alert=%s tenant=%s status=%s action=%s",
                printable(fingerprint(alert)),
                d.tenant if d.unknown_tenant is None else f"unknown:{d.unknown_tenant}",
                alert.status,
                action,
            )
    return result


REFUSED = "tenant not in the registry"


class Recheck:
    """The recovery rule's thresholds, read once per body when a resolution needs them."""

    def __init__(self, read: Callable[[Session], Thresholds]) -> None:
        self._read = read
        self._value: Thresholds | None = None

    def __call__(self, s: Session) -> Thresholds:
        if self._value is None:
            self._value = self._read(s)
        return self._value


def _tenant_alert(
    s: Session,
    alert: AlertmanagerAlert,
    d: Draft,
    system_id: str,
    now: datetime,
    result: IntakeResult,
    thresholds: Recheck,
    red: Redactor,
) -> str:
    """A tenant's alert (``tenant:<slug>``), or an unknown tenant's (the fleet-level ticket:
    the same states, no correlation)."""
    fp = fingerprint(alert)
    starts = as_utc(alert.startsAt)
    rec = s.get(AlertRecord, fp)
    known = AlertState(rec.status, rec.starts_at) if rec is not None else None
    action = decide_alert(alert.status, starts, known)
    if alert.status == "firing" and d.tenant is not None:
        result.correlate = True
    if action in ("repeat", "stale"):
        result.ignored += 1
        return action
    if rec is None:
        rec = AlertRecord(fingerprint=fp, status=alert.status, starts_at=starts, seen_at=now)
        s.add(rec)
    where = scope(alert, d.tenant, red)
    rec.alertname = alert_name(alert, red)
    rec.tenant, rec.host, rec.db_server = d.tenant, where.host, where.db_server
    rec.updated_at = now
    if action == "open":
        ticket, created = open_or_join(
            s,
            system_id=system_id,
            open_key=d.open_key if d.tenant is None else f"tenant:{d.tenant}",
            type="incident",
            subject=d.subject,
            description=d.description,
            author=AUTHOR,
            source=SOURCE,
            tenant=d.tenant,
            evidence=d.evidence,
        )
        s.flush()
        rec.status, rec.starts_at, rec.ends_at, rec.seen_at = "firing", starts, None, now
        rec.incident_id = ticket.id
        if created:
            result.created.append(ticket.number)
            result.created_types.append("incident")
        elif ticket.number not in result.created and ticket.number not in result.joined:
            result.joined.append(ticket.number)
        return action
    ended = ends_at(alert) or now
    if action == "record":  # resolved, never seen firing: kept so a late copy changes nothing
        rec.status, rec.starts_at, rec.ends_at = "resolved", starts, ended
        result.ignored += 1
        return action
    # resolve
    rec.status, rec.ends_at = "resolved", ended
    solved = s.get(Incident, rec.incident_id) if rec.incident_id is not None else None
    if solved is None or solved.status == "closed":
        result.ignored += 1
        return action
    add_event(
        s,
        solved,
        author=AUTHOR,
        kind="recovered",
        body=red.text(f"Alert {rec.alertname or fp} resolved"),
        data=red.value(
            {
                "alert": fp,
                "name": rec.alertname or fp,
                "down_since": rec.starts_at.isoformat(),
                "up_since": ended.isoformat(),
                **({"unknown_tenant": d.unknown_tenant} if d.unknown_tenant is not None else {}),
            }
        ),
    )
    s.flush()
    # The one recovery rule (check-recovery's): solved now only if the hold has passed.
    if verify_recovery(s, thresholds(s), now, author=AUTHOR, only=[solved.id]):
        result.resolved.append(solved.number)
        if solved.parent_id is not None:
            result.parents.add(solved.parent_id)
    return action


# --------------------------------------------------------------------------- own tickets


def _known(session: Session, key: str) -> tuple[Incident | None, Known | None]:
    incident = session.scalars(select(Incident).where(Incident.open_key == key)).first()
    if incident is None or incident.status not in ACTIVE:
        return incident, None
    events = session.scalars(
        select(IncidentEvent)
        .where(
            IncidentEvent.incident_id == incident.id,
            IncidentEvent.author == AUTHOR,
            IncidentEvent.kind == EVENT_KIND,
        )
        .order_by(IncidentEvent.id.desc())
    )
    last = next((e.data.get("startsAt") for e in events if e.data.get("startsAt")), None)
    return incident, Known(incident.number, last)


def provide_solution(session: Session, incident: Incident, comment: str) -> None:
    """Move ``incident`` to ``solution_provided`` with ``comment``. Unlike
    ``tickets.change_status`` (which frees the open key only on ``closed``), the open key is
    released here, so the alert firing again opens a new ticket rather than joining the
    solved one."""
    old = incident.status
    incident.status = "solution_provided"
    incident.open_key = None
    add_event(
        session,
        incident,
        author=AUTHOR,
        kind="status",
        body=comment,
        data={
            "from": old,
            "to": "solution_provided",
            "label_ru": STATUS_LABELS["solution_provided"]["ru"],
        },
    )


def _own_ticket(
    s: Session,
    alert: AlertmanagerAlert,
    d: Draft,
    system_id: str,
    now: datetime,
    result: IntakeResult,
    red: Redactor,
) -> str:
    """A tenant-less (or mass-declaring) alert and its ``am:<fingerprint>`` ticket."""
    key = dedup_key(alert)
    incident, known = _known(s, key)
    action = decide(alert, known)
    if action in ("open", "join"):
        ticket, created = open_or_join(
            s,
            system_id=system_id,
            open_key=key,
            type=d.type,
            subject=d.subject,
            description=d.description,
            author=AUTHOR,
            source=SOURCE,
            tenant=d.tenant,
            evidence=d.evidence,
        )
        s.flush()
        (result.created if created else result.joined).append(ticket.number)
        if created:
            result.created_types.append(d.type)
        _remember(s, alert, d, ticket.id, now, red)
    elif action == "resolve":
        assert incident is not None
        provide_solution(s, incident, resolution_comment(alert, red))
        result.resolved.append(incident.number)
        _remember(s, alert, d, incident.id, now, red)
    else:
        result.ignored += 1
    return action


def _remember(
    s: Session, alert: AlertmanagerAlert, d: Draft, incident_id: int, now: datetime, red: Redactor
) -> None:
    """Keep an own-ticket alert's state too (it takes no part in correlation: its ticket is
    no tenant incident)."""
    fp = fingerprint(alert)
    rec = s.get(AlertRecord, fp)
    starts = as_utc(alert.startsAt)
    if rec is None:
        rec = AlertRecord(fingerprint=fp, status=alert.status, starts_at=starts, seen_at=now)
        s.add(rec)
    where = scope(alert, d.tenant, red)
    rec.alertname = alert_name(alert, red)
    rec.tenant, rec.host, rec.db_server = d.tenant, where.host, where.db_server
    rec.status, rec.starts_at, rec.incident_id, rec.updated_at = (
        alert.status,
        starts,
        incident_id,
        now,
    )
    rec.ends_at = (ends_at(alert) or now) if alert.status == "resolved" else None
