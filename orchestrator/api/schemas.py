"""Request/response schemas of the REST API (separate from the ORM models)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from orchestrator.auth.tokens import TOKEN_LIFETIME_PATTERN
from orchestrator.strict_types import NoNul


class ORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class HostOut(ORM):
    name: str
    url: str
    labels: dict[str, Any]
    tls: bool = Field(description="whether TLS client settings are configured")
    status: str = Field(
        default="ok",
        description="host health from the leader's pings (`CPDOPS_HOST_CHECK_S`): `ok`, or "
        "`unreachable` after `CPDOPS_HOST_FAILURES` consecutive failed pings (ok again after "
        "one success)",
    )
    status_reason: str | None = Field(
        default=None, description="why the host is unreachable (the failed ping's error)"
    )
    status_since: datetime | None = Field(
        default=None, description="when the status last changed (null: never changed)"
    )


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
    status: str = Field(
        default="ok",
        description="`unreachable` while the tenant's host (`host_name`) is unreachable, else "
        "`ok` (the tenant's own health is in its monitors)",
    )
    status_reason: str | None = Field(
        default=None, description="the host's reason, when `unreachable`"
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


class ImageOut(BaseModel):
    ref: str = Field(description="repository:tag, as a rollout's `image`")
    version: str | None = Field(description="its org.opencontainers.image.version label")
    hosts: list[str] = Field(description="the hosts that have it")


class ImagesOut(BaseModel):
    images: list[ImageOut]
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
    actions: list[str] = Field(
        default_factory=list,
        description=(
            "the controls accepted now (pause, resume, approve, abort, rollback); any other "
            "is refused with 409 — e.g. rollback when no instance was updated"
        ),
    )


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
    number: str = Field(description="DateChecksum number", examples=["2026120101000017"])
    type: str = Field(description="incident, mass_incident, consultation, development_request")
    status: str = Field(description="new, open, awaiting_info, solution_provided, closed")
    status_label: str = Field(
        description="Russian label of the status, e.g. «Решение предоставлено»"
    )
    labels: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Russian and English labels of the type, status and priority",
        examples=[
            {
                "type": {"ru": "Инцидент", "en": "Incident"},
                "status": {"ru": "Решение предоставлено", "en": "Solution provided"},
                "priority": {"ru": "Высокий", "en": "High"},
            }
        ],
    )
    priority: str = Field(description="low, normal, high, critical")
    tenant: str | None
    subject: str
    description: str
    source: str = Field(description="portal, cli, monitor, rollout, alertmanager, …")
    rollout_id: int | None
    created_at: datetime
    updated_at: datetime


class IncidentRef(ORM):
    """A linked ticket (parent or child), in short."""

    number: str
    type: str
    status: str
    tenant: str | None
    subject: str


class AttachmentOut(ORM):
    """An attachment's metadata; the bytes are at ``…/attachments/{id}``."""

    id: int
    filename: str
    content_type: str
    size: int = Field(description="bytes")
    sha256: str = Field(description="hex SHA-256 of the bytes")
    author: str
    created_at: datetime


class IncidentDetail(IncidentOut):
    owner: str | None = Field(
        default=None, description="who works on it (the last `owner` entry of the timeline)"
    )
    events: list[EventOut] = Field(description="the timeline, oldest first")
    attachments: list[AttachmentOut] = []
    parent: IncidentRef | None = Field(
        default=None, description="the mass incident this ticket is part of"
    )
    children: list[IncidentRef] = Field(
        default=[], description="tenant incidents under this mass incident"
    )


