"""Pure planning: which instances a rollout touches, in which order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.errors import InputError
from orchestrator.fleet.discovery import Instance
from rollouts.spec import RolloutRequest

RING_ORDER = {"internal": 0, "canary": 1, "early": 2, "general": 3, "late": 4}


@dataclass(frozen=True)
class PlannedInstance:
    position: int
    tenant: str
    host: str
    container_name: str
    image: str
    version: str | None


def select_instances(
    request: RolloutRequest,
    instances: Sequence[Instance],
    tenant_rings: Mapping[str, str],
) -> list[PlannedInstance]:
    """Choose and order the instances; raise InputError naming what does not exist.

    ``tenant_rings`` maps the registered tenants to their ring; a tenant with running
    instances but no registry entry counts as ring ``general``.
    """
    known = set(tenant_rings) | {i.tenant for i in instances}
    if request.tenants:
        unknown = sorted(set(request.tenants) - known)
        if unknown:
            raise InputError(f"unknown tenant(s): {', '.join(unknown)}")
        missing = sorted(set(request.tenants) - {i.tenant for i in instances})
        if missing:
            raise InputError(f"tenant(s) with no running instance: {', '.join(missing)}")
    if request.hosts:
        unknown_hosts = sorted(set(request.hosts) - {i.host for i in instances})
        if unknown_hosts:
            raise InputError(f"no instances on host(s): {', '.join(unknown_hosts)}")
    chosen = [
        i
        for i in instances
        if (request.tenants is None or i.tenant in request.tenants)
        and (request.hosts is None or i.host in request.hosts)
        and (request.rings is None or tenant_rings.get(i.tenant, "general") in request.rings)
    ]
    if not chosen:
        raise InputError("the selection matches no instance")

    def order(i: Instance) -> tuple[int, int, str, str, str]:
        named = request.tenants.index(i.tenant) if request.tenants else 0
        ring = RING_ORDER.get(tenant_rings.get(i.tenant, "general"), 3)
        return (ring, named, i.tenant, i.host, i.name)

    return [
        PlannedInstance(pos, i.tenant, i.host, i.name, i.image, i.version)
        for pos, i in enumerate(sorted(chosen, key=order))
    ]
