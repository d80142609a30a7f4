"""Monitors: current state, uptime, history (per-minute aggregates); declare and delete."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import ValidationError
from sqlalchemy import select

from monitors.probe import public_target
from orchestrator import declared_monitors, monitor_changes
from orchestrator.api.auth import AdminDep, ViewerDep
from orchestrator.api.deps import NO_NUL, CtxDep, IsoTime, LimitQuery, OffsetQuery, SessionDep
from orchestrator.api.monitor_in import MonitorIn, declaration_fields
from orchestrator.api.schemas import (
    DeclaredMonitorOut,
    HistoryOut,
    MonitorChangeOut,
    MonitorOut,
    PointOut,
    TenantUptimeOut,
)
from orchestrator.context import AppContext, apply_monitors, generated_ids
from orchestrator.db.models import DeclaredMonitor, Host, MonitorRecord, Tenant
from orchestrator.errors import ConflictError, InputError, NotFoundError
from orchestrator.fleet.fleetfile import MonitorDeclaration
from orchestrator.monitor_history import WINDOWS, combined_uptime, history, uptimes
from orchestrator.monitor_listing import Filters, list_rows

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["monitors"])
Window = Literal["1h", "24h", "7d", "30d"]
MonitorId = Annotated[
    str,
    Path(
        max_length=255,
        pattern=NO_NUL,
        description="the monitor id, e.g. acme/portal (slashes allowed)",
    ),
]
TenantSlug = Annotated[str, Path(max_length=255, pattern=NO_NUL, description="the tenant's slug")]


@router.get(
    "/monitors",
    response_model=list[MonitorOut],
    summary="Monitors: state, last reason, uptime over 1h/24h/7d/30d (maintenance excluded)",
    description=(
        "Generated monitors (from the tenant registry and the container labels) and declared "
        "ones (`POST /api/v1/monitors`, the fleet file's `monitors.declared`); `source` says "
        "which. A declared monitor not checked yet is `pending`. Passwords in targets are `***`."
    ),
)
def list_monitors(
    ctx: CtxDep,
    session: SessionDep,
    _viewer: ViewerDep,
    tenant: str | None = Query(
        default=None, max_length=255, pattern=NO_NUL, description="only this tenant's monitors"
    ),
    host: str | None = Query(
        default=None, max_length=255, pattern=NO_NUL, description="only the monitors of this host"
    ),
    kind: str | None = Query(
        default=None,
        max_length=255,
        pattern=NO_NUL,
        description="http, tcp, sip, postgres or container",
    ),
    state: str | None = Query(
        default=None,
        alias="status",
        max_length=255,
        pattern=NO_NUL,
        description="up, down, pending or maintenance",
    ),
    limit: LimitQuery = None,
    offset: OffsetQuery = 0,
) -> list[MonitorOut]:
    # Only the page's monitors are read (orchestrator.monitor_listing): at 10,000 monitors,
    # reading and merging every record for each request took half of a replica's core.
    filters = Filters(tenant=tenant, host=host, kind=kind, status=state)
    out = list_rows(session, ctx.monitors, filters, limit, offset)
    up = uptimes(session, [row["id"] for row in out])
    return [
        MonitorOut(**{**row, "target": public_target(row["target"])}, uptime=up.get(row["id"], {}))
        for row in out
    ]


def _declared_out(row: DeclaredMonitor) -> DeclaredMonitorOut:
    out = DeclaredMonitorOut.model_validate(row)
    return out.model_copy(update={"target": public_target(row.target)})


def _apply(ctx: AppContext) -> None:
    """Reconfigure the running engine (if this process runs one) without a restart."""
    if ctx.monitors is not None:
        apply_monitors(ctx)


@router.post(
    "/monitors",
    response_model=DeclaredMonitorOut,
    status_code=201,
    summary="Declare a monitor",
    description=(
        "Declares a monitor of any probe kind for a tenant of the registry; its id is "
        "`<tenant>/<name>`. The body is one of five forms, chosen by `kind` (`http`, `tcp`, "
        "`sip`, `postgres`, `container`): each says the form of its `target` (a `pattern`) and "
        "its own `options`, so a body that satisfies the schema is accepted unless a rule the "
        "schema cannot state refuses it. Unset `interval`, `timeout` and thresholds take the "
        'monitor defaults; `interval` and `timeout` are seconds or durations such as `"30s"`. '
        "A target holds no `${VAR}` reference (the API never reads the server's environment; "
        "the fleet file may, for the names its `environment` list declares) and no IPv6 "
        "literal (use a name, or the fleet file); a DSN's password and secret query "
        "parameters (`token`, …) are never shown, nor in tickets. Stored in the database and "
        "applied to the running engine at "
        "once. Errors: 422 for a body against the schema (the `loc` names the field, e.g. "
        "`target` or `options`), 400 for a timeout longer than the interval, 404 for an "
        "unknown tenant or host, 409 when the id is taken."
    ),
    responses={
        400: {"description": "a timeout longer than the interval; `detail` names the field"},
        404: {"description": "unknown tenant or host; `detail` names the field"},
        409: {"description": "a monitor with this id exists (declared or generated)"},
        422: {
            "description": "a field against the schema, or a target holding `${`; `loc` names it"
        },
    },
)
def declare_monitor(
    given: Annotated[MonitorIn, Body()], ctx: CtxDep, session: SessionDep, admin: AdminDep
) -> DeclaredMonitorOut:
    try:
        body = MonitorDeclaration.model_validate(declaration_fields(given))
    except ValidationError as exc:
        # a rule across fields (the schema says each field's form): 400 naming the field
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise InputError(f"{where}: {message}" if where else message) from None
    if session.scalars(select(Tenant.id).where(Tenant.slug == body.tenant)).first() is None:
        raise NotFoundError(
            f"tenant: unknown tenant {body.tenant!r}; apply it in the fleet file first"
        )
    if body.host is not None:
        known = set(session.scalars(select(Host.name))) | {h.name for h in ctx.hosts.hosts()}
        if body.host not in known:
            raise NotFoundError(
                f"host: unknown host {body.host!r} (known: {', '.join(sorted(known))})"
            )
    existing = session.get(DeclaredMonitor, body.id)
    if existing is not None:
        raise ConflictError(
            f"monitor {body.id!r} is already declared (source {existing.source}); "
            "DELETE it first to change it"
        )
    if body.id in generated_ids(ctx):
        raise ConflictError(f"monitor {body.id!r} exists: it is generated; choose another name")
    row = declared_monitors.add(session, body, source="api", actor=admin.actor)
    session.commit()
    _apply(ctx)
    return _declared_out(row)


# before the DELETE route: its {monitor_id:path} would also match …/history
@router.get(
    "/monitors/{monitor_id:path}/history",
    response_model=HistoryOut,
    summary="A monitor's history: per-minute points (per-hour beyond 24h) and uptime",
    responses={404: {"description": "no such monitor"}},
)
def monitor_history(
    monitor_id: MonitorId,
    session: SessionDep,
    _viewer: ViewerDep,
    window: Annotated[Window, Query(description="1h, 24h, 7d or 30d")] = "24h",
) -> HistoryOut:
    known = session.get(MonitorRecord, monitor_id) or session.get(DeclaredMonitor, monitor_id)
    if known is None:
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


# before the DELETE route too (its {monitor_id:path} would also match …/changes)
@router.get(
    "/monitors/{monitor_id:path}/changes",
    response_model=list[MonitorChangeOut],
    summary="A monitor's status changes, newest first",
    description=(
        "Every status change of the monitor at the time it happened (`at`), also those written "
        "late after a state database outage (`written_at` later). Newest first; `since` "
        "(inclusive) and `until` (exclusive) filter on `at`; page with `limit` and `offset`. "
        "Changes older than `CPDOPS_MONITOR_CHANGES_RETENTION_DAYS` (default 30) are pruned. "
        "A deleted monitor's changes stay until then."
    ),
    responses={404: {"description": "no such monitor, and no stored change of it"}},
)
def monitor_changes_list(
    monitor_id: MonitorId,
    session: SessionDep,
    _viewer: ViewerDep,
    since: Annotated[IsoTime | None, Query(description="at or after (ISO 8601)")] = None,
    until: Annotated[IsoTime | None, Query(description="before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000, description="skip this many")] = 0,
) -> list[MonitorChangeOut]:
    rows = monitor_changes.query(
        session, monitor_id, since=since, until=until, limit=limit, offset=offset
    )
    if (
        not rows
        and session.get(MonitorRecord, monitor_id) is None
        and session.get(DeclaredMonitor, monitor_id) is None
        and not monitor_changes.exists(session, monitor_id)
    ):
        raise NotFoundError(f"no monitor {monitor_id!r}")
    return [MonitorChangeOut.model_validate(monitor_changes.as_dict(r)) for r in rows]


@router.delete(
    "/monitors/{monitor_id:path}",
    status_code=204,
    summary="Delete a declared monitor",
    description=(
        "Removes a declared monitor with its state and history, and stops probing it at once. "
        "Generated monitors cannot be deleted (409): they follow the tenant registry and the "
        "container labels. A monitor the fleet file declares comes back at the next "
        "`cpdops apply` unless it is removed from the file."
    ),
    responses={
        404: {"description": "no such monitor"},
        409: {"description": "the monitor is generated, not declared"},
    },
)
def delete_monitor(
    monitor_id: MonitorId, ctx: CtxDep, session: SessionDep, admin: AdminDep
) -> Response:
    row = session.get(DeclaredMonitor, monitor_id)
    if row is None:
        recorded = session.get(MonitorRecord, monitor_id) is not None
        if recorded or monitor_id in generated_ids(ctx):
            raise ConflictError(
                f"monitor {monitor_id!r} is generated from the tenant registry and container "
                "labels, not declared: it goes away with its instance or tenant (remove the "
                "smartcpd.* labels or the tenant)"
            )
        raise NotFoundError(f"no monitor {monitor_id!r}")
    source = row.source
    declared_monitors.forget(session, monitor_id)
    declared_monitors.audit_removal(session, monitor_id, source=source, actor=admin.actor)
    session.commit()
    _apply(ctx)
    return Response(status_code=204)


@router.get(
    "/tenants/{slug}/uptime",
    response_model=TenantUptimeOut,
    summary="A tenant's uptime over all its monitors (maintenance excluded)",
    responses={404: {"description": "no monitors for this tenant"}},
)
def tenant_uptime(slug: TenantSlug, session: SessionDep, _viewer: ViewerDep) -> TenantUptimeOut:
    ids = list(session.scalars(select(MonitorRecord.id).where(MonitorRecord.tenant == slug)))
    if not ids:
        raise NotFoundError(f"no monitors for tenant {slug!r}")
    return TenantUptimeOut(
        tenant=slug, monitors=ids, uptime={w: combined_uptime(session, ids, w) for w in WINDOWS}
    )
