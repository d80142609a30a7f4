"""``cpdops apply -f``: store a validated fleet file, idempotently, in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator import declared_monitors
from orchestrator.db.models import AuditEntry, ConfigItem, Host, Notifier, Tenant
from orchestrator.fleet.fleetfile import FleetFile


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
        }


def _upsert(
    session: Session,
    report: ApplyReport,
    model: Any,
    key_attr: str,
    key: str,
    values: dict[str, Any],
    kind: str,
) -> None:
    row = session.scalars(select(model).where(getattr(model, key_attr) == key)).first()
    label = f"{kind}/{key}"
    if row is None:
        session.add(model(**{key_attr: key}, **values))
        report.created.append(label)
        return
    changed = {k: v for k, v in values.items() if getattr(row, k) != v}
    if not changed:
        report.unchanged.append(label)
        return
    for k, v in changed.items():
        setattr(row, k, v)
    if hasattr(row, "updated_at"):
        row.updated_at = datetime.now(UTC)
    report.updated.append(label)


def apply_fleet(
    session: Session, fleet: FleetFile, *, prune: bool = False, actor: str = "cli"
) -> ApplyReport:
    """Create or update every object of the fleet file; with ``prune``, remove the others.

    The caller commits; on any error nothing is written.
    """
    report = ApplyReport()
    for h in fleet.hosts:
        tls = h.tls.model_dump() if h.tls is not None else None
        ssh = h.ssh.model_dump() if h.ssh is not None else None
        values: dict[str, Any] = {"url": h.url, "labels": dict(h.labels), "tls": tls, "ssh": ssh}
        _upsert(session, report, Host, "name", h.name, values, "host")
    for t in fleet.tenants:
        window = t.maintenance_window.model_dump() if t.maintenance_window else None
        values = {
            "name": t.name,
            "ring": t.ring,
            "language": t.language,
            "timezone": t.timezone,
            "maintenance_window": window,
            "contacts": [c.model_dump() for c in t.contacts],
            "channels": list(t.channels),
            "db_dsn": t.db_dsn,
            "labels": dict(t.labels),
            "host_name": t.host,
        }
        _upsert(session, report, Tenant, "slug", t.slug, values, "tenant")
    for n in fleet.notifiers:
        data = n.model_dump()
        name, kind = data.pop("name"), data.pop("kind")
        _upsert(
            session, report, Notifier, "name", name, {"kind": kind, "settings": data}, "notifier"
        )
    # Monitor defaults: only the keys written in the file (the others come from the settings).
    value = {"defaults": fleet.monitors.defaults.model_dump(mode="json", exclude_unset=True)}
    _upsert(session, report, ConfigItem, "key", "monitors", {"value": value}, "config")
    value = fleet.incidents.model_dump(mode="json")
    _upsert(session, report, ConfigItem, "key", "incidents", {"value": value}, "config")
    found = declared_monitors.sync_fleet(session, fleet.monitors.declared, prune=prune)
    for ids, into in zip(
        found, (report.created, report.updated, report.unchanged, report.removed), strict=True
    ):
        into.extend(f"monitor/{monitor_id}" for monitor_id in ids)
    if prune:
        keep = {
            Host: {h.name for h in fleet.hosts},
            Tenant: {t.slug for t in fleet.tenants},
            Notifier: {n.name for n in fleet.notifiers},
        }
        for model, names in keep.items():
            attr = "slug" if model is Tenant else "name"
            for row in session.scalars(select(model)):
                if getattr(row, attr) not in names:
                    report.removed.append(f"{model.__tablename__[:-1]}/{getattr(row, attr)}")
                    session.delete(row)
    session.add(
        AuditEntry(actor=actor, action="fleet.apply", target="fleet", detail=report.as_dict())
    )
    return report
