"""Pure decisions about faults of the environment during a rollout (issue #8).

A rollout must not mistake a broken environment for a bad update: a Docker daemon that does
not answer (stopped, restarting, its socket gone) or a backup disk that is full says nothing
about the new version. ``classify`` tells a host fault from a step failure; ``wait_decision``
says whether to ping the host again or to pause the rollout; the reasons are worded here so
the API, the CLI and the journal say the same thing. The acting code is ``rollouts.instance``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from orchestrator.errors import HostUnreachable

Kind = Literal["host", "port", "step"]
HOST_FAULT: Kind = "host"
# A published port still held by what a crashed daemon left (its docker-proxy): the host
# answers, but no container can take the port until the leftover goes (issue #12).
PORT_FAULT: Kind = "port"
STEP_FAILURE: Kind = "step"
# How often a host that stopped answering is pinged while a step waits for it.
PING_INTERVAL_S = 1.0
FIRST_PING_S = 0.25


def classify(error: BaseException | None, *, host_answers: bool) -> Kind:
    """A failed step is the host's fault when the daemon did not answer the call
    (``HostUnreachable``) or does not answer a ping right after the step failed (a daemon
    shutting down stops its containers first: the step sees a container exit, or an API error,
    an instant before the socket goes away). Anything else — image not found, a container that
    exits or fails its gate while its daemon answers — is a failure of the step."""
    if isinstance(error, HostUnreachable) or not host_answers:
        return HOST_FAULT
    if error is not None and port_taken(str(error)):
        return PORT_FAULT
    return STEP_FAILURE


# How Docker says a container cannot publish its port: the port allocator, or the proxy's
# bind (a docker-proxy left running by a daemon killed with SIGKILL holds it).
PORT_TAKEN_MARKERS = ("port is already allocated", "address already in use")


def port_taken(error: str) -> bool:
    """Whether a failed start was refused the container's published port. The container
    being started is an instance's own (copied from the one it replaces, which is stopped):
    whatever holds its port is the environment's, never the new version's fault."""
    text = error.lower()
    return any(marker in text for marker in PORT_TAKEN_MARKERS)


def port_wait_decision(
    *, waited_s: float, limit_s: float, attempt: int, host: str, error: str
) -> Retry | Pause:
    """A start refused its port: try again after a back-off (FIRST_PING_S doubling to
    PING_INTERVAL_S), or pause once ``limit_s`` (CPDOPS_HOST_WAIT_S) has passed."""
    if waited_s >= limit_s:
        return Pause(port_pause_reason(host, error))
    delay = min(PING_INTERVAL_S, FIRST_PING_S * (2**attempt))
    return Retry(after_s=max(0.0, min(delay, limit_s - waited_s)))


def port_pause_reason(host: str, error: str) -> str:
    return (
        f"host {host}: a published port is still taken ({error}) — a port proxy left by a "
        "crashed Docker daemon? free it (restart the daemon cleanly, or end the stale "
        "docker-proxy) and resume"
    )


# What reconcile writes into a step a dead process left ``started``.
DANGLING_STATE = "interrupted"
DANGLING_ERROR = "the process running this step stopped (closed on reconcile)"


def dangling(steps: Iterable[tuple[int, str]], own: Collection[int]) -> list[int]:
    """Steps to close on reconcile: ``(id, state)`` rows still ``started`` that this process
    did not begin (``own``: the steps its journal holds open). They were left by a runner
    that died (SIGKILL, lost lease): closed ``interrupted`` so the journal says what
    happened, not a step that runs forever after the rollout ended."""
    return [step_id for step_id, state in steps if state == "started" and step_id not in own]


# Exit codes of a container stopped from outside: a clean exit on SIGTERM (0), the shell
# convention for death by SIGTERM (143) or SIGKILL after the stop timeout (137).
STOPPED_EXIT_CODES = frozenset({0, 128 + 15, 128 + 9})


def may_be_daemon_stop(exit_code: int | None) -> bool:
    """Whether a container that exited under the gate may have been stopped by its daemon
    shutting down: a stopping daemon stops its containers first (``docker stop``'s way) and
    answers its API until they are down. Only then is the host watched a little longer
    before the gate counts as failed; a crash (any other exit code) fails it at once."""
    return exit_code is None or exit_code in STOPPED_EXIT_CODES


@dataclass(frozen=True)
class Retry:
    after_s: float


@dataclass(frozen=True)
class Pause:
    reason: str


def wait_decision(
    *, waited_s: float, limit_s: float, attempt: int, host: str, since: datetime, error: str
) -> Retry | Pause:
    """After ``attempt`` failed pings (0: the step just failed), ``waited_s`` into the wait:
    ping again after a short back-off (FIRST_PING_S doubling to PING_INTERVAL_S), or pause
    once ``limit_s`` (CPDOPS_HOST_WAIT_S) has passed without an answer."""
    if waited_s >= limit_s:
        return Pause(host_pause_reason(host, since, error))
    delay = min(PING_INTERVAL_S, FIRST_PING_S * (2**attempt))
    return Retry(after_s=max(0.0, min(delay, limit_s - waited_s)))


def host_pause_reason(host: str, since: datetime, error: str) -> str:
    return (
        f"host {host} unreachable since {since.astimezone():%H:%M:%S} ({error}); "
        "resume when it is back"
    )


def space_pause_reason(tenant: str, message: str) -> str:
    return f"tenant {tenant}: {message}"


def interrupted(last_step: tuple[str, str] | None) -> bool:
    """Whether an instance was left by a host fault: its last journal step is a host ``wait``
    that timed out (the rollout paused). It is reconciled before anything else is done."""
    return last_step == ("wait", "timeout")


def abort_refusal(rollout_id: int, silent: dict[str, list[str]]) -> str | None:
    """Why an abort must wait: hosts (to the tenants interrupted there) that do not answer.
    An abort reconciles every interrupted instance first, which needs its daemon; None when
    every such host answers."""
    if not silent:
        return None
    where = "; ".join(f"{h} ({', '.join(sorted(t))})" for h, t in sorted(silent.items()))
    return (
        f"cannot abort rollout {rollout_id} yet: host(s) {where} do not answer, and the "
        "instances a host fault interrupted there must be reconciled first; abort again when "
        "the host is back"
    )
