"""Table-driven tests of the pure monitor state machine (monitors/state.py)."""

from __future__ import annotations

import pytest

from monitors.state import (
    Hold,
    MonitorState,
    MonitorStatus,
    apply_hold,
    effective_hold,
    step,
)

DOWN, UP, PENDING, MAINT = (
    MonitorStatus.DOWN,
    MonitorStatus.UP,
    MonitorStatus.PENDING,
    MonitorStatus.MAINTENANCE,
)
M, S = Hold.MAINTENANCE, Hold.SUPPRESSED


def st(
    status: MonitorStatus, fails: int = 0, oks: int = 0, hold: Hold | None = None
) -> MonitorState:
    return MonitorState(status, consecutive_failures=fails, consecutive_successes=oks, hold=hold)


def test_prometheus_values_of_spec_3_5() -> None:
    assert [(s.name, int(s)) for s in MonitorStatus] == [
        ("DOWN", 0),
        ("UP", 1),
        ("PENDING", 2),
        ("MAINTENANCE", 3),
    ]


def test_new_monitor_is_pending_with_zero_counters() -> None:
    assert MonitorState() == st(PENDING)


# (before, ok, failure_threshold, recovery_threshold, hold in force, after)
SINGLE_STEPS: list[tuple[str, MonitorState, bool, int, int, Hold | None, MonitorState]] = [
    # thresholds 1/1
    ("new pass -> up", st(PENDING), True, 1, 1, None, st(UP, oks=1)),
    ("new fail -> down", st(PENDING), False, 1, 1, None, st(DOWN, fails=1)),
    ("up pass stays up", st(UP, oks=4), True, 1, 1, None, st(UP, oks=5)),
    ("up fail -> down at once", st(UP, oks=4), False, 1, 1, None, st(DOWN, fails=1)),
    ("down pass -> up", st(DOWN, fails=7), True, 1, 1, None, st(UP, oks=1)),
    ("down fail stays down", st(DOWN, fails=7), False, 1, 1, None, st(DOWN, fails=8)),
    # failure threshold 3, recovery 1
    ("new fail 1/3 stays pending", st(PENDING), False, 3, 1, None, st(PENDING, fails=1)),
    ("pending fail 3/3 -> down", st(PENDING, fails=2), False, 3, 1, None, st(DOWN, fails=3)),
    ("up fail 1/3 -> pending", st(UP, oks=9), False, 3, 1, None, st(PENDING, fails=1)),
    ("pending fail 2/3 stays", st(PENDING, fails=1), False, 3, 1, None, st(PENDING, fails=2)),
    ("pending pass -> up", st(PENDING, fails=2), True, 3, 1, None, st(UP, oks=1)),
    ("down fail stays down", st(DOWN, fails=3), False, 3, 1, None, st(DOWN, fails=4)),
    ("down pass -> up", st(DOWN, fails=3), True, 3, 1, None, st(UP, oks=1)),
    # recovery threshold 3
    ("new pass 1/3 stays pending", st(PENDING), True, 3, 3, None, st(PENDING, oks=1)),
    ("pending pass 3/3 -> up", st(PENDING, oks=2), True, 3, 3, None, st(UP, oks=3)),
    ("down pass 1/3 stays down", st(DOWN, fails=5), True, 3, 3, None, st(DOWN, oks=1)),
    ("down pass 2/3 stays down", st(DOWN, oks=1), True, 3, 3, None, st(DOWN, oks=2)),
    ("down pass 3/3 -> up", st(DOWN, oks=2), True, 3, 3, None, st(UP, oks=3)),
    ("down fail resets passes", st(DOWN, oks=2), False, 3, 3, None, st(DOWN, fails=1)),
    ("pending fail resets passes", st(PENDING, oks=2), False, 3, 3, None, st(PENDING, fails=1)),
    # holds: MAINTENANCE whatever the probe says, counters cleared, reason kept
    ("maintenance over up", st(UP, oks=3), True, 3, 1, M, st(MAINT, hold=M)),
    ("maintenance over down", st(DOWN, fails=3), False, 3, 1, M, st(MAINT, hold=M)),
    ("maintenance over pending", st(PENDING, fails=2), False, 3, 1, M, st(MAINT, hold=M)),
    ("maintenance fail stays", st(MAINT, hold=M), False, 1, 1, M, st(MAINT, hold=M)),
    ("suppressed over up", st(UP, oks=3), False, 1, 1, S, st(MAINT, hold=S)),
    ("suppressed over down", st(DOWN, fails=3), True, 1, 1, S, st(MAINT, hold=S)),
    ("suppressed fail stays", st(MAINT, hold=S), False, 1, 1, S, st(MAINT, hold=S)),
    ("hold switches reason", st(MAINT, hold=M), True, 1, 1, S, st(MAINT, hold=S)),
    # hold lifted: verified again from zero
    ("after maintenance pass 1/1 -> up", st(MAINT, hold=M), True, 3, 1, None, st(UP, oks=1)),
    ("after maintenance pass 1/3", st(MAINT, hold=M), True, 3, 3, None, st(PENDING, oks=1)),
    ("after suppression fail 1/3", st(MAINT, hold=S), False, 3, 1, None, st(PENDING, fails=1)),
    ("after suppression fail 1/1", st(MAINT, hold=S), False, 1, 1, None, st(DOWN, fails=1)),
]


