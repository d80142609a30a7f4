"""The monitor state machine: pure functions, no I/O, no clock.

Rules (one consecutive-count rule each way, whatever the current status):

* a new monitor is PENDING (nothing verified yet);
* UP needs ``recovery_threshold`` consecutive successes (from PENDING or DOWN);
* DOWN needs ``failure_threshold`` consecutive failures (from UP or PENDING);
* a failure below the threshold turns UP into PENDING ("retrying"); DOWN stays DOWN;
* while a :class:`Hold` is in force the status is MAINTENANCE whatever the probes say, and the
  counters stay at zero;
* when the hold ends the monitor is PENDING with zero counters: it is verified again from scratch.

Three holds exist: a maintenance window (:attr:`Hold.MAINTENANCE`), a rollout working on the
instance (:attr:`Hold.SUPPRESSED`) and the monitor's Docker host not answering
(:attr:`Hold.HOST`). They act the same on the status; they are kept apart so the reason shown
to people differs, and so one's end does not lift another. When several apply,
:func:`effective_hold` picks HOST, then SUPPRESSED, then MAINTENANCE.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass, replace


class MonitorStatus(enum.IntEnum):
    """Values are the ``monitor_status`` gauge of SPEC §3.5."""

    DOWN = 0
    UP = 1
    PENDING = 2
    MAINTENANCE = 3


class Hold(enum.StrEnum):
    """Why a monitor's probes are not being judged right now."""

    MAINTENANCE = "maintenance"
    """The tenant's maintenance window is open."""
    SUPPRESSED = "suppressed"
    """A rollout is working on the instance; its own health gate judges it."""
    HOST = "host"
    """The instance's Docker host does not answer: the host incident stands for it."""


@dataclass(frozen=True)
class MonitorState:
    status: MonitorStatus = MonitorStatus.PENDING
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    hold: Hold | None = None


def effective_hold(holds: Collection[Hold]) -> Hold | None:
    """The hold that names the status when several apply (a dead host beats a rollout, a
    rollout beats a window)."""
    if Hold.HOST in holds:
        return Hold.HOST
    if Hold.SUPPRESSED in holds:
        return Hold.SUPPRESSED
    if Hold.MAINTENANCE in holds:
        return Hold.MAINTENANCE
    return None


def apply_hold(state: MonitorState, hold: Hold | None) -> MonitorState:
    """Put a hold in force (MAINTENANCE) or lift it (PENDING, to be verified again)."""
    if hold is not None:
        return MonitorState(status=MonitorStatus.MAINTENANCE, hold=hold)
    if state.hold is not None:
        return MonitorState(status=MonitorStatus.PENDING)
    return state


def step(
    state: MonitorState,
    ok: bool,
    *,
    failure_threshold: int,
    recovery_threshold: int,
    hold: Hold | None = None,
) -> MonitorState:
    """The state after one probe result, with ``hold`` being the hold in force at the time."""
    if failure_threshold < 1 or recovery_threshold < 1:
        raise ValueError("thresholds must be >= 1")
    state = apply_hold(state, hold)
    if state.hold is not None:
        return state
    if ok:
        successes = state.consecutive_successes + 1
        status = state.status
        if status is not MonitorStatus.UP and successes >= recovery_threshold:
            status = MonitorStatus.UP
        return replace(
            state, status=status, consecutive_successes=successes, consecutive_failures=0
        )
    failures = state.consecutive_failures + 1
    if failures >= failure_threshold:
        status = MonitorStatus.DOWN
    elif state.status is MonitorStatus.UP:
        status = MonitorStatus.PENDING
    else:
        status = state.status
    return replace(state, status=status, consecutive_failures=failures, consecutive_successes=0)
