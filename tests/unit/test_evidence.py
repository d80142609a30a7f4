"""The pure part of container evidence: the log excerpt's bounds, the state kept of inspect."""

from __future__ import annotations

from orchestrator.incidents.evidence import container_state, log_excerpt


def test_log_excerpt_keeps_the_last_lines() -> None:
    text = "\n".join(f"line {i}" for i in range(200)) + "\n"
    excerpt = log_excerpt(text)
    assert excerpt.splitlines() == [f"line {i}" for i in range(150, 200)]


def test_log_excerpt_stays_within_the_byte_budget_with_whole_lines() -> None:
    text = "\n".join("x" * 99 for _ in range(50))  # 50 lines of 100 bytes with the newline
    excerpt = log_excerpt(text, max_bytes=1000)
    assert excerpt.splitlines() == ["x" * 99] * 10
    assert len(excerpt.encode()) <= 1000


def test_log_excerpt_of_one_huge_line_keeps_its_end() -> None:
    line = "a" * 10_000 + "THE END"
    excerpt = log_excerpt(line, max_bytes=100)
    assert excerpt.endswith("THE END") and len(excerpt.encode()) < 100


def test_log_excerpt_of_nothing() -> None:
    assert log_excerpt("") == ""


def test_container_state_from_inspect() -> None:
    attrs = {
        "Id": "0123456789abcdef0123",
        "Name": "/smartcpd-acme",
        "RestartCount": 2,
        "Config": {"Image": "smartcpd:2"},
        "State": {
            "Status": "running",
            "ExitCode": 0,
            "Error": "",
            "OOMKilled": False,
            "StartedAt": "2026-12-01T12:00:00Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
            "Health": {"Status": "unhealthy", "Log": [{"Output": "ok\n"}, {"Output": "500\n"}]},
        },
    }
    assert container_state(attrs) == {
        "name": "smartcpd-acme",
        "id": "0123456789ab",
        "image": "smartcpd:2",
        "status": "running",
        "exit_code": 0,
        "error": None,
        "oom_killed": False,
        "restart_count": 2,
        "started_at": "2026-12-01T12:00:00Z",
        "finished_at": "0001-01-01T00:00:00Z",
        "health": "unhealthy",
        "health_output": "500",
    }
    assert container_state({"Id": "x"})["status"] is None
