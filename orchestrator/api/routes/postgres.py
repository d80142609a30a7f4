"""PostgreSQL health: the postgres monitors' last check, for the web UI's PostgreSQL page."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from monitors.probe import public_target
from monitors.state import MonitorStatus
from orchestrator.api.auth import ViewerDep
from orchestrator.api.deps import CtxDep, SessionDep
from orchestrator.db.models import MonitorRecord

router = APIRouter(prefix="/api/v1", tags=["monitors"])


class PgMetricOut(BaseModel):
    name: str = Field(examples=["pg_stat_activity_count"])
    labels: dict[str, str] = Field(examples=[{"server": "db1:5432", "state": "active"}])
    value: float


class PgServerOut(BaseModel):
    monitor: str = Field(description="the postgres monitor's id", examples=["acme/db"])
    tenant: str
    host: str
    target: str = Field(description="the DSN, password shown as ***")
    status: str = Field(description="up, down, pending or maintenance")
    status_code: int = Field(description="0 down, 1 up, 2 pending, 3 maintenance")
    reason: str
    checked_at: datetime | None = Field(description="when the last check started (UTC)")
    duration_s: float | None
    details: dict[str, Any] = Field(
        default_factory=dict,
        description="the last check's findings: connections, max_connections, "
        "oldest_transaction, waiting, waiters, is_replica, replication_lag_seconds, "
        "max_wraparound_age, thresholds (empty until checked by this process)",
    )
    metrics: list[PgMetricOut] = Field(
        default_factory=list, description="the last check's pg_* series, as at /metrics"
    )


@router.get(
    "/postgres",
    response_model=list[PgServerOut],
    summary="PostgreSQL health: every postgres monitor with its last check's details and metrics",
    description=(
        "For each monitor of kind `postgres`: its state and, from the running engine, the last "
        "check's details (connections, long transactions, lock waiters, replication lag, "
        "wraparound age) and its `pg_*` samples. A process that runs no monitors gives the "
        "stored state only. Passwords are never shown."
    ),
)
def list_postgres(ctx: CtxDep, session: SessionDep, _who: ViewerDep) -> list[PgServerOut]:
    rows: dict[str, PgServerOut] = {}
    for rec in session.scalars(select(MonitorRecord).where(MonitorRecord.kind == "postgres")):
        rows[rec.id] = PgServerOut(
            monitor=rec.id,
            tenant=rec.tenant,
            host=rec.host,
            target=public_target(rec.target),
            status=MonitorStatus(rec.status).name.lower(),
            status_code=rec.status,
            reason=rec.reason,
            checked_at=None,
            duration_s=None,
        )
    for view in ctx.monitors.snapshot() if ctx.monitors is not None else []:
        if view.spec.kind != "postgres":
            continue
        spec, last, status = view.spec, view.last_result, MonitorStatus(view.state.status)
        rows[spec.id] = PgServerOut(
            monitor=spec.id,
            tenant=spec.tenant,
            host=spec.host,
            target=public_target(spec.target),
            status=status.name.lower(),
            status_code=int(status),
            reason=view.hold_reason or (last.reason if last else ""),
            checked_at=last.at if last else None,
            duration_s=last.duration_s if last else None,
            details=dict(last.details) if last else {},
            metrics=[
                PgMetricOut(name=s.name, labels=dict(s.labels), value=s.value)
                for s in (last.samples if last else ())
            ],
        )
    return [rows[k] for k in sorted(rows)]
