"""Monitors: current state, uptime, history (per-minute aggregates)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy import select

from monitors.state import MonitorStatus
from orchestrator.api.deps import CtxDep, SessionDep
from orchestrator.api.schemas import HistoryOut, MonitorOut, PointOut, TenantUptimeOut
from orchestrator.db.models import MonitorRecord
from orchestrator.errors import NotFoundError
from orchestrator.monitor_history import WINDOWS, combined_uptime, history, uptimes

router = APIRouter(prefix="/api/v1", tags=["monitors"])
Window = Literal["1h", "24h", "7d", "30d"]


@router.get(
    "/monitors",
    response_model=list[MonitorOut],
    summary="Monitors: state, last reason, uptime over 1h/24h/7d/30d (maintenance excluded)",
)
def list_monitors(
    ctx: CtxDep, session: SessionDep, tenant: str | None = Query(default=None)
) -> list[MonitorOut]:
    stored = {m.id: m for m in session.scalars(select(MonitorRecord))}
    rows: dict[str, MonitorOut] = {}
    for rec in stored.values():
        rows[rec.id] = MonitorOut(
            id=rec.id,
            name=rec.name,
            tenant=rec.tenant,
            host=rec.host,
            kind=rec.kind,
            target=rec.target,
            status=MonitorStatus(rec.status).name.lower(),
            status_code=rec.status,
            reason=rec.reason,
            changed_at=rec.changed_at,
        )
    # The live engine (in `cpdops serve`) knows the monitors not yet stored and the newest state.
    for view in ctx.monitors.snapshot() if ctx.monitors is not None else []:
        spec, status = view.spec, MonitorStatus(view.state.status)
        stored_rec = stored.get(spec.id)
        rows[spec.id] = MonitorOut(
            id=spec.id,
            name=spec.name,
            tenant=spec.tenant,
            host=spec.host,
            kind=spec.kind,
            target=spec.target,
            status=status.name.lower(),
            status_code=int(status),
            reason=view.hold_reason or (view.last_result.reason if view.last_result else ""),
            changed_at=stored_rec.changed_at if stored_rec else view.last_change_at,
        )
    out = sorted(
        (m for m in rows.values() if tenant is None or m.tenant == tenant), key=lambda m: m.id
    )
    up = uptimes(session, [m.id for m in out])
    return [m.model_copy(update={"uptime": up.get(m.id, {})}) for m in out]


@router.get(
    "/monitors/{monitor_id:path}/history",
    response_model=HistoryOut,
    summary="A monitor's history: per-minute points (per-hour beyond 24h) and uptime",
    responses={404: {"description": "no such monitor"}},
)
def monitor_history(
    monitor_id: str,
    session: SessionDep,
    window: Annotated[Window, Query(description="1h, 24h, 7d or 30d")] = "24h",
) -> HistoryOut:
    if session.get(MonitorRecord, monitor_id) is None:
        raise NotFoundError(f"no monitor {monitor_id!r}")
    points = history(session, monitor_id, window)
    checks = sum(p.checks for p in points)
    failures = sum(p.failures for p in points)
    return HistoryOut(
        monitor=monitor_id,
        window=window,
        uptime=None if checks == 0 else (checks - failures) / checks,
        points=[PointOut(**p.__dict__) for p in points],
    )


@router.get(
    "/tenants/{slug}/uptime",
    response_model=TenantUptimeOut,
    summary="A tenant's uptime over all its monitors (maintenance excluded)",
)
def tenant_uptime(slug: str, session: SessionDep) -> TenantUptimeOut:
    ids = list(session.scalars(select(MonitorRecord.id).where(MonitorRecord.tenant == slug)))
    if not ids:
        raise NotFoundError(f"no monitors for tenant {slug!r}")
    return TenantUptimeOut(
        tenant=slug, monitors=ids, uptime={w: combined_uptime(session, ids, w) for w in WINDOWS}
    )
