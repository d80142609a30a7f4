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

The tenant label must name a tenant of the registry, in slug form (``[a-z0-9][a-z0-9-]*``, at
most 63): anything else — ``nosuch``, ``../../etc``, a Cyrillic look-alike ``с1``, a value with
CR/LF — is an **unknown tenant** (``classify_tenant``). Its alerts never open a ticket per
made-up tenant: they all go to ONE fleet-level ticket (key ``fleet:unknown-tenants``, no
tenant, no correlation), or are refused one by one (``CPDOPS_ALERTMANAGER_UNKNOWN_TENANTS=
refuse``). The label is kept only in its escaped form (``printable``: ``\\u0441``, ``\\r\\n``),
in the evidence and the logs; no CR/LF of any label reaches a subject or a log line.

An alert without a tenant, or with ``severity`` ``mass``/``mass_incident`` (a mass incident
declared by the alerting rule itself) for a known tenant, has its own ticket keyed
``am:<fingerprint>`` (``decide``):

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

Labels and annotations are not trusted: whatever of them reaches a ticket (subject,
description, evidence, the ``recovered`` entry, the resolution comment) and the ``alerts`` row
(name, host, PostgreSQL server) goes through the caller's ``Redactor`` (``redact.py``: the
patterns, and the known secrets of ``known_secrets.py`` — a tenant's DB password, a notifier's
secret, cpdops's own intake secret — wherever they appear, bare too). The engine gives the one
it builds per session (``IncidentEngine._redactor``); without one, the patterns alone apply.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.fleet.fleetfile import is_name
from orchestrator.incidents.redact import PATTERNS_ONLY, Redactor
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
MAX_SUBJECT = 500  # Incident.subject
MAX_SHOWN = 64  # an unknown tenant label, escaped, in evidence and logs
UNKNOWN_TENANTS_KEY = "fleet:unknown-tenants"
UNKNOWN_TENANTS_SUBJECT = "Alertmanager: alerts for tenants not in the registry"
UnknownTenants = Literal["fleet", "refuse"]


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


_LINE_BREAKS_RE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")


def one_line(text: str) -> str:
    """``text`` with its control characters (CR, LF, tab, …) as single spaces: for a subject."""
    return _LINE_BREAKS_RE.sub(" ", text).strip()


def printable(value: str, limit: int = MAX_SHOWN) -> str:
    """``value`` escaped to printable ASCII (``с1`` → ``\\u04411``, CR/LF → ``\\r\\n``) and cut
    to ``limit`` characters: how a label that is not trusted appears in evidence and logs."""
    shown = value.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def tenant_label(alert: AlertmanagerAlert) -> str | None:
    """The alert's tenant label as sent (``tenant``, else ``smartcpd_tenant``), or None."""
    return next((alert.labels[k] for k in TENANT_LABELS if alert.labels.get(k)), None)


@dataclass(frozen=True)
class TenantOf:
    """Whose alert it is: a registered ``tenant``, an ``unknown`` label (escaped), or neither
    (no tenant label)."""

    tenant: str | None = None
    unknown: str | None = None


def classify_tenant(label: str | None, registered: Container[str]) -> TenantOf:
    """A tenant label names a tenant only in slug form and when that slug is registered."""
    if label is None:
        return TenantOf()
    if is_name(label) and label in registered:
        return TenantOf(tenant=label)
    return TenantOf(unknown=printable(label))


@dataclass(frozen=True)
class Draft:
    """What a firing alert's ticket says."""

    open_key: str
    type: str
    tenant: str | None
    subject: str
    description: str
    evidence: dict[str, Any]
    unknown_tenant: str | None = None  # the escaped label of a tenant not in the registry


def draft(
    alert: AlertmanagerAlert, registered: Container[str] = (), red: Redactor = PATTERNS_ONLY
) -> Draft:
    """The alert's ticket: its tenant's, its own (``am:<fingerprint>``), or — its tenant label
    unknown — the fleet-level ticket of unknown tenants, which names no tenant. Its subject,
    description, evidence and escaped unknown label are redacted by ``red``."""
    labels, annotations = redact(alert.labels), redact(alert.annotations)
    who = classify_tenant(tenant_label(alert), registered)
    tenant = who.tenant
    severity = labels.get("severity", "").lower()
    kind = "mass_incident" if severity in MASS_SEVERITIES else "incident"
    name = labels.get("alertname", "")
    summary = annotations.get("summary") or name or f"Alertmanager alert {fingerprint(alert)}"
    subject = f"{tenant}: {summary}" if tenant and not summary.startswith(tenant) else summary
    description = annotations.get("description") or summary
    evidence: dict[str, Any] = {
        "fingerprint": fingerprint(alert),
        "alertname": name,
        "labels": labels,
        "annotations": annotations,
        "startsAt": utc_iso(alert.startsAt),
        "generatorURL": alert.generatorURL,
    }
    key = dedup_key(alert)
    if who.unknown is not None:
        for k in TENANT_LABELS:  # the raw label is not kept, its escaped form is
            if k in labels:
                labels[k] = printable(labels[k])
        evidence["unknown_tenant"] = who.unknown
        key, kind, subject = UNKNOWN_TENANTS_KEY, "incident", UNKNOWN_TENANTS_SUBJECT
        description = (
            f"Alertmanager alerts whose tenant label names no tenant of the registry; the "
            f"first: {who.unknown!r} ({printable(name)}). Each alert is an evidence entry."
        )
    return Draft(
        open_key=key,
        type=kind,
        tenant=tenant,
        subject=one_line(red.text(subject))[:MAX_SUBJECT],  # redacted before it is cut
        description=red.text(description),
        evidence=red.value(evidence),
        unknown_tenant=red.text(who.unknown) if who.unknown is not None else None,
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
    return one_line(value)[:MAX_LABEL] or None if value is not None else None


def scope(alert: AlertmanagerAlert, tenant: str | None, red: Redactor = PATTERNS_ONLY) -> Scope:
    """Where the alert fails; ``tenant`` is its registered tenant (``classify_tenant``). The
    labels are redacted by ``red``."""
    labels = {k: red.text(v) for k, v in redact(alert.labels).items()}
    return Scope(
        tenant=tenant,
        host=_label(labels, HOST_LABELS),
        db_server=_label(labels, DB_SERVER_LABELS),
    )


def is_tenant_failure(d: Draft) -> bool:
    """Whether the alert is a tenant's failure (joins ``tenant:<slug>``) or one of an unknown
    tenant (joins the fleet-level ticket), rather than a ticket of its own
    (``am:<fingerprint>``): it names a tenant and does not declare a mass incident."""
    if d.unknown_tenant is not None:
        return True
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


def alert_name(alert: AlertmanagerAlert, red: Redactor = PATTERNS_ONLY) -> str:
    """The ``alertname`` label on one line, redacted by ``red``, cut to the column's size."""
    return one_line(red.text(alert.labels.get("alertname", "")))[:MAX_LABEL]


def resolution_comment(alert: AlertmanagerAlert, red: Redactor = PATTERNS_ONLY) -> str:
    """The comment of an own ticket's resolution; the alert's name redacted by ``red``."""
    name = alert_name(alert, red) or fingerprint(alert)
    when = utc_iso(alert.endsAt) or "an unknown time"
    return (
        f"Alertmanager: alert {name} (fingerprint {fingerprint(alert)}) resolved at {when}. "
        f"Оповещение {name} снято в {when}."
    )
