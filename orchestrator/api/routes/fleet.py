"""Hosts, tenants and the discovered instances."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.api.auth import ViewerDep
from orchestrator.api.deps import NO_NUL, CtxDep, LimitQuery, OffsetQuery, SessionDep, page
from orchestrator.api.schemas import (
    HostOut,
    ImageOut,
    ImagesOut,
    InstanceOut,
    InstancesOut,
    TenantOut,
)
from orchestrator.db.models import Host, Tenant
from orchestrator.fleet.discovery import discover, fleet_images
from orchestrator.fleet.host_health import tenant_status

router = APIRouter(prefix="/api/v1", tags=["fleet"])


def host_out(h: Host) -> HostOut:
    return HostOut(
        name=h.name,
        url=h.url,
        labels=h.labels,
        tls=bool(h.tls),
        status=h.status,
        status_reason=h.status_reason,
        status_since=h.status_since,
    )


def host_states(session: Session) -> dict[str, tuple[str, str | None]]:
    """Host → (status, reason), as the leader's host checks stored them."""
    return {
        name: (status, reason)
        for name, status, reason in session.execute(
            select(Host.name, Host.status, Host.status_reason)
        )
    }


def tenant_out(t: Tenant, hosts: dict[str, tuple[str, str | None]]) -> TenantOut:
    status, reason = tenant_status(t.host_name, hosts)
    return TenantOut.model_validate(t, from_attributes=True).model_copy(
        update={"has_db": bool(t.db_dsn), "status": status, "status_reason": reason}
    )


@router.get(
    "/hosts",
    response_model=list[HostOut],
    summary="Docker hosts of the fleet",
    description="Each host with its health: `status` `ok` or `unreachable` (the leader pings "
    "every host every `CPDOPS_HOST_CHECK_S`; unreachable after `CPDOPS_HOST_FAILURES` "
    "consecutive failures, ok after one success), `status_reason`, `status_since`.",
)
def list_hosts(
    session: SessionDep,
    _viewer: ViewerDep,
    limit: LimitQuery = None,
    offset: OffsetQuery = 0,
) -> list[HostOut]:
    hosts = [host_out(h) for h in session.scalars(select(Host).order_by(Host.name))]
    return page(hosts, limit, offset)


@router.get(
    "/tenants",
    response_model=list[TenantOut],
    summary="Registered tenants",
    description="`status` is `unreachable` (with the host's reason) while the tenant's host "
    "is unreachable, else `ok`.",
)
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
    hosts = host_states(session)
    return [tenant_out(t, hosts) for t in session.scalars(stmt)]


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


@router.get(
    "/images",
    response_model=ImagesOut,
    summary="The tagged images on the fleet's hosts (what a rollout can use without a pull)",
    description=(
        "Asks every host's Docker engine; an image a rollout names must be on every target "
        "host (or pullable). Hosts that do not answer are listed under `errors`."
    ),
)
def list_images(ctx: CtxDep, _viewer: ViewerDep) -> ImagesOut:
    images, errors = fleet_images(ctx.hosts.hosts())
    return ImagesOut(
        images=[ImageOut(ref=i.ref, version=i.version, hosts=list(i.hosts)) for i in images],
        errors=errors,
    )
