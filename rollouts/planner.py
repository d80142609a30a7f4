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
    wave: int = 0
    fixed_ports: bool = True


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
        and all(i.labels.get(k) == v for k, v in (request.labels or {}).items())
    ]
    if not chosen:
        raise InputError("the selection matches no instance")

    def order(i: Instance) -> tuple[int, int, str, str, str]:
        named = request.tenants.index(i.tenant) if request.tenants else 0
        ring = RING_ORDER.get(tenant_rings.get(i.tenant, "general"), 3)
        return (ring, named, i.tenant, i.host, i.name)

    ordered = sorted(chosen, key=order)
    sizes = wave_sizes(request.strategy.waves, len(ordered))
    waves = [w for w, size in enumerate(sizes) for _ in range(size)]
    return [
        PlannedInstance(pos, i.tenant, i.host, i.name, i.image, i.version, waves[pos])
        for pos, i in enumerate(ordered)
    ]


def wave_sizes(targets: Sequence[str], total: int) -> list[int]:
    """Sizes of the waves for cumulative ``targets`` ("1", "25%", "100%") over ``total``.

    A percent rounds up (25 % of 6 is 2); a target never goes back below an earlier one;
    the last wave always takes the rest; waves that would be empty are dropped.
    """
    sizes: list[int] = []
    done = 0
    for k, target in enumerate(targets):
        percent = target.endswith("%")
        goal = -(-int(target[:-1]) * total // 100) if percent else int(target)
        if k == len(targets) - 1:
            goal = total
        goal = min(max(goal, done), total)
        if goal > done:
            sizes.append(goal - done)
            done = goal
    return sizes


def waves_of(plan: Sequence[PlannedInstance]) -> list[list[PlannedInstance]]:
    result: list[list[PlannedInstance]] = []
    for p in plan:
        while len(result) <= p.wave:
            result.append([])
        result[p.wave].append(p)
    return result
