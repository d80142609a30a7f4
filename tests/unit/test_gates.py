import pytest

from rollouts.gates import judge_health


@pytest.mark.parametrize(
    ("status", "body", "expect", "ok", "reason"),
    [
        (200, '{"version": "2"}', "2", True, "healthy"),
        (200, '{"version": "1"}', "2", False, "reports version '1', expected '2'"),
        (200, "not json", "2", False, "reports version None, expected '2'"),
        (200, "not json", None, True, "healthy"),
        (500, '{"version": "2"}', "2", False, "HTTP 500"),
        (200, '{"version": 3}', "3", True, "healthy"),
    ],
)
def test_judge_health(status: int, body: str, expect: str | None, ok: bool, reason: str) -> None:
    got_ok, got_reason, _version = judge_health(status, body, expect)
    assert (got_ok, got_reason) == (ok, reason)
