"""A demo fleet of stand-in SmartCPD tenants on one Docker engine (``cpdops demo up``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.db.models import Tenant
from orchestrator.fleet.runtime import (
    COMPONENT_LABEL,
    HEALTH_URL_LABEL,
    TENANT_LABEL,
    DockerHost,
)

log = logging.getLogger(__name__)

DEMO_LABEL = "cpdops.demo"
BASE_PORT = 18080
NAMES = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka")


@dataclass(frozen=True)
class DemoTenant:
    slug: str
    container: str
    port: int
    ring: str

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"


def demo_tenants(count: int, base_port: int = BASE_PORT) -> list[DemoTenant]:
    result = []
    for i in range(count):
        slug = NAMES[i] if i < len(NAMES) else f"tenant-{i + 1:03d}"
        ring = "canary" if i == 0 else "general"
        result.append(DemoTenant(slug, f"smartcpd-{slug}", base_port + i + 1, ring))
    return result


def start_tenant(
    host: DockerHost,
    tenant: DemoTenant,
    image: str,
    *,
    extra_labels: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run one stand-in instance with a fixed published port on 127.0.0.1."""
    labels = {
        TENANT_LABEL: tenant.slug,
        COMPONENT_LABEL: "app",
        HEALTH_URL_LABEL: tenant.health_url,
        DEMO_LABEL: "1",
        **(extra_labels or {}),
    }
    return host.run(
        image=image,
        name=tenant.container,
        labels=labels,
        environment={"SMARTCPD_TENANT": tenant.slug, "SMARTCPD_PORT": "8080", **(env or {})},
        ports={"8080/tcp": ("127.0.0.1", tenant.port)},
        restart_policy={"Name": "unless-stopped"},
    )


def register_tenants(session: Session, tenants: list[DemoTenant], host_name: str) -> None:
    for t in tenants:
        row = session.scalars(select(Tenant).where(Tenant.slug == t.slug)).first()
        if row is None:
            session.add(Tenant(slug=t.slug, name=t.slug.title(), ring=t.ring, host_name=host_name))


def remove_demo(host: DockerHost) -> list[str]:
    removed = []
    for info in host.list_managed():
        if info.labels.get(DEMO_LABEL) == "1":
            host.remove(info.id, force=True)
            removed.append(info.name)
    return removed
