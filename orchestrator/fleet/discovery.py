"""Discovery of SmartCPD instances: labelled containers on every host (SPEC §3.1)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.errors import DockerError
from orchestrator.fleet.runtime import (
    ROLLOUT_LABEL,
    SIP_URI_LABEL,
    VERSION_LABEL,
    ContainerInfo,
    DockerHost,
)

log = logging.getLogger(__name__)

# Name marker of the previous container kept (stopped) by a rollout until it ends.
KEPT_MARKER = "--cpdops-old-"
# Every container cpdops names itself during a rollout (kept, start-first, migration, revert)
# carries this; such containers are not instances.
WORK_MARKER = "--cpdops-"


@dataclass(frozen=True)
class Instance:
    tenant: str
    component: str
    host: str
    container_id: str
    name: str
    image: str
    version: str | None
    status: str
    health: str | None
    health_url: str | None
    sip_uri: str | None
    rollout: str | None
    labels: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Discovery:
    instances: list[Instance]
    errors: dict[str, str]


def instance_from(host: DockerHost, info: ContainerInfo, version: str | None) -> Instance:
    return Instance(
        tenant=info.tenant or "",
        component=info.component,
        host=host.name,
        container_id=info.id,
        name=info.name,
        image=info.image,
        version=version,
        status=info.status,
        health=info.health,
        health_url=info.health_url,
        sip_uri=info.labels.get(SIP_URI_LABEL),
        rollout=info.labels.get(ROLLOUT_LABEL),
        labels=info.labels,
    )


def discover_host(host: DockerHost) -> list[Instance]:
    versions: dict[str, str | None] = {}
    result = []
    for info in host.list_managed():
        if WORK_MARKER in info.name:
            continue
        if info.image_id not in versions:
            try:
                versions[info.image_id] = host.image_labels(info.image_id).get(VERSION_LABEL)
            except DockerError:
                versions[info.image_id] = None
        result.append(instance_from(host, info, versions[info.image_id]))
    return result


def discover(hosts: Sequence[DockerHost]) -> Discovery:
    """Ask every host in parallel; a host that fails is reported, not fatal."""
    instances: list[Instance] = []
    errors: dict[str, str] = {}
    if not hosts:
        return Discovery(instances, errors)
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        futures = {host.name: pool.submit(discover_host, host) for host in hosts}
        for name, fut in futures.items():
            try:
                instances.extend(fut.result())
            except DockerError as exc:
                log.warning("discovery failed host=%s error=%s", name, exc)
                errors[name] = str(exc)
    instances.sort(key=lambda i: (i.tenant, i.component, i.host, i.name))
    return Discovery(instances, errors)


@dataclass(frozen=True)
class FleetImage:
    ref: str
    version: str | None
    hosts: tuple[str, ...]


def fleet_images(hosts: Sequence[DockerHost]) -> tuple[list[FleetImage], dict[str, str]]:
    """The tagged images present on the hosts (what a rollout can use without a pull), by
    reference, with the hosts that have each; hosts that fail are reported, not fatal."""
    found: dict[str, tuple[str | None, list[str]]] = {}
    errors: dict[str, str] = {}
    if not hosts:
        return [], errors
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        futures = {host.name: pool.submit(host.list_images) for host in hosts}
        for name, fut in sorted(futures.items()):
            try:
                rows = fut.result()
            except DockerError as exc:
                errors[name] = str(exc)
                continue
            for ref, version in rows:
                found.setdefault(ref, (version, []))[1].append(name)
    images = [FleetImage(ref, v, tuple(names)) for ref, (v, names) in sorted(found.items())]
    return images, errors
