"""``cpdops incidents …`` as a user runs it (subprocess): the workflow, --json, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.incidents.numbers import is_valid_number

CPDOPS = str(Path(sys.executable).parent / "cpdops")


@pytest.fixture
def env(db_url: str) -> dict[str, str]:
    return {**os.environ, "CPDOPS_DATABASE_URL": db_url, "CPDOPS_AUTHOR": "ivanov"}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CPDOPS, "incidents", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(env: dict[str, str], *args: str) -> Any:
    res = run(env, *args, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_ticket_workflow_from_the_command_line(env: dict[str, str], tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    shot.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    t = ok(
        env,
        "create",
        "--type",
        "incident",
        "--subject",
        "Calls drop",
        "--description",
        "since 10:00",
        "--priority",
        "high",
        "--screenshot",
        str(shot),
    )
    number = t["number"]
    assert is_valid_number(number) and t["status"] == "new" and t["source"] == "cli"
    assert t["attachments"][0]["filename"] == "shot.png"
    assert t["attachments"][0]["content_type"] == "image/png"
    assert ok(env, "ask", number, "-m", "which extension?")["status"] == "awaiting_info"
    assert ok(env, "comment", number, "-m", "204", "--customer")["status"] == "open"
    assert ok(env, "comment", number, "-m", "looking")["status"] == "open"
    # resolve needs -m (usage error), an empty one is refused (bad input): both exit 2
    assert run(env, "resolve", number).returncode == 2
    res = run(env, "resolve", number, "-m", " ")
    assert res.returncode == 2 and "requires a comment" in res.stderr
    solved = ok(env, "resolve", number, "-m", "re-registered 204")
    assert solved["status"] == "solution_provided"
    assert solved["status_label"] == "Решение предоставлено"
    res = run(env, "status", number, "awaiting_info")
    assert res.returncode == 2
    assert "from solution_provided to awaiting_info" in res.stderr and "open, closed" in res.stderr
    assert run(env, "status", number, "bogus").returncode == 2
    assert ok(env, "priority", number, "critical")["priority"] == "critical"
    assert ok(env, "close", number)["status"] == "closed"
    shown = ok(env, "show", number)
    assert [(e["kind"], e["author"]) for e in shown["events"]] == [
        ("created", "ivanov"),
        ("attachment", "ivanov"),
        ("status", "ivanov"),
        ("comment", "ivanov"),
        ("status", "ivanov"),
        ("comment", "ivanov"),
        ("solution", "ivanov"),
        ("priority", "ivanov"),
        ("status", "ivanov"),
    ]
    human = run(env, "show", number)
    assert human.returncode == 0 and "Закрыта" in human.stdout and "timeline:" in human.stdout
    listed = ok(env, "ls", "--status", "closed", "--priority", "critical")
    assert [i["number"] for i in listed] == [number]
    assert ok(env, "ls", "--status", "open") == []
    table = run(env, "ls")
    assert table.returncode == 0 and number in table.stdout
    for args in (
        ("show", "2026120101000010"),
        ("create", "--type", "incident", "--subject", "x", "--tenant", "nope"),
        ("create", "--type", "bug", "--subject", "x"),
        ("create", "--type", "incident", "--subject", "x", "--screenshot", "/nonexistent"),
        ("comment", number, "-m", ""),
    ):
        res = run(env, *args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
