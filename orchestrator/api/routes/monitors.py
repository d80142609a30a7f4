"""Monitors: their current state."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy import select

from monitors.state import MonitorStatus
from orchestrator.api.deps import CtxDep, SessionDep
from orchestrator.api.schemas import MonitorOut
from orchestrator.db.models import MonitorRecord

router = APIRouter(prefix="/api/v1/monitors", tags=["monitors"])


@router.get("", response_model=list[MonitorOut], summary="Monitors and their state")
def list_monitors(
    ctx: CtxDep, session: SessionDep, tenant: str | None = Query(default=None)
) -> list[MonitorOut]:
    stored = {m.id: m for m in session.scalars(select(MonitorRecord))}
    out: list[MonitorOut] = []
    live = ctx.monitors.snapshot() if ctx.monitors is not None else []
    seen = set()
    for view in live:
        spec = view.spec
        seen.add(spec.id)
        rec = stored.get(spec.id)
        status = MonitorStatus(view.state.status)
        out.append(
            MonitorOut(
                id=spec.id,
                name=spec.name,
                tenant=spec.tenant,
                host=spec.host,
                kind=spec.kind,
                target=spec.target,
                status=status.name.lower(),
                status_code=int(status),
                reason=view.last_result.reason if view.last_result else "",
                changed_at=rec.changed_at if rec else None,
            )
        )
    for rec in stored.values():
        if rec.id not in seen:
            status = MonitorStatus(rec.status)
            out.append(
                MonitorOut(
                    id=rec.id,
                    name=rec.name,
                    tenant=rec.tenant,
                    host=rec.host,
                    kind=rec.kind,
                    target=rec.target,
                    status=status.name.lower(),
                    status_code=rec.status,
                    reason=rec.reason,
                    changed_at=rec.changed_at,
                )
            )
    out.sort(key=lambda m: m.id)
    if tenant:
        out = [m for m in out if m.tenant == tenant]
    return out
