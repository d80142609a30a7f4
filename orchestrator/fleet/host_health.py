"""Host health as a pure decision: ping results in, the host's state out (no I/O, no clock).

Rules:

* a host is ``ok`` until ``failure_threshold`` consecutive pings failed, then ``unreachable``
  (its reason: the last failure; ``since``: the time of the check that made it unreachable);
* one successful ping makes it ``ok`` again (``since``: the time it came back);
* a host with at least one failed ping in a row is *suspect* (``held``): its tenants' monitors
  are held from the first failure on, so their DOWNs never outrun the host's verdict.

Only transitions change ``status``/``since``; the failure count moves with every check.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

OK = "ok"
UNREACHABLE = "unreachable"
STATUSES = (OK, UNREACHABLE)


@dataclass(frozen=True)
class HostHealth:
    status: str = OK
    failures: int = 0  # consecutive failed pings
    reason: str | None = None
    since: datetime | None = None  # when ``status`` last changed (None: never judged)

    @property
    def held(self) -> bool:
        """The host's monitors are held: it failed its last check, or is unreachable."""
        return self.failures > 0 or self.status == UNREACHABLE


@dataclass(frozen=True)
class Check:
    """One ping of the host: whether it answered, why not, when."""

    ok: bool
    at: datetime
    reason: str | None = None


def decide(state: HostHealth, check: Check, *, failure_threshold: int) -> HostHealth:
    """The host's state after ``check``."""
    if failure_threshold < 1:
        raise ValueError("failure_threshold must be >= 1")
    if check.ok:
        if state.status == OK:
            return replace(state, failures=0)
        return HostHealth(OK, 0, None, check.at)
    failures = state.failures + 1
    if state.status == UNREACHABLE:
        return replace(state, failures=failures)
    if failures >= failure_threshold:
        return HostHealth(UNREACHABLE, failures, check.reason or "no answer", check.at)
    return replace(state, failures=failures)


def attributed_to_host(state: HostHealth | None, now: datetime, *, settle_s: float) -> bool:
    """Whether a monitor DOWN on this host belongs to the host's outage (no tenant incident):
    the host is held (suspect or unreachable), or it came back less than ``settle_s`` ago — a
    restarted host's containers take a while to start, and their monitors, released at once,
    see that start; a tenant still DOWN after it stays on the host incident, which is solved
    only once every monitor of the host is UP."""
    if state is None:
        return False
    if state.held:
        return True
    return (
        state.status == OK
        and state.since is not None
        and (now - state.since).total_seconds() < settle_s
    )


def tenant_status(
    host_name: str | None, hosts: dict[str, tuple[str, str | None]]
) -> tuple[str, str | None]:
    """A tenant's (status, reason) from its host's: ``hosts`` maps host → (status, reason)."""
    status, reason = hosts.get(host_name or "", (OK, None))
    if status == UNREACHABLE:
        return UNREACHABLE, f"host {host_name} unreachable: {reason or 'no answer'}"
    return OK, None


def transition(old: HostHealth, new: HostHealth) -> str | None:
    """The new status when ``decide`` changed it, else None."""
    return new.status if new.status != old.status else None
