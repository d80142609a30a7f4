"""ORM models (SQLAlchemy 2). Request/response schemas live in ``orchestrator.api.schemas``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    url: Mapped[str] = mapped_column(String(500))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tls: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    ssh: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Host health (orchestrator/fleet/host_health.py), written by the leader on transitions.
    status: Mapped[str] = mapped_column(String(16), default="ok", server_default="ok")
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    status_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    ring: Mapped[str] = mapped_column(String(16), default="general")
    language: Mapped[str] = mapped_column(String(8), default="ru")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    maintenance_window: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    contacts: Mapped[list[Any]] = mapped_column(default=list)
    channels: Mapped[list[Any]] = mapped_column(default=list)
    db_dsn: Mapped[str | None] = mapped_column(String(500), nullable=True)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    host_name: Mapped[str | None] = mapped_column(String(63), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ConfigItem(Base):
    """Fleet-wide settings from the fleet file: monitor defaults, incident thresholds."""

    __tablename__ = "config_items"

    key: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Notifier(Base):
    __tablename__ = "notifiers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    image: Mapped[str] = mapped_column(String(500))
    target_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    selection: Mapped[dict[str, Any]] = mapped_column(default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(100), default="cli")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # A one-shot request from an operator: pause | resume | approve | abort | rollback.
    control: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Decision state: approved waves, wave end times, acknowledged failures, last reason.
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The process running the rollout holds a lease; another may take over when it lapses.
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    instances: Mapped[list[RolloutInstance]] = relationship(
        back_populates="rollout", order_by="RolloutInstance.position", cascade="all"
    )


class RolloutInstance(Base):
    """One instance's place in a rollout, with its current state."""

    __tablename__ = "rollout_instances"
    __table_args__ = (UniqueConstraint("rollout_id", "tenant", "host", "container_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    tenant: Mapped[str] = mapped_column(String(63), index=True)
    host: Mapped[str] = mapped_column(String(63))
    container_name: Mapped[str] = mapped_column(String(255))
    old_image: Mapped[str | None] = mapped_column(String(500), nullable=True)
    old_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    old_container_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    new_container_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    wave: Mapped[int] = mapped_column(Integer, default=0)
    backup_path: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    migrated: Mapped[bool] = mapped_column(default=False)

    rollout: Mapped[Rollout] = relationship(back_populates="instances")
    steps: Mapped[list[RolloutStep]] = relationship(
        back_populates="instance", order_by="RolloutStep.id", cascade="all"
    )


class RolloutStep(Base):
    """The journal: a step is written before it acts and updated when it ends."""

    __tablename__ = "rollout_steps"

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("rollout_instances.id"), index=True)
    step: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="started")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    instance: Mapped[RolloutInstance] = relationship(back_populates="steps")


class TicketCounter(Base):
    """Daily counter behind the DateChecksum ticket numbers."""

    __tablename__ = "ticket_counters"

    day: Mapped[str] = mapped_column(String(8), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


class Incident(Base):
    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    type: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(32), default="new", index=True)
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    tenant: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    subject: Mapped[str] = mapped_column(String(500))
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(32), default="portal")
    # Set while the incident is active so that one failure opens one ticket; cleared on close.
    open_key: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"), nullable=True)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("incidents.id"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    events: Mapped[list[IncidentEvent]] = relationship(
        back_populates="incident", order_by="IncidentEvent.id", cascade="all"
    )
    attachments: Mapped[list[IncidentAttachment]] = relationship(
        back_populates="incident", order_by="IncidentAttachment.id", cascade="all"
    )
    parent: Mapped[Incident | None] = relationship(
        remote_side="Incident.id", back_populates="children"
    )
    children: Mapped[list[Incident]] = relationship(back_populates="parent", order_by="Incident.id")


class IncidentEvent(Base):
    """The timeline: every change with author and time."""

    __tablename__ = "incident_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    author: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)

    incident: Mapped[Incident] = relationship(back_populates="events")


class IncidentAttachment(Base):
    """A file on a ticket (the customer's screenshot, an inbound mail's attachment), kept in the
    database up to ``tickets.MAX_ATTACHMENT_BYTES``; ``content`` is loaded only when asked for."""

    __tablename__ = "incident_attachments"

    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = deferred(mapped_column(LargeBinary))
    author: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    incident: Mapped[Incident] = relationship(back_populates="attachments")


