"""What a monitor is, what a probe returns, and the interface every probe kind implements.

A probe kind (``http``, later ``tcp``, ``sip``, ``postgres``, ``container``) is one module under
``monitors/probes/`` with a class satisfying :class:`Probe`, listed by hand in
``monitors.probes.PROBES``. A failed check is a :class:`ProbeResult` with ``ok=False``, never an
exception.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

BODY_EXCERPT_CHARS = 512
"""How much of a response body a result keeps as evidence."""
REDACTED = "***"
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):[^@/\s]*@")
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)", re.I)


@dataclass(frozen=True)
class MonitorSpec:
    """One monitor: what to probe, how often, and when to call it DOWN or UP.

    ``id`` is stable across reconfiguration (the engine keys its state on it); ``host`` is the
    Docker host the target runs on (a metric label and a correlation key, not a network address).
    """

    id: str
    name: str
    tenant: str
    host: str
    kind: str
    target: str
    interval_s: float = 10.0
    timeout_s: float = 5.0
    failure_threshold: int = 2
    recovery_threshold: int = 1
    expect_status: tuple[int, ...] = (200,)
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    # Per-kind settings (e.g. SIP transport and accepted codes), validated by the probe kind.
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.id:
            problems.append("id must not be empty")
        if not self.kind:
            problems.append("kind must not be empty")
        if not self.target:
            problems.append("target must not be empty")
        if not self.interval_s > 0:
            problems.append(f"interval_s must be > 0, got {self.interval_s!r}")
        if not self.timeout_s > 0:
            problems.append(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if self.failure_threshold < 1:
            problems.append(f"failure_threshold must be >= 1, got {self.failure_threshold!r}")
        if self.recovery_threshold < 1:
            problems.append(f"recovery_threshold must be >= 1, got {self.recovery_threshold!r}")
        statuses = tuple(self.expect_status)
        if not statuses:
            problems.append("expect_status must not be empty")
        bad = [code for code in statuses if not 100 <= code <= 599]
        if bad:
            problems.append(f"expect_status has codes outside 100..599: {bad}")
        if problems:
            raise ValueError(f"monitor {self.id!r}: " + "; ".join(problems))
        # Normalise so that an equal configuration compares equal and nothing can mutate it.
        object.__setattr__(self, "expect_status", statuses)
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


@dataclass(frozen=True)
class MetricSample:
    """An extra series a probe reports (e.g. ``pg_stat_activity_count{datname,state}``).

    The collector adds the monitor's own labels (``server`` for PostgreSQL, …) as the probe
    kind decides; ``labels`` here are the sample's own.
    """

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    help: str = ""
    # the Prometheus type: "gauge", "counter" (exported under ``name`` as it is, as
    # postgres_exporter does: ``pg_stat_database_xact_commit`` is a counter) or "untyped"
    type: str = "gauge"


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one check. ``at`` is when the check started (UTC)."""

    ok: bool
    duration_s: float
    reason: str
    status_code: int | None = None
    body_excerpt: str = ""
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Kind-specific facts (SIP reply line, container state, …) kept as evidence.
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # Extra series for /metrics (PostgreSQL deep health, container CPU/memory, …).
    samples: tuple[MetricSample, ...] = ()

    @classmethod
    def failure(
        cls,
        reason: str,
        *,
        duration_s: float,
        at: datetime | None = None,
        status_code: int | None = None,
        body_excerpt: str = "",
    ) -> ProbeResult:
        """A failed check, e.g. ``ProbeResult.failure("connection refused", duration_s=0.01)``."""
        return cls(
            ok=False,
            duration_s=duration_s,
            reason=reason,
            status_code=status_code,
            body_excerpt=body_excerpt,
            at=at if at is not None else datetime.now(UTC),
        )


class Probe(Protocol):
    """One probe kind. An instance is shared by every monitor of that kind in an engine.

    ``check`` must not raise for a failing target (it returns ``ok=False`` with a reason); it may
    be cancelled at any await (the engine enforces ``spec.timeout_s`` from outside as well).
    ``aclose`` releases pooled connections; the engine calls it once, on its own event loop.
    """

    async def check(self, spec: MonitorSpec) -> ProbeResult: ...

    async def aclose(self) -> None: ...


def public_target(target: str) -> str:
    """``target`` fit to show (API, CLI, tickets): a password in a URL's user part or in a libpq
    ``password=`` keyword is replaced by ``***``, e.g. ``postgresql://mon:***@db:5432/acme``,
    and so is the value of a query parameter that names a secret (``?token=***``)."""
    from orchestrator.incidents.redact import redact_query  # late: probes import this module

    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{REDACTED}@", target)
    return redact_query(_KV_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}", text))


def timeout_reason(timeout_s: float) -> str:
    """The one wording for a check that ran out of time: ``timeout after 5.0s``."""
    return f"timeout after {float(timeout_s)}s"
