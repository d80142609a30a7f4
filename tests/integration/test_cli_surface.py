"""What an operator reads in a terminal (real ``cpdops`` subprocesses): ticket evidence as facts
and log lines in ``incidents show``, empty listings that say so, and filters naming a tenant or
host that does not exist refused with exit 2 — on the database and through a running server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.context import build_context
from orchestrator.db.session import session_scope
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.settings import Settings
from tests.integration.server import make_token, running_server
from tests.integration.test_webui_operator import DESCRIPTION, LOGS, open_down_ticket

CPDOPS = str(Path(sys.executable).parent / "cpdops")
FLEET = "version: 1\nhosts: []\ntenants:\n  - {slug: acme, name: Acme Corp, ring: canary}\n"


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    settings = Settings(database_url=db_url)
    ctx = build_context(settings)
    try:
        with session_scope(ctx.factory) as s:
            apply_fleet(s, parse_fleet_text(FLEET))
    finally:
        ctx.close()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CPDOPS_")}
    return {
        **clean,
        "CPDOPS_DATABASE_URL": db_url,
        # no engine answers: the fleet listing has only the host's error
        "CPDOPS_LOCAL_DOCKER_URL": f"unix://{tmp_path}/no-docker.sock",
        "HOME": str(tmp_path),
    }


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CPDOPS, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_incidents_show_prints_evidence_as_facts_and_log_lines(
    env: dict[str, str], db_url: str
) -> None:
    number = open_down_ticket(Settings(database_url=db_url))
    res = run(env, "incidents", "show", number)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "containers 1: acme-smartcpd" in out
    assert "status: exited" in out and "exit_code: 1" in out
    assert "started_at: 2026-12-07 10:00:00" in out
    assert "finished_at: -" in out and "0001-01-01" not in out, "a zero time is no time"
    # the log is log text: its own lines, no escaped \n
    lines = out.splitlines()
    for line in LOGS.splitlines():
        assert any(ln.endswith(f"| {line}") for ln in lines), line
    assert "\\n" not in out
    # the description is printed once, not again as the "created" entry of the timeline
    assert out.count(DESCRIPTION) == 1


def test_a_ticket_gets_an_owner_from_the_cli(env: dict[str, str], db_url: str) -> None:
    number = open_down_ticket(Settings(database_url=db_url))
    env = {**env, "CPDOPS_AUTHOR": "ivanov"}
    res = run(env, "incidents", "owner", number, "petrov")
    assert res.returncode == 0, res.stderr
    assert "owner petrov" in res.stdout.splitlines()[0]
    assert "owner - → petrov" in res.stdout
    res = run(env, "incidents", "owner", number, "--json")  # to nobody
    assert res.returncode == 0, res.stderr
    assert '"owner": null' in res.stdout
    res = run(env, "incidents", "owner", number, "x" * 101)
    assert res.returncode == 2 and "owner:" in res.stderr


def test_empty_listings_say_so(env: dict[str, str]) -> None:
    for args, line in [
        (("incidents", "ls"), "no incidents"),
        (("rollout", "ls"), "no rollouts"),
        (("monitors", "ls"), "no monitors"),
        (("token", "ls"), "no tokens"),
    ]:
        res = run(env, *args)
        assert res.returncode == 0, (args, res.stderr)
        assert res.stdout.strip() == line, (args, res.stdout)


def test_a_filter_naming_an_unknown_tenant_or_host_is_exit_2(
    env: dict[str, str], db_url: str
) -> None:
    cases = [
        (("fleet", "ls", "--tenant", "acmee"), "no such tenant: acmee"),
        (("fleet", "ls", "--host", "nosuch"), "no such host: nosuch"),
        (("incidents", "ls", "--tenant", "acmee"), "no such tenant: acmee"),
        (("monitors", "ls", "--tenant", "acmee"), "no such tenant: acmee"),
    ]
    for args, reason in cases:
        res = run(env, *args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert reason in res.stderr, (args, res.stderr)
    # a known tenant with nothing to show is no error
    res = run(env, "incidents", "ls", "--tenant", "acme")
    assert res.returncode == 0 and res.stdout.strip() == "no incidents", res.stderr
    # the same through a running server
    settings = Settings(
        database_url=db_url,
        local_docker_url=env["CPDOPS_LOCAL_DOCKER_URL"],
        run_scheduler=False,
    )
    token = make_token(settings, "viewer")
    with running_server(settings) as base:
        remote = {**env, "CPDOPS_URL": base, "CPDOPS_TOKEN": token}
        for args, reason in cases:
            res = run(remote, *args)
            assert res.returncode == 2, (args, res.stdout, res.stderr)
            assert reason in res.stderr, (args, res.stderr)
        res = run(remote, "incidents", "ls")
        assert res.returncode == 0 and res.stdout.strip() == "no incidents", res.stderr
