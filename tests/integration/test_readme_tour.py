"""The README's quick tour, run as written (bash, the real ``cpdops``) on a test Docker daemon,
after what ``./scripts/serve.sh`` leaves behind: the demo scenario's rollout (id 1), aborted as
the README says. Every command must end as the tour says (0, or the exit 1 it announces) — the
tour once approved rollout ``1``, which was the scenario's."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.fleet import free_port_base

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def tour_lines(readme: str) -> list[str]:
    """The command lines of the README's "Quick tour" block."""
    block = readme.split("## Quick tour", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV / "bin" / "cpdops"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.timeout(1800)
def test_the_readme_tour_runs_as_written(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    lines = tour_lines((ROOT / "README.md").read_text())
    assert any("rollout approve" in line for line in lines)
    (tmp_path / ".venv").symlink_to(VENV)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CPDOPS_")}
    env = {
        **clean,
        "HOME": str(tmp_path),
        "CPDOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'cpdops.db'}",
        "CPDOPS_LOCAL_DOCKER_URL": docker_hosts[-1].url,
        "CPDOPS_DEMO_BASE_PORT": str(free_port_base(3)),
    }
    try:
        # what serve.sh leaves: the demo with its scenario, whose rollout took id 1; aborted
        up = run(env, tmp_path, "demo", "up", "--tenants", "3", "--json")
        assert up.returncode == 0, up.stderr
        scheduled = json.loads(up.stdout)["scheduled_rollout"]
        assert scheduled == 1
        aborted = run(env, tmp_path, "rollout", "abort", str(scheduled))
        assert aborted.returncode == 0, aborted.stderr
        # each line, then its exit code on fd 3; bash and the tour's background job in a
        # process group of their own, killed if the tour hangs
        script = "exec 3>rcs.txt\n" + "".join(f'{line}\necho "$?" >&3\n' for line in lines)
        out, err = tmp_path / "tour.out", tmp_path / "tour.err"
        with out.open("w") as o, err.open("w") as e:
            proc = subprocess.Popen(
                ["bash", "-c", script],
                env=env,
                cwd=tmp_path,
                stdout=o,
                stderr=e,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=1200)
            except subprocess.TimeoutExpired:
                pass
            finally:  # also a background job the tour left (a rollout awaiting approval)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        rcs = [int(x) for x in (tmp_path / "rcs.txt").read_text().split()]
        expected = [1 if "# exit 1" in line else 0 for line in lines]
        report = "\n".join(
            f"{rc} (want {want})  {line}"
            for rc, want, line in zip(rcs, expected, lines, strict=False)
        )
        tails = f"stdout:\n{out.read_text()[-4000:]}\nstderr:\n{err.read_text()[-6000:]}"
        assert rcs == expected, f"{report}\n{tails}"
        statuses = json.loads(run(env, tmp_path, "rollout", "ls", "--json").stdout)
        assert [(r["id"], r["status"]) for r in statuses][-2:] == [
            (2, "succeeded"),
            (1, "aborted"),
        ]
    finally:
        run(env, tmp_path, "demo", "down")
