"""What a rollout is asked to do: the request, validated data."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.fleet.fleetfile import RINGS

IMAGE_PATTERN = r"^[a-z0-9][a-z0-9._/:@-]*$"


class GateSpec(BaseModel):
    """Health gate: ``passes`` consecutive healthy answers within ``deadline_s``."""

    model_config = ConfigDict(extra="forbid")

    passes: int = Field(default=3, ge=1, le=100)
    deadline_s: float = Field(default=60.0, gt=0, le=3600)
    interval_s: float = Field(default=0.5, gt=0, le=60)


class RolloutRequest(BaseModel):
    """A request to move a selection of instances to ``image``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"image": "smartcpd-fake:2", "tenants": ["acme", "beta"]}]},
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
    gate: GateSpec = Field(default_factory=GateSpec)

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
