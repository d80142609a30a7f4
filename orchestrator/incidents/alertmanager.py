"""Alertmanager webhook v4 intake: the body's schema, the pure decisions, and the store part.

Each alert of a body is read by its own status (one body can mix firing and resolved):

=========  ==========================================  ==========================================
status     open ticket for ``am:<fingerprint>``        action
=========  ==========================================  ==========================================
firing     none                                        ``open``: a new ticket (``created``)
firing     yes, last seen ``startsAt`` is the same     ``repeat``: nothing (``ignored``)
firing     yes, another ``startsAt``                   ``join``: an evidence entry (``joined``)
resolved   yes                                         ``resolve``: ``solution_provided`` + comment
resolved   none                                        ``ignore``
=========  ==========================================  ==========================================

The dedup key is ``am:<fingerprint>`` (Alertmanager's fingerprint of the label set, or a stable
hash of the sorted labels when a sender leaves it out). The ticket type is ``mass_incident``
when the label ``severity`` is ``mass`` or ``mass_incident``, ``incident`` otherwise; the tenant
is the label ``tenant`` (or ``smartcpd_tenant``). Label and annotation values whose key contains
``password``, ``secret`` or ``token`` are never stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Incident, IncidentEvent
from orchestrator.db.session import session_scope
from orchestrator.incidents.tickets import ACTIVE, STATUS_LABELS, add_event, open_or_join

log = logging.getLogger(__name__)

AUTHOR = "alertmanager"
SOURCE = "alertmanager"
EVENT_KIND = "evidence"
MAX_BODY_BYTES = 1024 * 1024
SECRET_WORDS = ("password", "secret", "token")
MASS_SEVERITIES = ("mass", "mass_incident")
TENANT_LABELS = ("tenant", "smartcpd_tenant")
MAX_TENANT = 63  # Incident.tenant
MAX_SUBJECT = 500  # Incident.subject


# --------------------------------------------------------------------------- the body (v4)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class AlertmanagerAlert(BaseModel):
    """One alert of the webhook body."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(default="", max_length=200)

    @field_validator("labels", "annotations")
    @classmethod
    def _plain(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            _no_nul(key)
            _no_nul(item)
        tenant = next((value[k] for k in TENANT_LABELS if value.get(k)), "")
        if len(tenant) > MAX_TENANT:
            raise ValueError(f"label tenant longer than {MAX_TENANT} characters")
        return value

    @field_validator("generatorURL", "fingerprint")
    @classmethod
    def _text(cls, value: str) -> str:
        return _no_nul(value)


class AlertmanagerWebhook(BaseModel):
    """The body Alertmanager's ``webhook_configs`` receiver posts (version "4")."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    groupKey: str = ""
    truncatedAlerts: int = Field(default=0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[AlertmanagerAlert]


# --------------------------------------------------------------------------- pure part


def fingerprint(alert: AlertmanagerAlert) -> str:
    """Alertmanager's fingerprint, or a stable hash of the sorted labels when it is absent."""
    if alert.fingerprint:
        return alert.fingerprint
    canonical = json.dumps(sorted(alert.labels.items()), separators=(",", ":"))
    return "l" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def dedup_key(alert: AlertmanagerAlert) -> str:
    return f"am:{fingerprint(alert)}"


def redact(values: Mapping[str, str]) -> dict[str, str]:
    """``values`` without the entries whose key names a secret."""
    return {k: v for k, v in values.items() if not any(w in k.lower() for w in SECRET_WORDS)}


def utc_iso(at: datetime | None) -> str | None:
    """``at`` in UTC, ISO 8601 (as stored in the timeline); a naive time is taken as UTC."""
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    try:
        return at.astimezone(UTC).isoformat()
    except OverflowError:  # year 1 with a positive offset (Go's zero time, shifted)
        return at.isoformat()


@dataclass(frozen=True)
class Draft:
    """What a firing alert's ticket says."""

    open_key: str
    type: str
    tenant: str | None
    subject: str
    description: str
    evidence: dict[str, Any]


def draft(alert: AlertmanagerAlert) -> Draft:
    labels, annotations = redact(alert.labels), redact(alert.annotations)
    tenant = next((labels[k] for k in TENANT_LABELS if labels.get(k)), None)
    severity = labels.get("severity", "").lower()
    kind = "mass_incident" if severity in MASS_SEVERITIES else "incident"
    name = labels.get("alertname", "")
    summary = annotations.get("summary") or name or f"Alertmanager alert {fingerprint(alert)}"
    subject = f"{tenant}: {summary}" if tenant and not summary.startswith(tenant) else summary
    description = annotations.get("description") or summary
    evidence = {
        "fingerprint": fingerprint(alert),
        "alertname": name,
        "labels": labels,
        "annotations": annotations,
        "startsAt": utc_iso(alert.startsAt),
        "generatorURL": alert.generatorURL,
    }
    return Draft(
        open_key=dedup_key(alert),
        type=kind,
        tenant=tenant,
        subject=subject[:MAX_SUBJECT],
        description=description,
        evidence=evidence,
    )


@dataclass(frozen=True)
class Known:
    """The active ticket of a dedup key, as the decision needs it."""

    number: str
    last_starts_at: str | None


ActionKind = Literal["open", "join", "repeat", "resolve", "ignore"]


def decide(alert: AlertmanagerAlert, known: Known | None) -> ActionKind:
    """What to do with one alert, given the active ticket of its dedup key (or None)."""
    if alert.status == "resolved":
        return "resolve" if known is not None else "ignore"
    if known is None:
        return "open"
    if known.last_starts_at == utc_iso(alert.startsAt):
        return "repeat"
    return "join"


def resolution_comment(alert: AlertmanagerAlert) -> str:
    name = alert.labels.get("alertname") or fingerprint(alert)
    when = utc_iso(alert.endsAt) or "an unknown time"
    return (
        f"Alertmanager: alert {name} (fingerprint {fingerprint(alert)}) resolved at {when}. "
        f"Оповещение {name} снято в {when}."
    )


# --------------------------------------------------------------------------- store part


@dataclass
class IntakeResult:
    created: list[str] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    ignored: int = 0


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


def ingest(
    factory: sessionmaker[Session],
    body: AlertmanagerWebhook,
    *,
    system_id: str,
    on_created: Callable[[str], None] | None = None,
) -> IntakeResult:
    """Apply every alert of ``body`` in one transaction; ``on_created(type)`` per new ticket."""
    result = IntakeResult()
    created_types: list[str] = []
    with session_scope(factory) as s:
        for alert in body.alerts:
            key = dedup_key(alert)
            incident, known = _known(s, key)
            action = decide(alert, known)
            if action in ("open", "join"):
                d = draft(alert)
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
                    created_types.append(d.type)
            elif action == "resolve":
                assert incident is not None
                provide_solution(s, incident, resolution_comment(alert))
                s.flush()
                result.resolved.append(incident.number)
            else:
                result.ignored += 1
            log.info(
                "alertmanager alert=%s status=%s action=%s",
                key,
                alert.status,
                action,
            )
    for kind in created_types:
        if on_created is not None:
            on_created(kind)
    return result
