"""Pure decisions: given what a rollout is and what is true now, what happens next.

``next_actions`` knows nothing of Docker or the database; the executor builds a
``RolloutView`` from the journal, applies the actions, and asks again. Table-driven tests
live in ``tests/unit/test_decide.py``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rollouts.spec import Strategy

# Instance states.
PENDING, UPDATING, UPDATED = "pending", "updating", "updated"
FAILED, REVERTING, REVERTED, ERROR = "failed", "reverting", "reverted", "error"
BUSY = (UPDATING, REVERTING)
# Rollout statuses.
ACTIVE = ("running", "paused", "awaiting_approval", "waiting_window", "rolling_back")
FINAL = ("succeeded", "failed", "aborted", "rolled_back")


@dataclass(frozen=True)
class InstanceView:
    id: int
    wave: int
    host: str
    state: str
    eligible: bool = True  # e.g. the tenant's maintenance window is open
    # Its last step is a host wait that timed out (``faults.interrupted``): the instance is
    # as Docker has it until it is reconciled. Only read when an abort is requested.
    interrupted: bool = False


@dataclass(frozen=True)
class RolloutView:
    status: str
    strategy: Strategy
    instances: tuple[InstanceView, ...]
    now: float
    control: str | None = None  # pause | resume | approve | abort | rollback (requested)
    approved: frozenset[int] = frozenset()  # wave indexes (0-based) approved to start
    wave_done_at: dict[int, float] = field(default_factory=dict)
    acknowledged_failures: int = 0
    manual_rollback: bool = False
    # Paused while rolling back (a host silent past CPDOPS_HOST_WAIT_S during a revert):
    # resume or abort finishes the rollback.
    paused_rollback: bool = False
    # Every updated instance was found running and healthy after the last bake (``Verify``).
    verified: bool = False


@dataclass(frozen=True)
class Update:
    instance_id: int


@dataclass(frozen=True)
class Revert:
    instance_id: int


@dataclass(frozen=True)
class Reconcile:
    """Abort: bring an instance a host fault interrupted to a known version first."""

    instance_id: int


@dataclass(frozen=True)
class Verify:
    """The end of a rollout: every updated instance must be running and pass its gate now
    (Argo's "Healthy"), not only when it was updated — a host fault since (a daemon stopped
    or crashed) may have stopped it. One that is not running is started and gated again;
    one that does not come back is rolled back to its kept container and reported."""

    instance_ids: tuple[int, ...]


@dataclass(frozen=True)
class SetStatus:
    status: str
    reason: str = ""


@dataclass(frozen=True)
class MarkWaveDone:
    wave: int


@dataclass(frozen=True)
class Approve:
    wave: int


@dataclass(frozen=True)
class Finish:
    status: str
    reason: str = ""


@dataclass(frozen=True)
class Wait:
    reason: str
    until: float | None = None


Action = Update | Revert | Reconcile | Verify | SetStatus | MarkWaveDone | Approve | Finish | Wait


def _slots(view: RolloutView) -> tuple[int, Counter[str]]:
    s = view.strategy
    limit = min(s.parallelism, s.max_unavailable or s.parallelism)
    busy = [i for i in view.instances if i.state in BUSY]
    return limit - len(busy), Counter(i.host for i in busy)


def _take(view: RolloutView, candidates: list[InstanceView]) -> list[InstanceView]:
    """As many candidates as the global and per-host limits allow, in order."""
    free, per_host = _slots(view)
    host_limit = view.strategy.per_host_parallelism
    chosen = []
    for inst in candidates:
        if free <= 0:
            break
        if host_limit is not None and per_host[inst.host] >= host_limit:
            continue
        chosen.append(inst)
        per_host[inst.host] += 1
        free -= 1
    return chosen


def next_actions(view: RolloutView) -> list[Action]:
    insts = view.instances
    busy = [i for i in insts if i.state in BUSY]
    failures = sum(1 for i in insts if i.state in (FAILED, ERROR))
    budget = view.strategy.budget(len(insts))
    control = view.control

    # A rollback paused on a host fault goes on when resumed or aborted (an abort cannot
    # leave half the fleet reverted: the rollback is finished first).
    if view.status == "paused" and view.paused_rollback and control != "rollback":
        if control in ("resume", "abort"):
            return [SetStatus("rolling_back", f"{control}: finishing the rollback")]
        return [Wait("paused while rolling back")]

    # Rolling back: every updated instance goes back to its kept container.
    if view.status == "rolling_back" or control == "rollback":
        actions: list[Action] = []
        if view.status != "rolling_back":
            actions.append(SetStatus("rolling_back", "rollback requested"))
        todo = [i for i in insts if i.state == UPDATED]
        actions += [Revert(i.id) for i in _take(view, todo)]
        if not todo and not busy:
            errors = sum(1 for i in insts if i.state == ERROR)
            if errors:
                return [Finish("failed", f"{errors} instance(s) could not be restored")]
            final = "rolled_back" if view.manual_rollback or control == "rollback" else "failed"
            return [Finish(final, "every updated instance is back on its previous version")]
        return actions or [Wait("reverting")]

    if control == "abort":
        if busy:
            return [Wait("abort: letting the instances in progress finish")]
        stuck = [i for i in insts if i.interrupted and i.state == PENDING]
        if stuck:  # reconciled first: every instance ends on a known version
            return [Reconcile(i.id) for i in _take(view, stuck)] or [Wait("abort: reconciling")]
        return [Finish("aborted", "aborted by request; updated instances stay updated")]

    if control != "resume" and failures - view.acknowledged_failures > budget:
        reason = f"{failures} failed instance(s), budget {budget}"
        if view.strategy.failure_action == "rollback":
            return [SetStatus("rolling_back", reason)]
        if view.status != "paused":
            return [SetStatus("paused", reason)]
        return [Wait(f"paused: {reason}")]

    if control == "pause" or (view.status == "paused" and control != "resume"):
        if view.status != "paused":
            return [SetStatus("paused", "paused by request")]
        return [Wait("paused")]

    actions = []
    if view.status in ("paused", "waiting_window") and control == "resume":
        actions.append(SetStatus("running", "resumed"))

    open_waves = sorted({i.wave for i in insts if i.state in (PENDING, *BUSY)})
    if not open_waves:
        last = max((i.wave for i in insts), default=0)
        done_at = view.wave_done_at.get(last)
        if done_at is None:
            return [*actions, MarkWaveDone(last)]
        bake_end = done_at + view.strategy.bake_s
        if view.now < bake_end:
            return [*actions, Wait(f"baking wave {last + 1}", until=bake_end)]
        updated = tuple(i.id for i in insts if i.state == UPDATED)
        if updated and not view.verified:
            return [*actions, Verify(updated)]
        errors = sum(1 for i in insts if i.state == ERROR)
        if errors:  # an instance that could not be restored is down: never "succeeded"
            return [Finish("failed", f"{errors} instance(s) could not be restored")]
        return [Finish("succeeded", "every instance is on the new version")]

    wave = open_waves[0]
    if wave > 0:
        prev = wave - 1
        done_at = view.wave_done_at.get(prev)
        if done_at is None:
            return [*actions, MarkWaveDone(prev)]
        bake_end = done_at + view.strategy.bake_s
        if view.now < bake_end:
            return [*actions, Wait(f"baking wave {wave}", until=bake_end)]
        if wave in view.strategy.approve_after and wave not in view.approved:
            if control == "approve":
                return [*actions, Approve(wave)]
            if view.status != "awaiting_approval":
                return [
                    *actions,
                    SetStatus("awaiting_approval", f"approve to start wave {wave + 1}"),
                ]
            return [Wait(f"waiting for approval of wave {wave + 1}")]
    pending = [i for i in insts if i.wave == wave and i.state == PENDING]
    eligible = [i for i in pending if i.eligible]
    started = _take(view, eligible)
    actions += [Update(i.id) for i in started]
    if view.status == "awaiting_approval":
        actions.insert(0, SetStatus("running", "approved"))
    if pending and not eligible and not busy:
        if view.status != "waiting_window":
            actions.append(SetStatus("waiting_window", "outside the maintenance window"))
        actions.append(Wait("waiting for a maintenance window"))
    elif eligible and view.status == "waiting_window":
        actions.insert(0, SetStatus("running", "maintenance window open"))
    return actions or [Wait("instances in progress")]
