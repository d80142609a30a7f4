"""Request/response schemas of the REST API (separate from the ORM models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class HostOut(ORM):
    name: str
    url: str
    labels: dict[str, Any]
    tls: bool = Field(description="whether TLS client settings are configured")


class TenantOut(ORM):
    slug: str
    name: str
    ring: str
    language: str
    timezone: str
    maintenance_window: dict[str, Any] | None
    channels: list[Any]
    labels: dict[str, Any]
    host_name: str | None
    has_db: bool = Field(
        default=False, description="a tenant database DSN is configured (never shown)"
    )


class InstanceOut(BaseModel):
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


class InstancesOut(BaseModel):
    instances: list[InstanceOut]
    errors: dict[str, str] = Field(description="hosts that could not be asked, with the reason")


class StepOut(ORM):
    step: str
    state: str
    detail: dict[str, Any]
    started_at: datetime
    finished_at: datetime | None


class RolloutInstanceOut(ORM):
    position: int
    wave: int = Field(description="0-based wave index")
    tenant: str
    host: str
    container_name: str
    old_image: str | None
    old_version: str | None
    state: str
    error: str | None
    steps: list[StepOut] = []


class RolloutOut(ORM):
    id: int
    image: str
    target_version: str | None
    status: str
    selection: dict[str, Any]
    options: dict[str, Any]
    created_by: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    scheduled_for: datetime | None
    control: str | None = Field(description="an operator's request not yet applied")
    progress: dict[str, Any] = Field(description="approved waves, wave end times, last reason")
    owner: str | None = Field(description="the cpdops process running it (lease holder)")
    incident: str | None = Field(default=None, description="number of the linked mass incident")


class RolloutDetail(RolloutOut):
    instances: list[RolloutInstanceOut]


class PlannedOut(BaseModel):
    tenant: str
    host: str
    container: str
    version: str | None = Field(description="the version it runs now")


class PlanOut(BaseModel):
    image: str
    target_version: str | None
    waves: list[list[PlannedOut]]


class EventOut(ORM):
    at: datetime
    author: str
    kind: str
    body: str
    data: dict[str, Any]


class IncidentOut(ORM):
    number: str
    type: str
    status: str
    status_label: str = Field(
        description="Russian label of the status, e.g. «Решение предоставлено»"
    )
    priority: str
    tenant: str | None
    subject: str
    description: str
    source: str
    rollout_id: int | None
    created_at: datetime
    updated_at: datetime


class IncidentDetail(IncidentOut):
    events: list[EventOut]


class MonitorOut(BaseModel):
    id: str
    name: str
    tenant: str
    host: str
    kind: str
    target: str
    status: str
    status_code: int = Field(description="0 down, 1 up, 2 pending, 3 maintenance")
    reason: str
    changed_at: datetime | None
    source: str = Field(
        default="generated",
        description="generated (registry and labels), api or fleet (declared)",
    )
    uptime: dict[str, float | None] = Field(
        default_factory=dict, description="share of passing checks per window, maintenance excluded"
    )


class PointOut(BaseModel):
    start: int = Field(description="Unix time of the minute (or hour) the point covers")
    checks: int
    failures: int
    maintenance: int
    avg_latency_s: float | None
    max_latency_s: float | None


class HistoryOut(BaseModel):
    monitor: str
    window: str
    uptime: float | None
    points: list[PointOut]


class TenantUptimeOut(BaseModel):
    tenant: str
    monitors: list[str]
    uptime: dict[str, float | None]


class DeclaredMonitorOut(ORM):
    """A declared monitor as stored; ``target`` with any password replaced by ``***``."""

    id: str = Field(description="<tenant>/<name>")
    name: str
    tenant: str
    host: str
    kind: str
    target: str
    interval_s: float | None = Field(description="null: the monitor defaults")
    timeout_s: float | None
    failure_threshold: int | None
    recovery_threshold: int | None
    expect_status: list[int] | None
    options: dict[str, Any]
    source: str = Field(description="api or fleet")
    created_by: str
    created_at: datetime
    updated_at: datetime