class StrictIn(BaseModel):
    """A request body as its schema says: unknown fields refused, types strict (``0`` is not a
    boolean, ``"3"`` not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True)


SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
Author = Annotated[NoNul, Field(min_length=1, max_length=100, examples=["ivanov"])]
Slug = Annotated[str, Field(pattern=SLUG_PATTERN, examples=["acme"])]
TicketType = Literal["incident", "mass_incident", "consultation", "development_request"]
TicketStatus = Literal["new", "open", "awaiting_info", "solution_provided", "closed"]
TicketPriority = Literal["low", "normal", "high", "critical"]


class TicketCreate(StrictIn):
    """A ticket from the customer portal (JSON, or multipart/form-data with a screenshot)."""

    type: TicketType = Field(description="what kind of request this is")
    subject: Annotated[NoNul, Field(min_length=1, max_length=500)] = Field(
        examples=["Calls to extension 204 drop after 30 s"]
    )
    description: Annotated[NoNul, Field(max_length=100_000)] = ""
    tenant: Slug | None = Field(
        default=None, description="slug of a tenant in the registry (404 if it is not)"
    )
    priority: TicketPriority = "normal"
    author: Author = Field(default="portal", description="who files it")


class CommentIn(StrictIn):
    author: Author
    body: Annotated[NoNul, Field(min_length=1, max_length=100_000)] = Field(
        examples=["Extension 204 still drops calls."]
    )
    customer: bool = Field(
        default=False,
        description="a reply from the customer: reopens an awaiting_info or solution_provided "
        "ticket",
    )


# not only spaces, and no NUL (NoNul's own pattern gives way to this one)
SOLUTION_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError(
            "status solution_provided («Решение предоставлено») requires a comment that says "
            "what the solution is"
        )
    return value


class StatusIn(StrictIn):
    """Any status but ``solution_provided``: a comment is optional."""

    status: Literal["new", "open", "awaiting_info", "closed"]
    comment: Annotated[NoNul, Field(max_length=100_000)] = Field(
        default="", examples=["Waiting for the customer's trace."]
    )
    author: Author


class SolutionIn(StrictIn):
    """``solution_provided`` («Решение предоставлено») needs the solution as its comment."""

    status: Literal["solution_provided"]
    comment: Annotated[
        NoNul,
        AfterValidator(_not_blank),
        Field(max_length=100_000, json_schema_extra={"minLength": 1, "pattern": SOLUTION_PATTERN}),
    ] = Field(
        description="the solution: required, not only spaces",
        examples=["Re-registered the trunk; calls complete again."],
    )
    author: Author


StatusChange = Annotated[StatusIn | SolutionIn, Field(discriminator="status")]


class PriorityIn(StrictIn):
    priority: TicketPriority
    author: Author


class OwnerIn(StrictIn):
    owner: Annotated[NoNul, Field(max_length=100)] | None = Field(
        description="who takes the ticket; null or empty: nobody", examples=["petrov"]
    )
    author: Author


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


class MonitorChangeOut(BaseModel):
    """One status change of a monitor, at the time it happened."""

    id: int
    monitor: str
    tenant: str
    old: str = Field(description="the status before: up, down, pending or maintenance")
    new: str = Field(description="the status after")
    reason: str = Field(description="the check's reason, e.g. the error that made it down")
    at: datetime = Field(description="when the change happened (the monitor engine's time)")
    written_at: datetime = Field(
        description="when it was written: later than `at` when it waited in memory through a "
        "state database outage"
    )


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


class TokenIn(StrictIn):
    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@:-]*$",
        description="who or what uses the token; unique among active tokens",
        examples=["ci-deployer"],
    )
    role: Literal["viewer", "operator", "admin"] = Field(examples=["operator"])
    expires: str | None = Field(
        default=None,
        max_length=16,
        pattern=TOKEN_LIFETIME_PATTERN,
        description="lifetime such as 30m, 12h, 90d or 2w (1 to 999999 of m, h, d or w); "
        "none: never expires",
        examples=["90d"],
    )


class TokenOut(ORM):
    id: int
    key_id: str = Field(description="the public part of the token (cpd_<key_id>_…)")
    name: str
    role: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    last_used_at: datetime | None = Field(description="updated at most once a minute")
    last_used_from: str | None
    active: bool = Field(default=True, description="neither revoked nor expired")


class TokenCreated(TokenOut):
    token: str = Field(description="the token itself: shown only in this response, never again")


class AuditOut(ORM):
    id: int
    at: datetime
    actor: str = Field(description="token:<name>, cli:<user> or anonymous")
    action: str = Field(description="http for an API request, else e.g. rollout.start")
    target: str = Field(description="the request path, or the object acted on")
    detail: dict[str, Any]
    role: str | None
    token_id: int | None
    method: str | None
    route: str | None = Field(description="the route template, e.g. /api/v1/rollouts/{id}")
    status: int | None = Field(description="the response status code")
    client: str | None = Field(description="the client's address")


class OutboxOut(ORM):
    """One notification of the outbox (the payload itself is not shown)."""

    id: int
    dedup_key: str = Field(description="<channel>:<recipient>:<ticket number>:<event id>[.<part>]")
    created_at: datetime = Field(description="when it was enqueued (with the ticket change)")
    channel: str = Field(description="email, telegram, webhook or otrs")
    recipient: str = Field(description="the address, the tenant (webhook) or `ticket` (otrs)")
    tenant: str | None
    incident_number: str
    kind: str | None = Field(default=None, description="created, status or solution")
    state: str = Field(description="pending, sent or dead")
    attempts: int = Field(description="failed or running tries since enqueued or requeued")
    next_attempt_at: datetime = Field(description="due then (while a worker holds it: its lease)")
    claimed_by: str | None = Field(description="the worker holding it now, if any")
    last_error: str | None = Field(
        description="why the last try failed (`permanent: …` for a rejection, "
        "`deferred: …` when held back)"
    )
    sent_at: datetime | None
