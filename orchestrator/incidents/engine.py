"""The incident engine: turns monitor state changes and rollout failures into tickets."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitors.engine import StateChange
from monitors.probe import public_target
from monitors.state import MonitorStatus
from orchestrator.db.models import Incident, MonitorRecord, Rollout, RolloutInstance
from orchestrator.db.session import session_scope
from orchestrator.incidents.tickets import add_event, open_or_join
from rollouts.executor import RolloutFailure

log = logging.getLogger(__name__)

AUTHOR = "cpdops"


class IncidentEngine:
    def __init__(
        self, factory: sessionmaker[Session], *, system_id: str, registry: CollectorRegistry
    ) -> None:
        self._factory = factory
        self._system_id = system_id
        self.created = Counter(
            "cpdops_incidents_created_total",
            "Tickets opened, by type and source",
            ["type", "source"],
            registry=registry,
        )

    # --- monitors -------------------------------------------------------------------------
    def on_monitor_change(self, change: StateChange) -> None:
        """Record the monitor's state; a DOWN opens (or joins) the tenant's incident."""
        spec, result = change.spec, change.result
        reason = result.reason if result is not None else change.reason
        with session_scope(self._factory) as s:
            rec = s.get(MonitorRecord, spec.id)
            if rec is None:
                rec = MonitorRecord(id=spec.id)
                s.add(rec)
            # Recovery may come as DOWN → MAINTENANCE → PENDING → UP: remember the DOWN.
            was_down = rec.down_since is not None
            rec.name, rec.tenant, rec.host = spec.name, spec.tenant, spec.host
            rec.kind, rec.target = spec.kind, public_target(spec.target)
            now = datetime.now(UTC)
            rec.status, rec.reason, rec.changed_at = int(change.new), reason, now
            if change.new == MonitorStatus.DOWN and rec.down_since is None:
                rec.down_since = now
            elif change.new == MonitorStatus.UP:
                rec.down_since = None
        if change.new == MonitorStatus.DOWN:
            if self._under_rollout(spec.tenant, spec.host):
                log.info("DOWN suppressed by rollout monitor=%s tenant=%s", spec.id, spec.tenant)
                return
            target = public_target(spec.target)
            evidence = monitor_evidence(change)
            with session_scope(self._factory) as s:
                incident, created = open_or_join(
                    s,
                    system_id=self._system_id,
                    open_key=f"tenant:{spec.tenant}",
                    type="incident",
                    subject=f"{spec.tenant}: {spec.name} is DOWN ({reason})",
                    description=(
                        f"Monitor {spec.name} ({spec.kind} {target}) on host {spec.host} "
                        f"went DOWN: {reason}."
                    ),
                    author=AUTHOR,
                    source="monitor",
                    tenant=spec.tenant,
                    evidence=evidence,
                )
                number = incident.number
            if created:
                self.created.labels(type="incident", source="monitor").inc()
            log.info("monitor DOWN monitor=%s tenant=%s incident=%s", spec.id, spec.tenant, number)
        elif change.new == MonitorStatus.UP and was_down:
            with session_scope(self._factory) as s:
                incident_row = s.scalars(
                    select(Incident).where(Incident.open_key == f"tenant:{spec.tenant}")
                ).first()
                if incident_row is not None:
                    add_event(
                        s,
                        incident_row,
                        author=AUTHOR,
                        kind="recovered",
                        body=f"Monitor {spec.name} is UP again",
                        data={"monitor": spec.id},
                    )

    def _under_rollout(self, tenant: str, host: str) -> bool:
        with self._factory() as s:
            row = s.execute(
                select(RolloutInstance.id)
                .join(Rollout)
                .where(
                    Rollout.status == "running",
                    RolloutInstance.tenant == tenant,
                    RolloutInstance.host == host,
                    RolloutInstance.state == "updating",
                )
            ).first()
            return row is not None

    # --- rollouts -------------------------------------------------------------------------
    def on_rollout_failure(self, failure: RolloutFailure) -> None:
        """A failed rollout opens one mass incident linked to the rollout."""
        with session_scope(self._factory) as s:
            _incident, created = open_or_join(
                s,
                system_id=self._system_id,
                open_key=f"rollout:{failure.rollout_id}",
                type="mass_incident",
                subject=(
                    f"Rollout {failure.rollout_id} to {failure.image} failed on "
                    f"{failure.tenant}@{failure.host}"
                    if failure.tenant
                    else f"Rollout {failure.rollout_id} to {failure.image}: {failure.reason}"
                ),
                description=(
                    f"Rollout {failure.rollout_id} (image {failure.image}) failed on tenant "
                    f"{failure.tenant}, host {failure.host}: {failure.reason}. The instance was "
                    "restored to its previous container and the rollout was stopped."
                ),
                author=AUTHOR,
                source="rollout",
                tenant=None,
                rollout_id=failure.rollout_id,
                evidence={"tenant": failure.tenant, "host": failure.host, **failure.evidence},
            )
        if created:
            self.created.labels(type="mass_incident", source="rollout").inc()


def monitor_evidence(change: StateChange) -> dict[str, Any]:
    """What a ticket keeps of the check that turned a monitor DOWN: the monitor, the reason, the
    status code, the start of the response, the kind's own details (SIP reply line, container
    state, PostgreSQL numbers, …). The target's password is replaced by ``***``."""
    spec, result = change.spec, change.result
    evidence: dict[str, Any] = {
        "monitor": spec.id,
        "target": public_target(spec.target),
        "kind": spec.kind,
        "host": spec.host,
        "reason": change.reason,
    }
    if result is not None:
        evidence.update(
            reason=result.reason,
            status_code=result.status_code,
            body=result.body_excerpt,
            duration_s=result.duration_s,
            at=result.at.isoformat(),
            details=jsonable(dict(result.details)),
        )
    return evidence


def jsonable(value: Any) -> Any:
    """``value`` with anything JSON cannot hold (bytes, datetimes, tuples, …) made plain."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
