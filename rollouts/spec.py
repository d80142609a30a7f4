"""What a rollout is asked to do: the request, validated data."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.errors import InputError
from orchestrator.strict_types import WHOLE, Int, IsoTime, NoNul, NoNulTexts

IMAGE_PATTERN = r"^[a-z0-9][a-z0-9._/:@-]*$"
WAVE_RE = re.compile(r"^(\d+)(%?)$")
# A count > 0, or a percent in 1..100 (leading zeros allowed, as WAVE_RE reads them).
WAVE_PATTERN = r"^(?:0*[1-9][0-9]{0,8}|0*(?:100|[1-9][0-9]?)%)$"
# The API's request bodies are strict, as their schema says: 0 is no boolean, "3" no number.
STRICT = ConfigDict(extra="forbid", strict=True)
Item = Annotated[NoNul, Field(min_length=1, max_length=255)]
Instances = Annotated[int, Field(ge=1, le=500), WHOLE]
Ring = Literal["internal", "canary", "early", "general", "late"]  # fleetfile.RINGS


class GateSpec(BaseModel):
    """Health gate: ``passes`` consecutive healthy answers within ``deadline_s``."""

    model_config = STRICT

    passes: Int = Field(default=3, ge=1, le=100)
    deadline_s: float = Field(default=60.0, gt=0, le=3600)
    interval_s: float = Field(default=0.5, gt=0, le=60)


class Strategy(BaseModel):
    """How a rollout proceeds: waves, parallelism, failure budget, manual gates."""

    model_config = STRICT

    waves: list[Annotated[str, Field(pattern=WAVE_PATTERN)]] = Field(
        default_factory=lambda: ["100%"],
        min_length=1,
        max_length=100,
        description=(
            "cumulative targets, each a count or a percent of the selection: "
            '["1", "25%", "100%"] = one canary instance, then up to a quarter, then the rest; '
            "instances are taken in ring order (internal, canary, early, general, late)"
        ),
    )
    parallelism: Int = Field(default=1, ge=1, le=500, description="instances at once, globally")
    per_host_parallelism: Instances | None = Field(
        default=None, description="instances at once on one host"
    )
    max_unavailable: Instances | None = Field(
        default=None, description="instances out of service at once (default: parallelism)"
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
    approve_after: list[Annotated[int, Field(ge=1, le=100), WHOLE]] = Field(
        default_factory=list,
        max_length=100,
        description="wave numbers (1-based) after which to wait for approve; each at most the "
        "number of waves (else 400)",
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

    def check_rules(self) -> None:
        """The rule across fields that no schema can state (so a 400, not a 422)."""
        for n in self.approve_after:
            if not 1 <= n <= len(self.waves):
                raise InputError(
                    f"strategy.approve_after: {n}: there are {len(self.waves)} wave(s)"
                )

    def budget(self, total: int) -> int:
        """How many failed instances are tolerated in a selection of ``total``."""
        m = WAVE_RE.match(self.failure_budget)
        assert m is not None
        n = int(m.group(1))
        return n * total // 100 if m.group(2) else n


class Schedule(BaseModel):
    model_config = STRICT

    at: IsoTime | None = Field(
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
        strict=True,
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
    tenants: list[Item] | None = Field(
        default=None, min_length=1, description="tenant slugs; all when omitted"
    )
    hosts: list[Item] | None = Field(
        default=None, min_length=1, description="only instances on these hosts"
    )
    rings: list[Ring] | None = Field(default=None, description="only tenants in these rings")
    labels: NoNulTexts | None = Field(
        default=None, description="only containers carrying all these labels"
    )
    gate: GateSpec = Field(default_factory=GateSpec)
    strategy: Strategy = Field(default_factory=Strategy)
    backup: bool = Field(
        default=True, description="pg_dump the tenant database first (tenants with a db_dsn)"
    )
    migrate: list[Annotated[NoNul, Field(min_length=1, max_length=10_000)]] | None = Field(
        default=None,
        min_length=1,
        description="migration command, run in a one-off container of the new image first",
    )
    schedule: Schedule = Field(default_factory=Schedule)
