"""What an operator sees of a rollout at a real ``cpdops serve`` on the test Docker daemons:
the gate's progress while it runs (API and ``cpdops rollout start``), Ctrl-C on ``start``
(a real SIGINT to the subprocess), approve answered at once, a finished rollout's reason, and
the images the hosts have."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.settings import Settings
from tests.integration.dockerd import remove_test_containers
from tests.integration.fleet import make_context, place_tenants, wait_for, wait_health
from tests.integration.server import bearer, make_token, running_server

pytestmark = pytest.mark.docker

CPDOPS = str(Path(sys.executable).parent / "cpdops")
FINAL = ("succeeded", "failed", "aborted", "rolled_back")


def _serve(tmp_path: Path, hosts: list[Any], image: str) -> tuple[str, Settings, list[Any]]:
    db_url = f"sqlite:///{tmp_path / 'server.db'}"
    ctx = make_context(tmp_path, db_url)
    try:
        placed = place_tenants(ctx, hosts, [("acme", 0), ("globex", 1)], image)
    finally:
        ctx.close()
    for p in placed:
        wait_health(p.tenant.health_url, version="1")
    return db_url, Settings(database_url=db_url, run_monitors=False, stop_timeout_s=5), placed


def _gate_step(rollout: dict[str, Any], tenant: str) -> dict[str, Any] | None:
    inst = next(i for i in rollout["instances"] if i["tenant"] == tenant)
    steps = [s for s in inst["steps"] if s["step"] == "gate" and s["state"] == "started"]
    return steps[-1] if steps else None


def test_gate_progress_is_shown_and_ctrl_c_on_start_leaves_the_rollout_running(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    hosts = docker_hosts[:2]
    try:
        _, settings, _placed = _serve(tmp_path, hosts, standin_images["1"])
        with running_server(settings) as base:
            token = make_token(settings, "operator", name="ops")
            env = {k: v for k, v in os.environ.items() if not k.startswith("CPDOPS_")}
            env.update(
                CPDOPS_URL=base,
                CPDOPS_TOKEN=token,
                CPDOPS_DATABASE_URL=f"sqlite:///{tmp_path / 'cli-own.db'}",
                CPDOPS_CONFIG=str(tmp_path / "no-config.toml"),
            )
            proc = subprocess.Popen(
                [CPDOPS, "rollout", "start", "--image", standin_images["2-fail-health"],
                 "--tenants", "acme", "--passes", "2", "--deadline", "25"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            lines: list[str] = []
            reader = threading.Thread(
                target=lambda: lines.extend(iter(proc.stderr.readline, "")),  # type: ignore[union-attr]
                daemon=True,
            )
            reader.start()
            try:
                wait_for(
                    lambda: any("gate 0/2 passes, last HTTP 500" in line for line in lines),
                    timeout=120,
                    what="the gate's progress in the start display",
                )
                rid = int(next(line for line in lines if "created" in line).split()[1])
                with httpx.Client(base_url=base, timeout=30, headers=bearer(token)) as api:
                    rollout = api.get(f"/api/v1/rollouts/{rid}").json()
                    gate = _gate_step(rollout, "acme")
                    assert gate is not None, rollout
                    progress = gate["detail"]["progress"]
                    assert progress["needed"] == 2 and progress["passes"] == 0
                    assert progress["last"] == "HTTP 500" and progress["status_code"] == 500
                    assert 0 <= progress["left_s"] <= 25 and progress["attempts"] >= 1

                    proc.send_signal(signal.SIGINT)
                    assert proc.wait(timeout=60) == 130
                    reader.join(timeout=10)
                    said = "".join(lines)
                    assert f"rollout {rid} is still running at the server" in said, said
                    assert f"cpdops rollout status {rid} --watch" in said
                    assert f"cpdops rollout abort {rid}" in said and "Aborted!" not in said
                    assert api.get(f"/api/v1/rollouts/{rid}").json()["status"] == "running"
                    # the gate goes on to its deadline, fails, and the rollout rolls back
                    final = wait_for(
                        lambda: (
                            r
                            if (r := api.get(f"/api/v1/rollouts/{rid}").json())["status"] in FINAL
                            else None
                        ),
                        timeout=180,
                        what="the rollout over",
                    )
                    assert final["status"] == "failed"
                    acme = next(i for i in final["instances"] if i["tenant"] == "acme")
                    closed = next(s for s in acme["steps"] if s["step"] == "gate")
                    assert closed["state"] == "failed" and "progress" not in closed["detail"]
                    assert "rollback" not in final["actions"], "nothing updated is left"
            finally:
                proc.kill()
                proc.wait(timeout=30)
                reader.join(timeout=10)
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
    finally:
        for h in hosts:
            remove_test_containers(h.client)


def test_approve_is_answered_at_once_and_a_finished_rollout_says_why_it_ended(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    hosts = docker_hosts[:2]
    try:
        _, settings, placed = _serve(tmp_path, hosts, standin_images["1"])
        with (
            running_server(settings) as base,
            httpx.Client(
                base_url=base, timeout=30, headers=bearer(make_token(settings, "operator"))
            ) as api,
        ):
            resp = api.post(
                "/api/v1/rollouts",
                json={
                    "image": standin_images["2"],
                    "strategy": {"waves": ["1", "100%"], "approve_after": [1]},
                    "gate": {"passes": 1, "deadline_s": 60},
                },
            )
            assert resp.status_code == 202, resp.text
            rid = resp.json()["id"]
            waiting = wait_for(
                lambda: (
                    r
                    if (r := api.get(f"/api/v1/rollouts/{rid}").json())["status"]
                    == "awaiting_approval"
                    else None
                ),
                timeout=120,
                what="wave 1 done, waiting for approval",
            )
            assert waiting["progress"]["reason"] == "approve to start wave 2"
            assert "approve" in waiting["actions"]
            approved = api.post(f"/api/v1/rollouts/{rid}/approve")
            assert approved.status_code == 202, approved.text
            assert approved.json()["status"] == "running", "the answer shows the approval"
            assert api.get("/api/v1/rollouts").json()[0]["status"] == "running"
            done = wait_for(
                lambda: (
                    r
                    if (r := api.get(f"/api/v1/rollouts/{rid}").json())["status"] in FINAL
                    else None
                ),
                timeout=180,
                what="the rollout over",
            )
            assert done["status"] == "succeeded"
            assert done["progress"]["reason"] == "every instance is on the new version"
            assert done["actions"] == ["rollback"]
            for p in placed:
                wait_health(p.tenant.health_url, version="2")

            images = api.get("/api/v1/images").json()
            assert images["errors"] == {}
            known = {i["ref"]: i for i in images["images"]}
            v2 = known[standin_images["2"]]
            assert v2["version"] == "2" and sorted(v2["hosts"]) == sorted(h.name for h in hosts)
    finally:
        for h in hosts:
            remove_test_containers(h.client)
