"""Health gates: N healthy answers within a deadline; a failed gate is a value.

An answer passes when it is 200, reports the expected version, and — when it says which
tenant it serves (``/health`` carries ``"tenant"``) — names the instance's own tenant: a
published port can answer as another tenant (a port proxy a crashed Docker daemon left
forwards to an address a restarted daemon gave to another container), and that must never
pass for the tenant's health (``monitors.probes.http.tenant_problem`` is the same rule for
the monitors).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from monitors.probes.http import tenant_problem


@dataclass(frozen=True)
class GateResult:
    ok: bool
    passes: int
    attempts: int
    reason: str
    status_code: int | None = None
    body_excerpt: str = ""
    version: str | None = None


@dataclass(frozen=True)
class GateProgress:
    """Where a running gate stands after an attempt: published in the gate step's detail
    (``progress``) so ``GET /api/v1/rollouts/{id}``, the CLI and the UI show it."""

    passes: int  # consecutive passes so far
    needed: int
    attempts: int
    last: str  # the last answer: "healthy", "HTTP 500", "ConnectError: …"
    status_code: int | None
    left_s: float  # until the deadline

    def as_detail(self) -> dict[str, object]:
        return {
            "passes": self.passes,
            "needed": self.needed,
            "attempts": self.attempts,
            "last": self.last,
            "status_code": self.status_code,
            "left_s": round(max(0.0, self.left_s), 1),
        }


def judge_health(
    status: int, body: str, expect_version: str | None, expect_tenant: str | None = None
) -> tuple[bool, str, str | None]:
    """Pure: is one health answer a pass? Returns (ok, reason, reported version)."""
    version: str | None = None
    try:
        data = json.loads(body)
        if isinstance(data, dict) and data.get("version") is not None:
            version = str(data["version"])
    except ValueError:
        pass
    if status != 200:
        return False, f"HTTP {status}", version
    wrong_tenant = tenant_problem(body.encode("utf-8", "replace"), expect_tenant)
    if wrong_tenant is not None:
        return False, wrong_tenant, version
    if expect_version is not None and version != expect_version:
        return False, f"reports version {version!r}, expected {expect_version!r}", version
    return True, "healthy", version


def http_gate(
    url: str,
    *,
    expect_version: str | None,
    expect_tenant: str | None = None,
    passes: int,
    deadline_s: float,
    interval_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    should_stop: Callable[[], bool] = lambda: False,
    on_attempt: Callable[[GateProgress], None] | None = None,
) -> GateResult:
    """Poll ``url`` until ``passes`` consecutive passes, or the deadline, or a fatal signal;
    ``on_attempt`` is told the progress after each attempt."""
    end = clock() + deadline_s
    consecutive = attempts = 0
    last = GateResult(False, 0, 0, "no answer yet")
    with httpx.Client(timeout=min(5.0, max(interval_s * 4, 1.0))) as client:
        while True:
            attempts += 1
            try:
                resp = client.get(url)
                ok, reason, version = judge_health(
                    resp.status_code, resp.text, expect_version, expect_tenant
                )
                last = GateResult(
                    ok, consecutive, attempts, reason, resp.status_code, resp.text[:512], version
                )
            except httpx.HTTPError as exc:
                ok = False
                last = GateResult(False, consecutive, attempts, f"{type(exc).__name__}: {exc}")
            consecutive = consecutive + 1 if ok else 0
            if on_attempt is not None:
                on_attempt(
                    GateProgress(
                        consecutive, passes, attempts, last.reason, last.status_code, end - clock()
                    )
                )
            if consecutive >= passes:
                return GateResult(
                    True,
                    consecutive,
                    attempts,
                    "healthy",
                    last.status_code,
                    last.body_excerpt,
                    last.version,
                )
            if should_stop():
                return GateResult(
                    False,
                    consecutive,
                    attempts,
                    f"stopped: {last.reason}",
                    last.status_code,
                    last.body_excerpt,
                    last.version,
                )
            if clock() + interval_s > end:
                return GateResult(
                    False,
                    consecutive,
                    attempts,
                    f"not healthy within {deadline_s:g}s: {last.reason}",
                    last.status_code,
                    last.body_excerpt,
                    last.version,
                )
            sleep(interval_s)
