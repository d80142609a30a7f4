"""Table-driven tests of the pure rollout decisions."""

from __future__ import annotations

from typing import Any

import pytest

from rollouts.decide import (
    Approve,
    Finish,
    InstanceView,
    MarkWaveDone,
    Reconcile,
    Revert,
    RolloutView,
    SetStatus,
    Update,
    Verify,
    Wait,
    next_actions,
)
from rollouts.spec import Strategy


def fleet(
    *states: str, waves: tuple[int, ...] | None = None, hosts: str = "abc"
) -> tuple[InstanceView, ...]:
    return tuple(
        InstanceView(
            id=n,
            wave=(waves[n] if waves else 0),
            host=hosts[n % len(hosts)],
            state=st,
        )
        for n, st in enumerate(states)
    )


def view(states: tuple[InstanceView, ...], status: str = "running", **kw: Any) -> RolloutView:
    strategy = Strategy(**kw.pop("strategy", {}))
    return RolloutView(status=status, strategy=strategy, instances=states, now=100.0, **kw)


CASES = [
    # (name, view, expected actions)
    (
        "start up to parallelism",
        view(fleet("pending", "pending", "pending"), strategy={"parallelism": 2}),
        [Update(0), Update(1)],
    ),
    (
        "max_unavailable caps parallelism",
        view(
            fleet("pending", "pending", "pending"),
            strategy={"parallelism": 3, "max_unavailable": 1},
        ),
        [Update(0)],
    ),
    (
        "busy slots are counted",
        view(fleet("updating", "pending", "pending"), strategy={"parallelism": 2}),
        [Update(1)],
    ),
    (
        "per-host limit",
        view(
            fleet("updating", "pending", "pending", "pending", hosts="aab"),
            strategy={"parallelism": 3, "per_host_parallelism": 1},
        ),
        [Update(2)],
    ),
    ("nothing free", view(fleet("updating", "pending")), [Wait("instances in progress")]),
    (
        "wave boundary: mark the wave done",
        view(fleet("updated", "pending", waves=(0, 1))),
        [MarkWaveDone(0)],
    ),
    (
        "wave boundary: bake",
        view(
            fleet("updated", "pending", waves=(0, 1)),
            wave_done_at={0: 95.0},
            strategy={"bake_s": 10},
        ),
        [Wait("baking wave 1", until=105.0)],
    ),
    (
        "wave boundary: baked",
        view(
            fleet("updated", "pending", waves=(0, 1)),
            wave_done_at={0: 80.0},
            strategy={"bake_s": 10},
        ),
        [Update(1)],
    ),
    (
        "next wave waits while the previous is in progress",
        view(fleet("updating", "pending", waves=(0, 1)), strategy={"parallelism": 5}),
        [Wait("instances in progress")],
    ),
    (
        "approval needed",
        view(
            fleet("updated", "pending", waves=(0, 1)),
            wave_done_at={0: 1.0},
            strategy={"waves": ["1", "100%"], "approve_after": [1]},
        ),
        [SetStatus("awaiting_approval", "approve to start wave 2")],
    ),
    (
        "approval awaited",
        view(
            fleet("updated", "pending", waves=(0, 1)),
            status="awaiting_approval",
            wave_done_at={0: 1.0},
            strategy={"waves": ["1", "100%"], "approve_after": [1]},
        ),
        [Wait("waiting for approval of wave 2")],
    ),
    (
        "approve",
        view(
            fleet("updated", "pending", waves=(0, 1)),
            status="awaiting_approval",
            wave_done_at={0: 1.0},
            control="approve",
            strategy={"waves": ["1", "100%"], "approve_after": [1]},
        ),
        [Approve(1)],
    ),
    (
        "approved wave starts",
        view(
            fleet("updated", "pending", waves=(0, 1)),
            status="awaiting_approval",
            wave_done_at={0: 1.0},
            approved=frozenset({1}),
            strategy={"waves": ["1", "100%"], "approve_after": [1]},
        ),
        [SetStatus("running", "approved"), Update(1)],
    ),
    (
        "within budget: go on",
        view(fleet("failed", "pending"), strategy={"failure_budget": "1"}),
        [Update(1)],
    ),
    (
        "budget exceeded: roll back",
        view(fleet("failed", "failed", "updated", "pending"), strategy={"failure_budget": "1"}),
        [SetStatus("rolling_back", "2 failed instance(s), budget 1")],
    ),
    (
        "budget exceeded: pause",
        view(fleet("failed", "pending"), strategy={"failure_action": "pause"}),
        [SetStatus("paused", "1 failed instance(s), budget 0")],
    ),
    (
        "resume after a budget pause acknowledges",
        view(
            fleet("failed", "pending"),
            status="paused",
            control="resume",
            strategy={"failure_action": "pause"},
        ),
        [SetStatus("running", "resumed"), Update(1)],
    ),
    (
        "rolling back reverts updated ones",
        view(
            fleet("updated", "failed", "updated", "pending"),
            status="rolling_back",
            strategy={"parallelism": 5},
        ),
        [Revert(0), Revert(2)],
    ),
    (
        "rolling back done",
        view(fleet("reverted", "failed", "pending"), status="rolling_back"),
        [Finish("failed", "every updated instance is back on its previous version")],
    ),
    (
        "manual rollback",
        view(fleet("updated", "pending"), control="rollback"),
        [SetStatus("rolling_back", "rollback requested"), Revert(0)],
    ),
    (
        "manual rollback done",
        view(fleet("reverted", "pending"), status="rolling_back", manual_rollback=True),
        [Finish("rolled_back", "every updated instance is back on its previous version")],
    ),
    (
        "pause request",
        view(fleet("pending"), control="pause"),
        [SetStatus("paused", "paused by request")],
    ),
    ("paused", view(fleet("pending"), status="paused"), [Wait("paused")]),
    (
        "resume",
        view(fleet("pending"), status="paused", control="resume"),
        [SetStatus("running", "resumed"), Update(0)],
    ),
    (
        "abort waits for in-flight",
        view(fleet("updating", "pending"), control="abort"),
        [Wait("abort: letting the instances in progress finish")],
    ),
    (
        "abort",
        view(fleet("updated", "pending"), control="abort"),
        [Finish("aborted", "aborted by request; updated instances stay updated")],
    ),
    (
        "last wave bakes too",
        view(fleet("updated"), wave_done_at={0: 95.0}, strategy={"bake_s": 10}),
        [Wait("baking wave 1", until=105.0)],
    ),
    (
        "done",
        view(
            fleet("updated", "failed"),
            wave_done_at={0: 1.0},
            strategy={"failure_budget": "1"},
            verified=True,
        ),
        [Finish("succeeded", "every instance is on the new version")],
    ),
    # Issue #12 item 8: "succeeded" only once every updated instance is running and healthy
    # at the end (a host fault after its update may have stopped it).
    (
        "the last bake over: the updated instances are verified first",
        view(
            fleet("updated", "failed", "updated"),
            wave_done_at={0: 1.0},
            strategy={"failure_budget": "1"},
        ),
        [Verify((0, 2))],
    ),
    (
        "verification while the bake runs: not yet",
        view(fleet("updated"), wave_done_at={0: 99.0}, strategy={"bake_s": 10}),
        [Wait("baking wave 1", until=109.0)],
    ),
    (
        "a resumed rollout is verified (the pause may have been a host fault)",
        view(fleet("updated"), status="paused", control="resume", wave_done_at={0: 1.0}),
        [SetStatus("running", "resumed"), Verify((0,))],
    ),
    (
        "an instance that could not be restored: failed, not succeeded",
        view(
            fleet("updated", "error"),
            wave_done_at={0: 1.0},
            strategy={"failure_budget": "1"},
            verified=True,
        ),
        [Finish("failed", "1 instance(s) could not be restored")],
    ),
    (
        "nothing updated (all failed within the budget): nothing to verify",
        view(fleet("failed"), wave_done_at={0: 1.0}, strategy={"failure_budget": "1"}),
        [Finish("succeeded", "every instance is on the new version")],
    ),
]