@pytest.mark.parametrize(
    ("before", "ok", "fail_t", "rec_t", "hold", "after"),
    [pytest.param(*row[1:], id=row[0]) for row in SINGLE_STEPS],
)
def test_step(
    before: MonitorState,
    ok: bool,
    fail_t: int,
    rec_t: int,
    hold: Hold | None,
    after: MonitorState,
) -> None:
    assert step(before, ok, failure_threshold=fail_t, recovery_threshold=rec_t, hold=hold) == after


# (results, failure_threshold, recovery_threshold, statuses after each result)
SEQUENCES: list[tuple[str, str, int, int, list[MonitorStatus]]] = [
    ("healthy from start", "+++", 3, 1, [UP, UP, UP]),
    ("flap below threshold", "++-+-", 3, 1, [UP, UP, PENDING, UP, PENDING]),
    ("outage", "+---", 3, 1, [UP, PENDING, PENDING, DOWN]),
    ("outage and recovery", "+----+", 3, 1, [UP, PENDING, PENDING, DOWN, DOWN, UP]),
    ("slow recovery", "---++-+++", 3, 3, [PENDING] * 2 + [DOWN] * 6 + [UP]),
    ("dead from start, threshold 1", "-+", 1, 1, [DOWN, UP]),
    ("interrupted failures", "+--+--", 3, 1, [UP, PENDING, PENDING, UP, PENDING, PENDING]),
]


@pytest.mark.parametrize(
    ("results", "fail_t", "rec_t", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in SEQUENCES],
)
def test_sequences(results: str, fail_t: int, rec_t: int, expected: list[MonitorStatus]) -> None:
    state = MonitorState()
    seen = []
    for mark in results:
        state = step(state, mark == "+", failure_threshold=fail_t, recovery_threshold=rec_t)
        seen.append(state.status)
    assert seen == expected


# apply_hold: (before, hold, after)
HOLD_CHANGES: list[tuple[str, MonitorState, Hold | None, MonitorState]] = [
    ("suppress up", st(UP, oks=5), S, st(MAINT, hold=S)),
    ("suppress down", st(DOWN, fails=5), S, st(MAINT, hold=S)),
    ("maintenance on pending", st(PENDING, fails=1), M, st(MAINT, hold=M)),
    ("lift suppression -> pending", st(MAINT, hold=S), None, st(PENDING)),
    ("lift maintenance -> pending", st(MAINT, hold=M), None, st(PENDING)),
    ("no hold, nothing to lift", st(UP, oks=2), None, st(UP, oks=2)),
    ("no hold on down, unchanged", st(DOWN, fails=4), None, st(DOWN, fails=4)),
]


@pytest.mark.parametrize(
    ("before", "hold", "after"), [pytest.param(*row[1:], id=row[0]) for row in HOLD_CHANGES]
)
def test_apply_hold(before: MonitorState, hold: Hold | None, after: MonitorState) -> None:
    assert apply_hold(before, hold) == after


@pytest.mark.parametrize(
    ("holds", "expected"),
    [
        (set(), None),
        ({M}, M),
        ({S}, S),
        ({M, S}, S),
    ],
)
def test_effective_hold_prefers_the_rollout(holds: set[Hold], expected: Hold | None) -> None:
    assert effective_hold(holds) is expected


def test_suppressed_and_maintenance_differ_only_in_reason() -> None:
    up = st(UP, oks=3)
    by_rollout = apply_hold(up, S)
    by_window = apply_hold(up, M)
    assert by_rollout.status == by_window.status == MAINT
    assert by_rollout.hold != by_window.hold


@pytest.mark.parametrize(("fail_t", "rec_t"), [(0, 1), (1, 0), (-1, 3)])
def test_thresholds_below_one_are_refused(fail_t: int, rec_t: int) -> None:
    with pytest.raises(ValueError, match="thresholds"):
        step(MonitorState(), True, failure_threshold=fail_t, recovery_threshold=rec_t)
