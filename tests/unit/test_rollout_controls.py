"""Which operator controls a rollout accepts (``rollouts.executor.control_refusal``): what the
API refuses with 409 and what ``actions`` lists, so the UI offers exactly what is accepted."""

from __future__ import annotations

import pytest

from rollouts.executor import accepted_controls, control_refusal


@pytest.mark.parametrize(
    ("status", "control", "states", "accepted"),
    [
        ("scheduled", None, ["pending"], ["pause", "abort"]),
        ("running", None, ["updated", "pending"], ["pause", "abort", "rollback"]),
        ("running", None, ["updating", "pending"], ["pause", "abort", "rollback"]),
        # nothing updated yet: abort, not rollback
        ("running", None, ["pending", "pending"], ["pause", "abort"]),
        (
            "awaiting_approval",
            None,
            ["updated", "pending"],
            ["pause", "approve", "abort", "rollback"],
        ),
        ("paused", "abort", ["updated", "pending"], ["rollback"]),
        ("succeeded", None, ["updated", "updated"], ["rollback"]),
        # an aborted rollout that changed nothing has nothing to roll back
        ("aborted", None, ["pending", "pending"], []),
        ("aborted", None, ["updated", "pending"], ["rollback"]),
        # a failed rollout was rolled back already (failed instances by their own worker)
        ("failed", None, ["failed", "reverted", "pending"], []),
        ("rolled_back", None, ["reverted"], []),
    ],
)
def test_accepted_controls(
    status: str, control: str | None, states: list[str], accepted: list[str]
) -> None:
    assert accepted_controls(7, status, control, states) == accepted


def test_refusals_name_the_reason() -> None:
    assert control_refusal(7, "rollback", "aborted", None, ["pending"]) == (
        "nothing to roll back: no instance of rollout 7 was updated"
    )
    assert control_refusal(7, "resume", "running", None, []) == (
        "cannot resume rollout 7: it is running"
    )
    assert control_refusal(7, "pause", "running", "abort", ["updated"]) == (
        "rollout 7 is already being aborted"
    )