class OutboxMessage(Base):
    """One notification to send (SPEC §3.6): enqueued in the transaction of the ticket change
    that caused it, delivered by ``outbox.deliver_due`` with retries; ``dedup_key`` makes the
    enqueue exactly-once."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    channel: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(255))
    tenant: Mapped[str | None] = mapped_column(String(63), nullable=True)
    incident_number: Mapped[str] = mapped_column(String(32), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(8), default="pending", doc="pending | sent | dead")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Due time; while a worker holds the row it is the end of the worker's lease.
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class IntakeReceipt(Base):
    """One message an intake has taken in (a Telegram ``update_id``, a mail's ``Message-ID``):
    the unique ``(source, external_id)`` makes intake exactly-once when a sender retries.
    ``sender`` (a chat id, a mail address) lets the same sender follow up on its own tickets."""

    __tablename__ = "intake_receipts"
    __table_args__ = (UniqueConstraint("source", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(255))
    incident_number: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    sender: Mapped[str | None] = mapped_column(String(255), nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RemoteTicket(Base):
    """A ticket of ours as a remote desk knows it (the OTRS/Znuny notifier): one remote
    ticket per notifier and ticket, created by its first notification, updated by the rest."""

    __tablename__ = "remote_tickets"
    __table_args__ = (UniqueConstraint("notifier", "incident_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    notifier: Mapped[str] = mapped_column(String(63))
    incident_number: Mapped[str] = mapped_column(String(32), index=True)
    remote_id: Mapped[str] = mapped_column(String(64))
    remote_number: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MonitorRecord(Base):
    """A monitor's last known state; written on every status change (not every check)."""

    __tablename__ = "monitors"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    tenant: Mapped[str] = mapped_column(String(63), index=True)
    host: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(500))
    status: Mapped[int] = mapped_column(Integer, default=2)
    reason: Mapped[str] = mapped_column(Text, default="")
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set when the monitor goes DOWN, cleared when it is UP again (through any path).
    down_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class MonitorChange(Base):
    """One status change of a monitor, at the time it happened (``at``, from the engine; not
    when it was written: during a database outage changes wait in memory and are written when
    it is back, ``orchestrator.change_writer``). Unique per monitor and ``at``: a change
    written again after an ambiguous commit is recognised and not applied twice."""

    __tablename__ = "monitor_changes"
    __table_args__ = (UniqueConstraint("monitor_id", "at", name="uq_monitor_changes_monitor_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    monitor_id: Mapped[str] = mapped_column(String(255))
    tenant: Mapped[str] = mapped_column(String(63), index=True)
    old: Mapped[int] = mapped_column(Integer)
    new: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    written_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AlertRecord(Base):
    """An Alertmanager alert's last known state, one row per fingerprint (as ``MonitorRecord``
    is for a monitor): written when a delivery changes it, never by a repeat (the same
    fingerprint and ``startsAt``)."""

    __tablename__ = "alerts"

    fingerprint: Mapped[str] = mapped_column(String(200), primary_key=True)
    alertname: Mapped[str] = mapped_column(String(255), default="")
    tenant: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True, doc="Docker host")
    db_server: Mapped[str | None] = mapped_column(
        String(255), nullable=True, doc="PostgreSQL server"
    )
    status: Mapped[str] = mapped_column(String(8), doc="firing | resolved")
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # When cpdops first received this occurrence (``startsAt``) firing.
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    incident_id: Mapped[int | None] = mapped_column(
        ForeignKey("incidents.id"), nullable=True, index=True
    )
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MonitorMinute(Base):
    """Per-minute aggregate of one monitor's checks (SPEC §5: history as aggregates)."""

    __tablename__ = "monitor_minutes"

    monitor_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    minute: Mapped[int] = mapped_column(Integer, primary_key=True, doc="Unix time // 60")
    checks: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    maintenance: Mapped[int] = mapped_column(Integer, default=0)
    duration_sum: Mapped[float] = mapped_column(default=0.0)
    duration_max: Mapped[float] = mapped_column(default=0.0)


class DeclaredMonitor(Base):
    """A monitor somebody declared (``POST /api/v1/monitors`` or the fleet file's
    ``monitors.declared``), as opposed to one generated from the registry and the labels.

    ``target`` is kept as written: ``${VAR}`` references (fleet file only) are resolved when the
    monitor is configured. Unset timing fields take the monitor defaults."""

    __tablename__ = "declared_monitors"

    id: Mapped[str] = mapped_column(String(255), primary_key=True, doc="<tenant>/<name>")
    name: Mapped[str] = mapped_column(String(63))
    tenant: Mapped[str] = mapped_column(String(63), index=True)
    host: Mapped[str] = mapped_column(String(63), default="")
    kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(1000))
    interval_s: Mapped[float | None] = mapped_column(nullable=True)
    timeout_s: Mapped[float | None] = mapped_column(nullable=True)
    failure_threshold: Mapped[int | None] = mapped_column(Integer, nullable=True)
    recovery_threshold: Mapped[int | None] = mapped_column(Integer, nullable=True)
    expect_status: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source: Mapped[str] = mapped_column(String(16), doc="api | fleet")
    created_by: Mapped[str] = mapped_column(String(100), default="api")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEntry(Base):
    """One entry of the audit log: who did what, when, from where, with which outcome.

    Domain entries (``rollout.create``, ``fleet.apply``, ``token.create`` …) carry ``actor``,
    ``action``, ``target`` and ``detail``; an API request (``action`` ``http``) adds the
    method, the route template, the status code, the client address and the token. Request
    bodies, query strings and secrets are never stored."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100), doc="token:<name>, cli:<user>, anonymous")
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    token_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    method: Mapped[str | None] = mapped_column(String(8), nullable=True)
    route: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ApiToken(Base):
    """An API credential. The token itself (``cpd_<key_id>_<secret>``) is shown once; only
    the SHA-256 of it is kept, found by its public ``key_id``."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100), index=True)
    role: Mapped[str] = mapped_column(String(16), doc="viewer | operator | admin")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_from: Mapped[str | None] = mapped_column(String(64), nullable=True)
