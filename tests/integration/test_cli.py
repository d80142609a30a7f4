"""The `cpdops` command as a user runs it: exit codes 0/1/2, --json, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.dockerd import remove_test_containers
from tests.integration.fleet import free_port_base, make_context, place_tenants, wait_health

CPDOPS = str(Path(sys.executable).parent / "cpdops")

GOOD = """\
version: 1
hosts:
  - name: local
    url: unix:///var/run/docker.sock
tenants:
  - slug: acme
    name: ACME
    ring: canary
"""
BAD = GOOD + "    colour: blue\n"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CPDOPS, *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "CPDOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}


def test_apply_bad_file_exit_2_and_changes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    good, bad = tmp_path / "fleet.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(BAD.replace("name: ACME", "name: ACME Changed"))
    first = run(env, "apply", "-f", str(good), "--json")
    assert first.returncode == 0, first.stderr
    assert "tenant/acme" in json.loads(first.stdout)["created"]
    res = run(env, "apply", "-f", str(bad))
    assert res.returncode == 2
    assert f"{bad}:9" in res.stderr and "colour" in res.stderr, res.stderr
    again = run(env, "apply", "-f", str(good), "--json")
    assert json.loads(again.stdout)["updated"] == [], "the bad file must not have been applied"
    missing = run(env, "apply", "-f", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2


@pytest.mark.parametrize(
    "args",
    [
        ("rollout", "status", "999"),
        ("incidents", "show", "2026112501000016"),
        ("rollout", "start"),
        ("rollout", "start", "--image", "x:1", "--tenants", ","),
        ("rollout", "start", "--image", "Bad Image"),
        ("nosuchcommand",),
    ],
)
def test_bad_usage_exit_2(env: dict[str, str], args: tuple[str, ...]) -> None:
    res = run(env, *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.strip(), "a message says what is wrong"
    assert "Traceback" not in res.stderr


@pytest.mark.docker
def test_cli_fleet_and_rollout(
    env: dict[str, str], tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    hosts = docker_hosts[:2]
    ctx = make_context(tmp_path, env["CPDOPS_DATABASE_URL"])
    try:
        placed = place_tenants(ctx, hosts, [("acme", 0), ("globex", 1)], standin_images["1"])
        ctx.close()
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        ls = run(env, "fleet", "ls", "--json")
        assert ls.returncode == 0, ls.stderr
        listed = json.loads(ls.stdout)["instances"]
        assert sorted((i["tenant"], i["host"]) for i in listed) == [
            ("acme", hosts[0].name),
            ("globex", hosts[1].name),
        ]
        table = run(env, "fleet", "ls")
        assert "acme" in table.stdout and "VERSION" in table.stdout
        unknown = run(env, "rollout", "start", "--image", "smartcpd-fake:nope", "--json")
        assert unknown.returncode == 2 and "not present" in unknown.stderr
        nobody = run(env, "rollout", "start", "--image", standin_images["2"], "--tenants", "zz")
        assert nobody.returncode == 2 and "unknown tenant(s): zz" in nobody.stderr
        ok = run(env, "rollout", "start", "--image", standin_images["2"], "--passes", "2")
        assert ok.returncode == 0, ok.stderr
        assert "updated" in ok.stderr  # the progress display
        status = run(env, "rollout", "status", "1", "--json")
        data = json.loads(status.stdout)
        assert data["status"] == "succeeded"
        assert [i["state"] for i in data["instances"]] == ["updated", "updated"]
        failed = run(
            env,
            "rollout",
            "start",
            "--image",
            standin_images["2-fail-health"],
            "--tenants",
            "acme",
            "--deadline",
            "4",
        )
        assert failed.returncode == 1, failed.stderr
        incidents = json.loads(run(env, "incidents", "ls", "--json").stdout)
        assert [i["type"] for i in incidents] == ["mass_incident"]
        assert incidents[0]["rollout_id"] == 2
        wait_health(placed[0].tenant.health_url, version="2")
    finally:
        for h in hosts:
            remove_test_containers(h.client)


@pytest.mark.docker
def test_demo_up_and_down(
    env: dict[str, str], docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    handle = docker_hosts[-1]
    env = {
        **env,
        "CPDOPS_LOCAL_DOCKER_URL": handle.url,
        "CPDOPS_DEMO_BASE_PORT": str(free_port_base(2)),
    }
    try:
        up = run(env, "demo", "up", "--tenants", "2", "--json")
        assert up.returncode == 0, up.stderr
        shown = json.loads(up.stdout)
        tenants = shown["tenants"]
        assert [t["tenant"] for t in tenants] == ["acme", "globex"]
        # the scenario: a rollout to version 2 scheduled an hour ahead, and a ticket
        rollouts = json.loads(run(env, "rollout", "ls", "--json").stdout)
        (scheduled,) = [r for r in rollouts if r["id"] == shown["scheduled_rollout"]]
        assert scheduled["status"] == "scheduled" and scheduled["image"].endswith(":2")
        tickets = json.loads(run(env, "incidents", "ls", "--json").stdout)
        assert [t["number"] for t in tickets] == [shown["ticket"]]
        assert tickets[0]["type"] == "consultation" and tickets[0]["tenant"] == "acme"
        for t in tenants:
            assert wait_health(t["health_url"], version="1")["tenant"] == t["tenant"]
        listed = json.loads(run(env, "fleet", "ls", "--json").stdout)["instances"]
        assert sorted(i["tenant"] for i in listed) == ["acme", "globex"]
        again = run(env, "demo", "up", "--tenants", "2")
        assert again.returncode == 0 and "(0 started)" in again.stdout, "idempotent"
        assert len(json.loads(run(env, "rollout", "ls", "--json").stdout)) == len(rollouts)
        assert len(json.loads(run(env, "incidents", "ls", "--json").stdout)) == 1
        down = run(env, "demo", "down")
        assert down.returncode == 0 and "removed 2" in down.stdout
        assert json.loads(run(env, "fleet", "ls", "--json").stdout)["instances"] == []
    finally:
        run(env, "demo", "down")