@pytest.mark.parametrize(("name", "state", "expected"), CASES, ids=[c[0] for c in CASES])
def test_next_actions(name: str, state: RolloutView, expected: list[object]) -> None:
    assert next_actions(state) == expected


def test_maintenance_window() -> None:
    insts = (InstanceView(0, 0, "a", "pending", eligible=False), InstanceView(1, 0, "a", "pending"))
    assert next_actions(view(insts)) == [Update(1)]
    closed = (InstanceView(0, 0, "a", "pending", eligible=False),)
    assert next_actions(view(closed)) == [
        SetStatus("waiting_window", "outside the maintenance window"),
        Wait("waiting for a maintenance window"),
    ]
    assert next_actions(view(closed, status="waiting_window")) == [
        Wait("waiting for a maintenance window")
    ]
    opened = (InstanceView(0, 0, "a", "pending"),)
    assert next_actions(view(opened, status="waiting_window")) == [
        SetStatus("running", "maintenance window open"),
        Update(0),
    ]


def test_revert_respects_parallelism() -> None:
    state = view(
        fleet("updated", "updated", "updated"), status="rolling_back", strategy={"parallelism": 2}
    )
    assert next_actions(state) == [Revert(0), Revert(1)]
    assert isinstance(next_actions(view(fleet("reverting"), status="rolling_back"))[0], Wait)
    assert next_actions(view(fleet(), status="running")) == [MarkWaveDone(0)]
    assert next_actions(view(fleet(), wave_done_at={0: 0.0}, verified=True)) == [
        Finish("succeeded", "every instance is on the new version")
    ]


