"""What a rollout is asked to do: the request, validated data."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.fleet.fleetfile import RINGS

IMAGE_PATTERN = r"^[a-z0-9][a-z0-9._/:@-]*$"
WAVE_RE = re.compile(r"^(\d+)(%?)$")


class GateSpec(BaseModel):
    """Health gate: ``passes`` consecutive healthy answers within ``deadline_s``."""

    model_config = ConfigDict(extra="forbid")

    passes: int = Field(default=3, ge=1, le=100)
    deadline_s: float = Field(default=60.0, gt=0, le=3600)
    interval_s: float = Field(default=0.5, gt=0, le=60)


class Strategy(BaseModel):
    """How a rollout proceeds: waves, parallelism, failure budget, manual gates."""

    model_config = ConfigDict(extra="forbid")

    waves: list[str] = Field(
        default_factory=lambda: ["100%"],
        description=(
            "cumulative targets, each a count or a percent of the selection: "
            '["1", "25%", "100%"] = one canary instance, then up to a quarter, then the rest; '
            "instances are taken in ring order (internal, canary, early, general, late)"
        ),
    )
    parallelism: int = Field(default=1, ge=1, le=500, description="instances at once, globally")
    per_host_parallelism: int | None = Field(
        default=None, ge=1, le=500, description="instances at once on one host"
    )
    max_unavailable: int | None = Field(
        default=None,
        ge=1,
        le=500,
        description="instances out of service at once (default: parallelism)",
    )
    bake_s: float = Field(default=0, ge=0, le=86400, description="wait after each wave")
    failure_budget: str = Field(
        default="0",
        pattern=r"^\d+%?$",
        description="failed instances tolerated: a count, or a percent of the selection",
    )
    failure_action: Literal["rollback", "pause"] = Field(
        default="rollback",
        description="when the budget is exceeded: roll every updated instance back, or pause",
    )
    approve_after: list[int] = Field(
        default_factory=list, description="wave numbers (1-based) after which to wait for approve"
    )
    order: Literal["auto", "stop-first", "start-first"] = Field(
        default="auto",
        description="auto = start-first when the container publishes no fixed host port",
    )

    @field_validator("waves")
    @classmethod
    def _waves(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one wave is needed")
        for w in value:
            m = WAVE_RE.match(w.strip())
            if not m or int(m.group(1)) == 0 or (m.group(2) and int(m.group(1)) > 100):
                raise ValueError(f"bad wave {w!r}: expected a count like 3 or a percent like 25%")
        return [w.strip() for w in value]

    @model_validator(mode="after")
    def _approve_in_range(self) -> Strategy:
        for n in self.approve_after:
            if not 1 <= n <= len(self.waves):
                raise ValueError(f"approve_after {n}: there are {len(self.waves)} wave(s)")
        return self

    def budget(self, total: int) -> int:
        """How many failed instances are tolerated in a selection of ``total``."""
        m = WAVE_RE.match(self.failure_budget)
        assert m is not None
        n = int(m.group(1))
        return n * total // 100 if m.group(2) else n


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: datetime | None = Field(
        default=None,
        description="start at this future time (ISO 8601, with a zone); a past one is refused",
    )
    window: bool = Field(
        default=False,
        description="update each tenant only inside its maintenance window (fleet file)",
    )

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-12-01T02:00:00+03:00")
        now = datetime.now(UTC)
        if value is not None and value < now:
            # a past time would start at once (or, past the scheduler's misfire grace, never)
            raise ValueError(
                f"{value.isoformat()} is in the past (now {now.isoformat(timespec='seconds')}): "
                "give a future time, or none to start now"
            )
        return value


class RolloutRequest(BaseModel):
    """A request to move a selection of instances to ``image``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "image": "smartcpd-fake:2",
                    "rings": ["canary", "general"],
                    "strategy": {"waves": ["1", "25%", "100%"], "parallelism": 3},
                }
            ]
        },
    )

    image: str = Field(
        min_length=1,
        max_length=500,
        pattern=IMAGE_PATTERN,
        description="image reference (repo:tag, optionally @sha256:…)",
    )
    tenants: list[str] | None = Field(default=None, description="tenant slugs; all when omitted")
    hosts: list[str] | None = Field(default=None, description="only instances on these hosts")
    rings: list[str] | None = Field(default=None, description="only tenants in these rings")
    labels: dict[str, str] | None = Field(
        default=None, description="only containers carrying all these labels"
    )
    gate: GateSpec = Field(default_factory=GateSpec)
    strategy: Strategy = Field(default_factory=Strategy)
    backup: bool = Field(
        default=True, description="pg_dump the tenant database first (tenants with a db_dsn)"
    )
    migrate: list[str] | None = Field(
        default=None,
        description="migration command, run in a one-off container of the new image first",
    )
    schedule: Schedule = Field(default_factory=Schedule)

    @field_validator("rings")
    @classmethod
    def _known_rings(cls, value: list[str] | None) -> list[str] | None:
        for ring in value or []:
            if ring not in RINGS:
                raise ValueError(f"unknown ring {ring!r}; expected one of {', '.join(RINGS)}")
        return value

    @field_validator("tenants", "hosts")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must name at least one, or be omitted")
        return value

    @field_validator("migrate")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not all(value)):
            raise ValueError("the migration command must be a non-empty list of arguments")
        return value
