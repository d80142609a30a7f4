"""The rollout engine of SPEC §4 against real Docker daemons: waves, budget, controls, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.context import AppContext
from orchestrator.db.models import Rollout
from orchestrator.fleet.discovery import KEPT_MARKER
from rollouts.spec import GateSpec, RolloutRequest, Strategy
from tests.integration.dockerd import remove_test_containers
from tests.integration.fleet import Placed, make_context, place_tenants, wait_for, wait_health

pytestmark = pytest.mark.docker

CPDOPS = str(Path(sys.executable).parent / "cpdops")
GATE = GateSpec(passes=2, deadline_s=20, interval_s=0.2)
MARKERS = (
    KEPT_MARKER,
    "--cpdops-new-",
    "--cpdops-migrate-",
    "--cpdops-revert-",
    "--cpdops-failed-",
)


def _versions(placed: list[Placed]) -> dict[str, str]:
    return {p.tenant.slug: wait_health(p.tenant.health_url)["version"] for p in placed}


def _leftovers(docker_hosts: list[Any]) -> list[str]:
    return [
        c.name
        for h in docker_hosts
        for c in h.client.containers.list(all=True)
        if any(m in c.name for m in MARKERS)
    ]


def _managed_count(docker_hosts: list[Any]) -> int:
    return sum(
        len(h.client.containers.list(all=True, filters={"label": "smartcpd.tenant"}))
        for h in docker_hosts
    )


@pytest.fixture
def twelve(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> Iterator[tuple[AppContext, list[Placed], str]]:
    """12 tenants over 3 daemons; t06 and t07 (wave 2 of 1/25%/100%) lack the explicit
    empty SMARTCPD_FAIL the others carry, so a fail-health image fails only on them."""
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = make_context(tmp_path, db_url)
    names = [(f"t{n:02d}", n % 3) for n in range(12)]
    env = {slug: {"SMARTCPD_FAIL": ""} for slug, _ in names if slug not in ("t01", "t02")}
    try:
        placed = place_tenants(ctx, docker_hosts, names, standin_images["1"], env=env)
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        yield ctx, placed, db_url
    finally:
        ctx.close()
        for h in docker_hosts:
            remove_test_containers(h.client)


def test_waves_run_as_planned(
    twelve: tuple[AppContext, list[Placed], str],
    docker_hosts: list[Any],
    standin_images: dict[str, str],
) -> None:
    ctx, placed, _ = twelve
    request = RolloutRequest(
        image=standin_images["2"],
        gate=GATE,
        strategy=Strategy(waves=["1", "25%", "100%"], parallelism=3, per_host_parallelism=1),
    )
    plan, version = ctx.executor.plan(request)
    assert version == "2"
    planned = [(p.wave, p.tenant, p.host) for p in plan]
    assert [sum(1 for w, _, _ in planned if w == k) for k in range(3)] == [1, 2, 9]
    rollout_id = ctx.executor.create(request)
    assert ctx.executor.run(rollout_id) == "succeeded"
    assert set(_versions(placed).values()) == {"2"}
    assert _leftovers(docker_hosts) == []
    assert _managed_count(docker_hosts) == 12
    with ctx.factory() as s:
        r = s.get_one(Rollout, rollout_id)
        ran = [(i.wave, i.tenant, i.host) for i in r.instances]
        assert ran == planned, "the plan printed beforehand is what ran"
        assert {i.state for i in r.instances} == {"updated"}
        # waves ran in order: every replace of wave k started after all of wave k-1 ended
        spans: dict[int, list[tuple[float, float]]] = {}
        for i in r.instances:
            replace = next(st for st in i.steps if st.step == "replace")
            gate = next(st for st in i.steps if st.step == "gate")
            assert gate.finished_at is not None
            spans.setdefault(i.wave, []).append(
                (replace.started_at.timestamp(), gate.finished_at.timestamp())
            )
        for k in (1, 2):
            assert min(a for a, _ in spans[k]) >= max(b for _, b in spans[k - 1])
        # parallelism: at some point more than one instance of wave 3 was in flight
        wave3 = sorted(spans[2])
        assert any(wave3[n + 1][0] < wave3[n][1] for n in range(len(wave3) - 1))


def test_budget_exceeded_rolls_everything_back(
    twelve: tuple[AppContext, list[Placed], str],
    docker_hosts: list[Any],
    standin_images: dict[str, str],
) -> None:
    ctx, placed, _ = twelve
    request = RolloutRequest(
        image=standin_images["2-fail-health"],
        gate=GateSpec(passes=2, deadline_s=4, interval_s=0.2),
        strategy=Strategy(waves=["1", "25%", "100%"], parallelism=3, failure_budget="1"),
    )
    rollout_id = ctx.executor.create(request)
    assert ctx.executor.run(rollout_id) == "failed"
    assert set(_versions(placed).values()) == {"1"}, "every instance back on its version"
    assert _leftovers(docker_hosts) == []
    with ctx.factory() as s:
        r = s.get_one(Rollout, rollout_id)
        states = {i.tenant: i.state for i in r.instances}
        assert states["t00"] == "reverted"  # the canary went back
        assert states["t01"] == states["t02"] == "failed"
        assert {states[t] for t in states if t not in ("t00", "t01", "t02")} == {"pending"}
        assert "2 failed instance(s), budget 1" in (r.error or "")
        rollbacks = [st for i in r.instances for st in i.steps if st.step == "rollback"]
        assert len(rollbacks) == 3 and all(st.state == "ok" for st in rollbacks)


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CPDOPS, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_controls_from_the_cli(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = make_context(tmp_path, db_url)
    env = {**os.environ, "CPDOPS_DATABASE_URL": db_url, "CPDOPS_ROLLOUT_LEASE_S": "3"}
    engine = create_engine(db_url)
    ctx_db = sessionmaker(engine)
    try:
        placed = place_tenants(
            ctx, docker_hosts, [(f"c{n}", n % 3) for n in range(4)], standin_images["1"]
        )
        ctx.close()
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        image = standin_images["2"]
        # approve gate: the runner waits after wave 1 until another process approves
        runner = subprocess.Popen(
            [
                CPDOPS,
                "rollout",
                "start",
                "--image",
                image,
                "--waves",
                "1,100%",
                "--approve-after",
                "1",
                "--passes",
                "2",
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def status() -> dict[str, Any]:
                out = cli(env, "rollout", "status", "1", "--json")
                data: dict[str, Any] = json.loads(out.stdout) if out.returncode in (0, 1) else {}
                return data

            wait_for(
                lambda: status().get("status") == "awaiting_approval",
                timeout=60,
                what="awaiting approval",
            )
            overlap = cli(env, "rollout", "start", "--image", image, "--tenants", "c1")
            assert overlap.returncode == 2 and "held by active rollout 1" in overlap.stderr
            assert cli(env, "rollout", "approve", "1").returncode == 0
            out, err = runner.communicate(timeout=120)
        finally:
            if runner.poll() is None:
                runner.kill()
        assert runner.returncode == 0, err
        assert json.loads(out)["status"] == "succeeded"
        assert set(_versions(placed).values()) == {"2"}

        # rollback of the whole (finished) rollout: every instance back on version 1
        back = cli(env, "rollout", "rollback", "1", "--json")
        assert back.returncode == 0, back.stderr
        assert json.loads(back.stdout)["status"] == "rolled_back"
        assert set(_versions(placed).values()) == {"1"}

        # pause / resume: a runner paused by another process during the bake after wave 1,
        # then resumed. The pause is sent when wave 1 is done (seen in the database, not
        # guessed from time); the bake is long enough for the CLI to land it on a busy
        # machine, and the test then waits for the bake's end to pass while paused.
        bake_s = 15.0
        runner = subprocess.Popen(
            [
                CPDOPS,
                "rollout",
                "start",
                "--image",
                image,
                "--waves",
                "1,100%",
                "--bake",
                str(bake_s),
                "--passes",
                "2",
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            done_at = wait_for(lambda: _wave_done_at(ctx_db, 2, 0), timeout=90, what="wave 1")
            assert cli(env, "rollout", "pause", "2").returncode == 0
            wait_for(
                lambda: _rollout_row(ctx_db, 2).status == "paused",
                timeout=30,
                what="paused",
            )
            # paused: nothing of wave 2 starts, even once the bake is over
            wait_for(lambda: time.time() > done_at + bake_s + 1, timeout=60, what="bake end")
            assert _rollout_row(ctx_db, 2).status == "paused"
            data = json.loads(cli(env, "rollout", "status", "2", "--json").stdout)
            assert [i["state"] for i in data["instances"] if i["wave"] == 1] == ["pending"] * 3
            assert cli(env, "rollout", "resume", "2").returncode == 0
            out, err = runner.communicate(timeout=120)
        finally:
            if runner.poll() is None:
                runner.kill()
        assert runner.returncode == 0, err
        assert set(_versions(placed).values()) == {"2"}

        # abort: stops where it is, updated instances stay updated
        runner = subprocess.Popen(
            [
                CPDOPS,
                "rollout",
                "start",
                "--image",
                standin_images["1"],
                "--waves",
                "1,100%",
                "--bake",
                "30",
                "--passes",
                "2",
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(
                lambda: (
                    (cli(env, "rollout", "status", "3", "--json").stdout or "{}").find('"updated"')
                    > 0
                ),
                timeout=60,
                what="first wave of rollout 3",
            )
            assert cli(env, "rollout", "abort", "3").returncode == 0
            out, err = runner.communicate(timeout=120)
        finally:
            if runner.poll() is None:
                runner.kill()
        data = json.loads(out)
        assert data["status"] == "aborted"
        assert sorted(i["state"] for i in data["instances"]) == ["pending"] * 3 + ["updated"]
        versions = _versions(placed)
        assert sorted(versions.values()) == ["1", "2", "2", "2"]
        assert _leftovers(docker_hosts) == []
    finally:
        engine.dispose()
        for h in docker_hosts:
            remove_test_containers(h.client)


def _rollout_row(factory: sessionmaker[Session], rollout_id: int) -> Rollout:
    with factory() as s:
        row = s.get(Rollout, rollout_id)
        assert row is not None, f"no rollout {rollout_id}"
        s.expunge(row)
        return row


def _wave_done_at(factory: sessionmaker[Session], rollout_id: int, wave: int) -> float | None:
    """When the rollout recorded ``wave`` as done (its bake starts then), or None."""
    with factory() as s:
        row = s.get(Rollout, rollout_id)
        done = ((row.progress or {}).get("wave_done_at") or {}) if row is not None else {}
        value = done.get(str(wave))
        return float(value) if value is not None else None


@pytest.mark.parametrize("point", ["after_stop_old", "after_start_new", "mid_gate", "mid_bake"])
def test_sigkill_at_step_points_then_resume(
    point: str, tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = make_context(tmp_path, db_url)
    env = {**os.environ, "CPDOPS_DATABASE_URL": db_url, "CPDOPS_ROLLOUT_LEASE_S": "2"}
    try:
        placed = place_tenants(
            ctx, docker_hosts, [(f"k{n}", n % 3) for n in range(3)], standin_images["1"]
        )
        ctx.close()
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        crashed = cli(
            {**env, "CPDOPS_TEST_CRASH_AT": point},
            "rollout",
            "start",
            "--image",
            standin_images["2"],
            "--waves",
            "1,100%",
            "--bake",
            "1",
            "--passes",
            "2",
        )
        assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
        time.sleep(2.5)  # the dead runner's lease lapses
        resumed = cli(env, "rollout", "resume", "1", "--json")
        assert resumed.returncode == 0, resumed.stderr
        data = json.loads(resumed.stdout)
        assert data["status"] == "succeeded", data
        assert set(_versions(placed).values()) == {"2"}, "one known version, healthy"
        assert _leftovers(docker_hosts) == [], "no extra containers"
        assert _managed_count(docker_hosts) == 3
        steps = [st["step"] for i in data["instances"] for st in i["steps"]]
        if point != "mid_bake":
            assert "reconcile" in steps
        # the killed runner's step is closed on reconcile: nothing "runs" after the end
        states = [(st["step"], st["state"]) for i in data["instances"] for st in i["steps"]]
        assert not [s for s in states if s[1] == "started"], states
        if point != "mid_bake":
            killed = "gate" if point == "mid_gate" else "replace"
            assert (killed, "interrupted") in states, states
    finally:
        for h in docker_hosts:
            remove_test_containers(h.client)


def test_window_schedule_survives_a_restart(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from orchestrator.db.models import Tenant
    from orchestrator.db.session import session_scope
    from orchestrator.fleet.fleetfile import MaintenanceWindow
    from orchestrator.settings import Settings
    from tests.integration.server import api_client, running_server

    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = make_context(tmp_path, db_url)
    env = {**os.environ, "CPDOPS_DATABASE_URL": db_url}
    try:
        placed = place_tenants(
            ctx,
            docker_hosts,
            [("w0", 0), ("w1", 1)],
            standin_images["1"],
            extra_yaml={"w0": "timezone: UTC", "w1": "timezone: UTC"},
        )
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        # The window opens at the first minute boundary ≥ 20 s from now, however long the
        # placement took: the restart below must come before it.
        opens = (datetime.now(UTC) + timedelta(seconds=80)).replace(second=0, microsecond=0)
        window = MaintenanceWindow(cron=f"{opens.minute} {opens.hour} * * *", duration="10m")
        with session_scope(ctx.factory) as s:
            s.execute(update(Tenant).values(maintenance_window=window.model_dump()))
        ctx.close()
        created = cli(
            env,
            "rollout",
            "start",
            "--image",
            standin_images["2"],
            "--window",
            "--passes",
            "2",
            "--json",
        )
        assert created.returncode == 0, created.stderr
        data = json.loads(created.stdout)
        assert data["status"] == "scheduled"
        settings = Settings(database_url=db_url, run_monitors=False, rollout_lease_s=3)
        with running_server(settings):
            pass  # cpdops restarts before the window opens: the job is in the database
        assert set(_versions(placed).values()) == {"1"}
        with api_client(settings) as api:

            def done() -> dict[str, Any] | None:
                got: dict[str, Any] = api.get("/api/v1/rollouts/1").json()
                return got if got["status"] in ("succeeded", "failed") else None

            final = wait_for(done, timeout=150, what="the scheduled rollout to run")
        assert final["status"] == "succeeded", final
        started = datetime.fromisoformat(final["started_at"])
        assert started >= opens, "it started inside the window, not before"
        assert set(_versions(placed).values()) == {"2"}
    finally:
        for h in docker_hosts:
            remove_test_containers(h.client)


def test_start_first_when_no_fixed_port(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    """A container publishing a random port is replaced start-first: the new one answers
    before the old one stops; the health URL label follows it through {port:8080}."""
    from orchestrator.db.session import session_scope
    from orchestrator.fleet.apply import apply_fleet
    from orchestrator.fleet.fleetfile import parse_fleet_text
    from orchestrator.fleet.runtime import DockerHost
    from tests.integration.fleet import TEST_LABEL

    handle = docker_hosts[0]
    ctx = make_context(tmp_path)
    try:
        host = DockerHost(handle.name, handle.url)
        host.run(
            image=standin_images["1"],
            name="smartcpd-sf",
            labels={
                "smartcpd.tenant": "sf",
                "smartcpd.health-url": "http://127.0.0.1:{port:8080}/health",
                TEST_LABEL: "1",
            },
            ports={"8080/tcp": ("127.0.0.1", None)},
        )
        with session_scope(ctx.factory) as s:
            apply_fleet(
                s,
                parse_fleet_text(
                    f"version: 1\nhosts:\n  - name: {handle.name}\n    url: {handle.url}\n"
                ),
            )
        before = host.find("smartcpd-sf")
        assert before is not None and before.health_url is not None
        wait_health(before.health_url, version="1")
        rollout_id = ctx.executor.create(
            RolloutRequest(image=standin_images["2"], tenants=["sf"], gate=GATE)
        )
        assert ctx.executor.run(rollout_id) == "succeeded"
        after = host.find("smartcpd-sf")
        assert after is not None and after.id != before.id and after.health_url is not None
        assert wait_health(after.health_url, version="2")["version"] == "2"
        with ctx.factory() as s:
            steps = s.get_one(Rollout, rollout_id).instances[0].steps
            assert [st.step for st in steps] == ["pull", "replace", "gate", "promote"]
            assert steps[1].detail["order"] == "start-first"
        assert _leftovers(docker_hosts) == []
    finally:
        ctx.close()
        remove_test_containers(handle.client)


@pytest.mark.parametrize("image_key", ["2-fail-health", "2-fail-migration"])
def test_migration_then_failure_restores_the_database(
    image_key: str,
    tmp_path: Path,
    docker_hosts: list[Any],
    standin_images: dict[str, str],
    tenant_db: Any,
) -> None:
    from rollouts import dbsafety

    handle = docker_hosts[0]
    ctx = make_context(tmp_path, backup_dir=str(tmp_path / "backups"))
    try:
        placed = place_tenants(
            ctx,
            [handle],
            [("mdb", 0)],
            standin_images["1"],
            env={"mdb": {"SMARTCPD_DB_DSN": tenant_db.container_dsn(handle)}},
            extra_yaml={"mdb": f'db_dsn: "{tenant_db.host_dsn}"'},
        )
        assert wait_health(placed[0].tenant.health_url, version="1")["db"] == "ok"
        before = dbsafety.db_fingerprint(tenant_db.host_dsn)
        old_id = handle.client.containers.get("smartcpd-mdb").id
        request = RolloutRequest(
            image=standin_images[image_key],
            gate=GateSpec(passes=2, deadline_s=4, interval_s=0.2),
            migrate=["python3", "/app/server.py", "migrate"],
        )
        rollout_id = ctx.executor.create(request)
        assert ctx.executor.run(rollout_id) == "failed"
        assert dbsafety.db_fingerprint(tenant_db.host_dsn) == before, "DB content restored"
        columns = dbsafety.query(
            tenant_db.host_dsn,
            "SELECT count(*) FROM information_schema.columns WHERE column_name = 'duration_s'",
        )
        assert columns.strip("\x00\n ") == "0"
        assert wait_health(placed[0].tenant.health_url, version="1")["db"] == "ok"
        assert handle.client.containers.get("smartcpd-mdb").id == old_id
        with ctx.factory() as s:
            inst = s.get_one(Rollout, rollout_id).instances[0]
            steps = [(st.step, st.state) for st in inst.steps]
            assert ("backup", "ok") in steps
            expected_migrate = "failed" if image_key == "2-fail-migration" else "ok"
            assert ("migrate", expected_migrate) in steps
            assert steps[-1] == ("rollback", "ok")
            assert inst.state == "failed" and not inst.migrated
        assert _leftovers(docker_hosts) == []
    finally:
        ctx.close()
        remove_test_containers(handle.client)


def test_sigkill_after_backup_then_resume(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str], tenant_db: Any
) -> None:
    handle = docker_hosts[1]
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = make_context(tmp_path, db_url)
    env = {
        **os.environ,
        "CPDOPS_DATABASE_URL": db_url,
        "CPDOPS_ROLLOUT_LEASE_S": "2",
        "CPDOPS_BACKUP_DIR": str(tmp_path / "backups"),
    }
    try:
        placed = place_tenants(
            ctx,
            [handle],
            [("kdb", 0)],
            standin_images["1"],
            env={"kdb": {"SMARTCPD_DB_DSN": tenant_db.container_dsn(handle)}},
            extra_yaml={"kdb": f'db_dsn: "{tenant_db.host_dsn}"'},
        )
        ctx.close()
        wait_health(placed[0].tenant.health_url, version="1")
        crashed = cli(
            {**env, "CPDOPS_TEST_CRASH_AT": "after_backup"},
            "rollout",
            "start",
            "--image",
            standin_images["2"],
            "--passes",
            "2",
            "--migrate",
            "python3 /app/server.py migrate",
        )
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        time.sleep(2.5)
        resumed = cli(env, "rollout", "resume", "1", "--json")
        assert resumed.returncode == 0, resumed.stderr
        data = json.loads(resumed.stdout)
        assert data["status"] == "succeeded", data
        assert wait_health(placed[0].tenant.health_url, version="2")["db"] == "ok"
        assert list((tmp_path / "backups" / "rollout-1").iterdir()), "the backup is kept"
        assert _leftovers(docker_hosts) == []
    finally:
        remove_test_containers(handle.client)
