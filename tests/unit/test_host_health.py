"""The host health decision: unreachable after N consecutive failures, ok after one success,
transitions only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.fleet.host_health import (
    OK,
    UNREACHABLE,
    Check,
    HostHealth,
    attributed_to_host,
    decide,
    transition,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(s: int) -> datetime:
    return T0 + timedelta(seconds=s)


def run(checks: list[bool], threshold: int = 2) -> list[HostHealth]:
    state = HostHealth()
    out = []
    for i, ok in enumerate(checks):
        state = decide(
            state, Check(ok, at(i), None if ok else f"fail {i}"), failure_threshold=threshold
        )
        out.append(state)
    return out


def test_unreachable_after_the_threshold_of_consecutive_failures() -> None:
    first, second, third = run([False, False, False])
    assert (first.status, first.failures, first.held) == (OK, 1, True)
    assert (second.status, second.failures) == (UNREACHABLE, 2)
    assert second.reason == "fail 1" and second.since == at(1)
    # still unreachable: the reason and since of the transition are kept
    assert (third.status, third.reason, third.since, third.failures) == (
        UNREACHABLE,
        "fail 1",
        at(1),
        3,
    )
    assert transition(first, second) == UNREACHABLE
    assert transition(second, third) is None


def test_one_success_makes_it_ok_again() -> None:
    *_, down, back = run([False, False, True])
    assert back == HostHealth(OK, 0, None, at(2))
    assert not back.held
    assert transition(down, back) == OK


def test_a_failure_below_the_threshold_is_no_transition() -> None:
    bounce, back = run([False, True])
    assert bounce.status == OK and bounce.held
    assert back == HostHealth(OK, 0, None, None)  # never changed status: since unchanged
    assert transition(HostHealth(), bounce) is None and transition(bounce, back) is None


def test_failures_must_be_consecutive() -> None:
    states = run([False, True, False, True, False])
    assert all(s.status == OK for s in states)


def test_threshold_one_and_bad_threshold() -> None:
    state = decide(HostHealth(), Check(False, at(0), "refused"), failure_threshold=1)
    assert state.status == UNREACHABLE and state.reason == "refused"
    missing = decide(HostHealth(), Check(False, at(0)), failure_threshold=1)
    assert missing.reason == "no answer"
    with pytest.raises(ValueError):
        decide(HostHealth(), Check(True, at(0)), failure_threshold=0)


def test_a_down_belongs_to_the_host_while_held_and_while_it_settles() -> None:
    bounce, down, back = run([False, False, True])
    never_judged = HostHealth()
    assert attributed_to_host(bounce, at(0), settle_s=60)  # suspect: held
    assert attributed_to_host(down, at(5), settle_s=60)  # unreachable
    assert attributed_to_host(back, at(2 + 59), settle_s=60)  # back 59 s ago: still settling
    assert not attributed_to_host(back, at(2 + 60), settle_s=60)  # settled: a tenant's own
    assert not attributed_to_host(back, at(2), settle_s=0)
    assert not attributed_to_host(never_judged, at(0), settle_s=60)  # ok, never down
    assert not attributed_to_host(None, at(0), settle_s=60)  # not a known Docker host
