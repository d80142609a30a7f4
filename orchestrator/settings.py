"""Settings (pydantic-settings, prefix ``CPDOPS_``); built by the caller, never at import."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Process-wide configuration, read from the environment (``CPDOPS_*``)."""

    model_config = SettingsConfigDict(env_prefix="CPDOPS_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./cpdops.db",
        description="SQLAlchemy URL: a SQLite file by default, or postgresql+psycopg2://…",
    )
    bind_host: str = "127.0.0.1"
    bind_port: int = 8077
    local_docker_url: str = Field(
        default="unix:///var/run/docker.sock",
        description="the engine used by `cpdops demo` and as host 'local' when no fleet is applied",
    )
    pull_policy: Literal["missing", "never"] = Field(
        default="missing",
        description="pull an image a host lacks from its registry (missing), or never pull",
    )
    system_id: str = Field(default="01", pattern=r"^\d{2}$", description="ticket number system id")
    monitor_interval_s: float = 10.0
    monitor_timeout_s: float = 5.0
    monitor_failure_threshold: int = 2
    monitor_recovery_threshold: int = 1
    monitor_change_queue: int = Field(
        default=10_000,
        ge=1,
        description="monitor state changes kept in memory while the state database is down "
        "(the oldest is dropped when full)",
    )
    monitor_changes_retention_days: float = Field(
        default=30.0,
        ge=1,
        description="monitor status changes (`monitor_changes`, GET /api/v1/monitors/{id}/changes) "
        "older than this many days are pruned by the leader, hourly, in batches; at least 1 day: "
        "a change's row is what recognises it when it is written again after an ambiguous commit",
    )
    audit_queue: int = Field(
        default=10_000,
        ge=1,
        description="API audit entries kept in memory while the state database is down, written "
        "when it is back (the oldest is dropped when full, cpdops_audit_entries_dropped_total)",
    )
    discovery_interval_s: float = 30.0
    recovery_check_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="how often tickets are checked for verified recovery (incidents.recovery_hold)",
    )
    host_check_s: float = Field(
        default=5.0, gt=0, description="how often the leader pings every Docker host"
    )
    host_failures: int = Field(
        default=2, ge=1, description="consecutive failed pings after which a host is unreachable"
    )
    host_ping_timeout_s: float = Field(
        default=3.0, gt=0, description="how long a host ping may take before it counts as failed"
    )
    host_settle_s: float = Field(
        default=60.0,
        ge=0,
        description="after an unreachable host answers again, how long its monitors' DOWNs "
        "still belong to the host incident (its containers are starting) instead of opening "
        "tenant incidents",
    )
    gate_passes: int = Field(default=3, description="health passes required by a rollout gate")
    gate_deadline_s: float = Field(default=60.0, description="time allowed for the gate to pass")
    gate_interval_s: float = 0.5
    stop_timeout_s: int = 10
    host_wait_s: float = Field(
        default=300.0,
        ge=0,
        description="how long a rollout step waits for a Docker host that stopped answering "
        "(pinged about every second) before the rollout pauses",
    )
    demo_base_port: int = Field(
        default=18080, description="`cpdops demo up` publishes tenant N on 127.0.0.1:<this+N>"
    )
    backup_dir: str = Field(
        default="/var/lib/cpdops/backups", description="where pg_dump backups of tenant DBs go"
    )
    rollout_lease_s: float = Field(
        default=15.0, description="seconds after which a dead runner's rollout may be taken over"
    )
    leader_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="HA on PostgreSQL: how often a follower tries to take the leader lock "
        "and the leader checks its connection",
    )
    outbox_interval_s: float = Field(
        default=2.0, gt=0, description="how often `cpdops serve` sends the outbox's due messages"
    )
    outbox_backoff_cap_s: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="the longest wait between two tries of a failing notification (the back-off "
        "is 5 s doubling up to this): a receiver back after an outage gets its notifications "
        "within it",
    )
    outbox_max_attempts: int = Field(
        default=10,
        ge=1,
        description="a notification that keeps failing is dead after this many attempts "
        "once it has also been retried for outbox_retry_for_s",
    )
    outbox_retry_for_s: float = Field(
        default=3600.0,
        ge=0,
        description="how long a notification that keeps failing is retried at least (since it "
        "was enqueued) before it is dead; a permanent rejection is dead at once",
    )
    test_crash_at: str | None = Field(
        default=None,
        description="TEST HOOK: SIGKILL the process at this rollout step point (crash tests)",
    )
    alertmanager_secret: SecretStr | None = Field(
        default=None,
        description=(
            "shared secret of the Alertmanager webhook intake (`Authorization: Bearer <secret>`); "
            "unset or empty: the intake answers 503"
        ),
    )
    alertmanager_unknown_tenants: Literal["fleet", "refuse"] = Field(
        default="fleet",
        description=(
            "an Alertmanager alert whose tenant label names no registered tenant (or is no "
            "slug): `fleet` joins it to ONE fleet-level ticket (fleet:unknown-tenants), "
            "`refuse` refuses it (listed in the answer's `refused`); never a ticket per tenant"
        ),
    )
    telegram_secret: SecretStr | None = Field(
        default=None,
        description=(
            "secret of the Telegram bot webhook intake: the `secret_token` given to setWebhook, "
            "sent back in `X-Telegram-Bot-Api-Secret-Token` (1-256 of A-Z a-z 0-9 _ -); "
            "unset or empty: the intake answers 503"
        ),
    )
    smtp_listen: str | None = Field(
        default=None,
        description=(
            "host:port where `cpdops serve` takes inbound mail (SMTP), e.g. 127.0.0.1:2525; "
            "unset: no listener"
        ),
    )
    smtp_max_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="the largest inbound mail the SMTP listener accepts (SIZE), in bytes",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="largest request body the API accepts (413 above); the portal intake "
        "with a screenshot allows its own, larger limit",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins allowed to call the API from a browser (comma-separated); "
        "empty: CORS off (no CORS headers)",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="reverse proxies whose X-Forwarded-For is believed (comma-separated IPs "
        "and CIDRs, e.g. 10.0.0.5,172.18.0.0/16); the client address (audit log, access log) "
        "is the rightmost address of the header that is not one of them. Empty: the header is "
        "ignored and the connection's address is the client. X-Real-IP is never read",
    )
    run_monitors: bool = True
    run_scheduler: bool = True

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        for item in value if isinstance(value, list) else []:
            try:
                ipaddress.ip_network(str(item), strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or CIDR (e.g. 10.0.0.5 or 172.18.0.0/16)"
                ) from None
        return value

    @field_validator("smtp_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value:
            listen_address(value)
        return value or None


def listen_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) → (host, port); ValueError when it is not one."""
    host, sep, port = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port, e.g. 127.0.0.1:2525")
    return host, int(port)
