"""Alertmanager webhook v4 intake: the body's schema and the pure decisions (the store part is
``alert_intake``). Each alert of a body is read by its own status (one body can mix firing and
resolved).

An alert that names a tenant (label ``tenant`` or ``smartcpd_tenant``) is one of the tenant's
failures, like a monitor DOWN: it opens or joins the tenant's incident (``tenant:<slug>``) and
takes part in correlation. Its state is kept per fingerprint (``alerts`` table);
``decide_alert`` compares a delivery with it:

=========  =================================================  ==================================
status     the alert's row (same fingerprint)                 action
=========  =================================================  ==================================
firing     none, or an older ``startsAt``                     ``open``: open or join the incident
firing     the same ``startsAt`` (firing or resolved)         ``repeat``: nothing
resolved   firing, the same or an older ``startsAt``          ``resolve``: row resolved
resolved   the same ``startsAt``, already resolved            ``repeat``: nothing
resolved   none, or resolved with an older ``startsAt``       ``record``: row kept resolved
any        a newer ``startsAt`` than this delivery            ``stale``: nothing
=========  =================================================  ==================================

An alert without a tenant, or with ``severity`` ``mass``/``mass_incident`` (a mass incident
declared by the alerting rule itself), has its own ticket keyed ``am:<fingerprint>``
(``decide``):

=========  ==========================================  ==========================================
status     open ticket for ``am:<fingerprint>``        action
=========  ==========================================  ==========================================
firing     none                                        ``open``: a new ticket (``created``)
firing     yes, last seen ``startsAt`` is the same     ``repeat``: nothing (``ignored``)
firing     yes, another ``startsAt``                   ``join``: an evidence entry (``joined``)
resolved   yes                                         ``resolve``: ``solution_provided`` + comment
resolved   none                                        ``ignore``
=========  ==========================================  ==========================================

The fingerprint is Alertmanager's (of the label set), or a stable hash of the sorted labels
when a sender leaves it out. The Docker host is the label ``host`` (or ``docker_host``), the
PostgreSQL server ``db_server`` (or ``server``, as the PostgreSQL exporter labels it). Label and
annotation values whose key contains ``password``, ``secret`` or ``token`` are never stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.strict_types import Int, IsoTime, NoNul, NoNulTexts

AUTHOR = "alertmanager"
SOURCE = "alertmanager"
EVENT_KIND = "evidence"
MAX_BODY_BYTES = 1024 * 1024
SECRET_WORDS = ("password", "secret", "token")
MASS_SEVERITIES = ("mass", "mass_incident")
TENANT_LABELS = ("tenant", "smartcpd_tenant")
HOST_LABELS = ("host", "docker_host")
DB_SERVER_LABELS = ("db_server", "server")
MAX_LABEL = 255  # AlertRecord.alertname, host, db_server
MAX_TENANT = 63  # Incident.tenant
MAX_SUBJECT = 500  # Incident.subject


# --------------------------------------------------------------------------- the body (v4)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# strict, as the schema says (``0`` is no time); fields Alertmanager may add are ignored
_STRICT = ConfigDict(extra="ignore", strict=True)
# Stored label and annotation texts: NUL-free, as their schema says (keys and values).
Texts = NoNulTexts


class AlertmanagerAlert(BaseModel):
    """One alert of the webhook body."""

    model_config = _STRICT

    status: Literal["firing", "resolved"]
    labels: Texts = Field(default_factory=dict)
    annotations: Texts = Field(default_factory=dict)
    startsAt: IsoTime
    endsAt: IsoTime | None = None
    generatorURL: NoNul = ""
    fingerprint: NoNul = Field(default="", max_length=200)

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

    model_config = _STRICT

    version: Literal["4"]
    groupKey: str = ""
    truncatedAlerts: Int = Field(default=0, ge=0)
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


def as_utc(at: datetime) -> datetime:
    """``at`` as an aware UTC time (a naive one is taken as UTC; Go's zero time stays year 1)."""
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    try:
        return at.astimezone(UTC)
    except OverflowError:  # year 1 with a positive offset
        return datetime.min.replace(tzinfo=UTC)


def ends_at(alert: AlertmanagerAlert) -> datetime | None:
    """The alert's ``endsAt``, None for Go's zero time (a firing alert's usual value)."""
    if alert.endsAt is None or alert.endsAt.year <= 1:
        return None
    return as_utc(alert.endsAt)


@dataclass(frozen=True)
class Scope:
    """Where a firing alert fails: the tenant, the Docker host, the PostgreSQL server."""

    tenant: str | None
    host: str | None
    db_server: str | None


def _label(labels: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    value = next((labels[k] for k in names if labels.get(k)), None)
    return value[:MAX_LABEL] if value is not None else None


def scope(alert: AlertmanagerAlert) -> Scope:
    labels = redact(alert.labels)
    return Scope(
        tenant=_label(labels, TENANT_LABELS),
        host=_label(labels, HOST_LABELS),
        db_server=_label(labels, DB_SERVER_LABELS),
    )


def is_tenant_failure(d: Draft) -> bool:
    """Whether the alert is a tenant's failure (joins ``tenant:<slug>``) rather than a ticket of
    its own (``am:<fingerprint>``): it names a tenant and does not declare a mass incident."""
    return d.tenant is not None and d.type == "incident"


@dataclass(frozen=True)
class AlertState:
    """An alert's stored state: firing or resolved, and the occurrence (``startsAt``)."""

    status: str
    starts_at: datetime


AlertAction = Literal["open", "repeat", "resolve", "record", "stale"]


def decide_alert(status: str, starts_at: datetime, known: AlertState | None) -> AlertAction:
    """What a delivery of a tenant's alert does, given the alert's stored state (or None)."""
    if known is not None and starts_at < known.starts_at:
        return "stale"
    same = known is not None and starts_at == known.starts_at
    if status == "firing":
        return "repeat" if same else "open"
    if known is not None and known.status == "firing":
        return "resolve"
    return "repeat" if same else "record"


def resolution_comment(alert: AlertmanagerAlert) -> str:
    name = alert.labels.get("alertname") or fingerprint(alert)
    when = utc_iso(alert.endsAt) or "an unknown time"
    return (
        f"Alertmanager: alert {name} (fingerprint {fingerprint(alert)}) resolved at {when}. "
        f"Оповещение {name} снято в {when}."
    )
