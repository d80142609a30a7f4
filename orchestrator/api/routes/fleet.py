"""Hosts, tenants and the discovered instances."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy import select

from orchestrator.api.auth import ViewerDep
from orchestrator.api.deps import NO_NUL, CtxDep, LimitQuery, OffsetQuery, SessionDep, page
from orchestrator.api.schemas import HostOut, InstanceOut, InstancesOut, TenantOut
from orchestrator.db.models import Host, Tenant
from orchestrator.fleet.discovery import discover

router = APIRouter(prefix="/api/v1", tags=["fleet"])


@router.get("/hosts", response_model=list[HostOut], summary="Docker hosts of the fleet")
def list_hosts(
    session: SessionDep,
    _viewer: ViewerDep,
    limit: LimitQuery = None,
    offset: OffsetQuery = 0,
) -> list[HostOut]:
    hosts = [
        HostOut(name=h.name, url=h.url, labels=h.labels, tls=bool(h.tls))
        for h in session.scalars(select(Host).order_by(Host.name))
    ]
    return page(hosts, limit, offset)


@router.get("/tenants", response_model=list[TenantOut], summary="Registered tenants")
def list_tenants(
    session: SessionDep,
    _viewer: ViewerDep,
    ring: str | None = Query(
        default=None, max_length=255, pattern=NO_NUL, description="filter by ring"
    ),
    host: str | None = Query(
        default=None,
        max_length=255,
        pattern=NO_NUL,
        description="only the tenants placed on this host",
    ),
    limit: LimitQuery = None,
    offset: OffsetQuery = 0,
) -> list[TenantOut]:
    stmt = select(Tenant).order_by(Tenant.slug)
    if ring:
        stmt = stmt.where(Tenant.ring == ring)
    if host:
        stmt = stmt.where(Tenant.host_name == host)
    stmt = stmt.offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [
        TenantOut.model_validate(t, from_attributes=True).model_copy(
            update={"has_db": bool(t.db_dsn)}
        )
        for t in session.scalars(stmt)
    ]


@router.get(
    "/instances",
    response_model=InstancesOut,
    summary="SmartCPD instances found on every host by their labels (live discovery)",
)
def list_instances(
    ctx: CtxDep,
    _viewer: ViewerDep,
    tenant: str | None = Query(
        default=None, max_length=255, pattern=NO_NUL, description="only this tenant"
    ),
    host: str | None = Query(
        default=None, max_length=255, pattern=NO_NUL, description="only this host"
    ),
) -> InstancesOut:
    found = discover(ctx.hosts.hosts())
    items = [
        InstanceOut(**{k: v for k, v in i.as_dict().items() if k != "labels"})
        for i in found.instances
        if (tenant is None or i.tenant == tenant) and (host is None or i.host == host)
    ]
    return InstancesOut(instances=items, errors=found.errors)
