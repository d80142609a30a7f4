"""rollouts.faults: a host fault is told from a step failure; wait or pause."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator.errors import ContainerError, DockerError, HostUnreachable, ImageNotFound
from rollouts import faults

SINCE = datetime(2024, 5, 1, 23, 41, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("error", "answers", "kind"),
    [
        (
            HostUnreachable("host d2: no socket"),
            True,
            "host",
        ),  # the call itself did not get through
        (HostUnreachable("host d2: no socket"), False, "host"),
        (ContainerError("host d2: stop x: 500 shutting down"), False, "host"),
        (ContainerError("host d2: create: conflict"), True, "step"),
        (ImageNotFound("image x is not present on host d2"), True, "step"),
        (DockerError("host d2: start x: boom"), True, "step"),
        (None, True, "step"),  # a failed gate while the daemon answers: the version's fault
        (None, False, "host"),  # a failed gate while the daemon is gone: not the version's
        # issue #12: a crashed daemon's leftover docker-proxy holds the instance's port
        (
            ContainerError(
                "host d1: start smartcpd-acme: 500 Server Error: driver failed programming "
                "external connectivity on endpoint smartcpd-acme: Bind for 127.0.0.1:18001 "
                "failed: port is already allocated"
            ),
            True,
            "port",
        ),
        (
            ContainerError(
                "host d1: start x: listen tcp4 127.0.0.1:18001: bind: address already in use"
            ),
            True,
            "port",
        ),
        (ContainerError("host d1: start x: port is already allocated"), False, "host"),
    ],
)
def test_classify(error: BaseException | None, answers: bool, kind: str) -> None:
    assert faults.classify(error, host_answers=answers) == kind


def test_wait_backs_off_to_a_ping_a_second_then_pauses() -> None:
    def decide(waited: float, attempt: int) -> faults.Retry | faults.Pause:
        return faults.wait_decision(
            waited_s=waited, limit_s=300, attempt=attempt, host="d2", since=SINCE, error="gone"
        )

    assert [decide(0, a) for a in range(4)] == [
        faults.Retry(0.25),
        faults.Retry(0.5),
        faults.Retry(1.0),
        faults.Retry(1.0),
    ]
    assert decide(299.5, 40) == faults.Retry(0.5)  # never sleeps past the limit
    paused = decide(300, 300)
    assert isinstance(paused, faults.Pause)
    assert paused.reason.startswith("host d2 unreachable since ")
    assert paused.reason.endswith(" (gone); resume when it is back")


def test_zero_wait_pauses_at_once() -> None:
    decision = faults.wait_decision(
        waited_s=0, limit_s=0, attempt=0, host="d1", since=SINCE, error="x"
    )
    assert isinstance(decision, faults.Pause)


def test_pause_reason_shows_local_time_of_day() -> None:
    reason = faults.host_pause_reason("d2", SINCE, "no socket at /run/d2.sock")
    assert f"since {SINCE.astimezone():%H:%M:%S} (no socket at /run/d2.sock)" in reason


def test_space_reason_names_the_tenant() -> None:
    message = "not enough free space for the backup: need ~64.1 MB, have 1.0 MB in /b/rollout-1"
    assert faults.space_pause_reason("acme", message) == f"tenant acme: {message}"


@pytest.mark.parametrize(
    ("code", "maybe"), [(0, True), (143, True), (137, True), (None, True), (1, False), (2, False)]
)
def test_an_exit_like_a_stop_may_be_the_daemon_stopping(code: int | None, maybe: bool) -> None:
    assert faults.may_be_daemon_stop(code) is maybe


def test_interrupted_is_a_timed_out_wait() -> None:
    assert faults.interrupted(("wait", "timeout"))
    assert not faults.interrupted(("wait", "ok"))
    assert not faults.interrupted(("gate", "timeout"))
    assert not faults.interrupted(None)


def test_abort_refusal_names_the_silent_hosts_and_their_tenants() -> None:
    assert faults.abort_refusal(7, {}) is None
    text = faults.abort_refusal(7, {"d2": ["beta", "acme"], "d1": ["zed"]})
    assert text == (
        "cannot abort rollout 7 yet: host(s) d1 (zed); d2 (acme, beta) do not answer, and the "
        "instances a host fault interrupted there must be reconciled first; abort again when "
        "the host is back"
    )


def test_a_taken_port_is_retried_with_a_back_off_then_pauses_naming_the_cause() -> None:
    def decide(waited: float, attempt: int) -> faults.Retry | faults.Pause:
        return faults.port_wait_decision(
            waited_s=waited, limit_s=30, attempt=attempt, host="d1", error="port is taken"
        )

    assert [decide(0, a) for a in range(4)] == [
        faults.Retry(0.25),
        faults.Retry(0.5),
        faults.Retry(1.0),
        faults.Retry(1.0),
    ]
    assert decide(29.8, 9) == faults.Retry(pytest.approx(0.2))
    paused = decide(30, 30)
    assert isinstance(paused, faults.Pause)
    assert paused.reason.startswith("host d1: a published port is still taken (port is taken)")
    assert "docker-proxy" in paused.reason and paused.reason.endswith("and resume")


def test_dangling_steps_are_the_started_ones_this_process_did_not_begin() -> None:
    steps = [(1, "ok"), (2, "interrupted"), (3, "started"), (4, "started"), (5, "failed")]
    assert faults.dangling(steps, own={4}) == [3]
    assert faults.dangling(steps, own=set()) == [3, 4]
    assert faults.dangling([], own=set()) == []