def test_rollback_that_could_not_restore_everything_fails() -> None:
    state = view(fleet("reverted", "error"), status="rolling_back", manual_rollback=True)
    assert next_actions(state) == [Finish("failed", "1 instance(s) could not be restored")]


def _stuck(*states: str, interrupted: tuple[int, ...] = ()) -> tuple[InstanceView, ...]:
    return tuple(
        InstanceView(id=n, wave=0, host="abc"[n % 3], state=st, interrupted=n in interrupted)
        for n, st in enumerate(states)
    )


def test_abort_reconciles_the_instances_a_host_fault_interrupted_first() -> None:
    state = view(
        _stuck("updated", "pending", "pending", interrupted=(1,)),
        status="paused",
        control="abort",
    )
    assert next_actions(state) == [Reconcile(1)]


def test_abort_reconciles_within_the_parallelism() -> None:
    state = view(
        _stuck("pending", "pending", "pending", interrupted=(0, 1, 2)),
        status="paused",
        control="abort",
        strategy={"parallelism": 2},
    )
    assert next_actions(state) == [Reconcile(0), Reconcile(1)]


def test_abort_waits_for_the_reconcile_then_ends() -> None:
    busy = view(_stuck("updated", "updating"), status="paused", control="abort")
    assert next_actions(busy) == [Wait("abort: letting the instances in progress finish")]
    done = view(_stuck("updated", "pending"), status="paused", control="abort")
    assert next_actions(done) == [
        Finish("aborted", "aborted by request; updated instances stay updated")
    ]


def test_an_interrupted_instance_is_only_reconciled_when_pending() -> None:
    # an updated one interrupted during its revert is reverted by the rollback instead
    state = view(_stuck("updated", interrupted=(0,)), status="paused", control="abort")
    assert next_actions(state) == [
        Finish("aborted", "aborted by request; updated instances stay updated")
    ]


@pytest.mark.parametrize("control", ["resume", "abort"])
def test_a_rollback_paused_on_a_host_fault_is_finished_on_resume_or_abort(control: str) -> None:
    state = view(
        _stuck("failed", "updated", "reverted"),
        status="paused",
        control=control,
        paused_rollback=True,
    )
    assert next_actions(state) == [SetStatus("rolling_back", f"{control}: finishing the rollback")]


def test_a_rollback_paused_on_a_host_fault_waits_without_a_request() -> None:
    state = view(_stuck("failed", "updated"), status="paused", paused_rollback=True)
    assert next_actions(state) == [Wait("paused while rolling back")]
    # budget exceeded, but no new rollback status is set while paused: it waits
    state = view(_stuck("failed", "failed", "updated"), status="paused", paused_rollback=True)
    assert next_actions(state) == [Wait("paused while rolling back")]


def test_rollback_requested_on_a_paused_rollback_goes_on() -> None:
    state = view(
        _stuck("failed", "updated"), status="paused", control="rollback", paused_rollback=True
    )
    assert next_actions(state) == [SetStatus("rolling_back", "rollback requested"), Revert(1)]
