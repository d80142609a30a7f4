"""Issue #8: a rollout never mistakes a broken environment for a bad update.

Real test daemons stopped and started again in the middle of a step (``docker_fleet``), and
a backup directory on a real 1 MB tmpfs; the rollout waits, pauses, resumes — it never
fails or rolls back because of them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.context import AppContext
from orchestrator.db.models import Rollout, RolloutInstance
from orchestrator.errors import ConflictError
from rollouts.spec import GateSpec, RolloutRequest, Strategy
from tests.integration.dockerd import DockerdFleet, remove_test_containers
from tests.integration.fleet import Placed, make_context, place_tenants, wait_for, wait_health
from tests.integration.test_rollout_engine import _leftovers, _managed_count, _versions

pytestmark = pytest.mark.docker

# A gate long enough (20 passes × 0.25 s) that the test sees it start and stops the daemon
# while it runs; the wait is on the journal, not on time.
LONG_GATE = GateSpec(passes=20, deadline_s=60, interval_s=0.25)
ONE_BY_ONE = Strategy(waves=["100%"], parallelism=1)


class Runner:
    """``executor.run`` in a thread (it blocks while the rollout is paused)."""

    def __init__(self, ctx: AppContext, rollout_id: int) -> None:
        self.result: list[str] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ctx, rollout_id), daemon=True)
        self._thread.start()

    def _run(self, ctx: AppContext, rollout_id: int) -> None:
        try:
            self.result.append(ctx.executor.run(rollout_id))
        except BaseException as exc:  # reported by join
            self.errors.append(exc)

    def join(self, timeout: float = 180) -> str:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the rollout did not end"
        assert not self.errors, self.errors
        return self.result[0]


def _rollout(ctx: AppContext, rollout_id: int) -> Rollout:
    with ctx.factory() as s:
        r = s.get_one(Rollout, rollout_id)
        for i in r.instances:  # loaded while the session is open
            list(i.steps)
        s.expunge_all()
        return r


def _steps(ctx: AppContext, instance_id: int) -> list[tuple[str, str]]:
    with ctx.factory() as s:
        return [(st.step, st.state) for st in s.get_one(RolloutInstance, instance_id).steps]


def _state(ctx: AppContext, instance_id: int) -> str:
    with ctx.factory() as s:
        return s.get_one(RolloutInstance, instance_id).state


def _step_started(ctx: AppContext, instance_id: int, step: str) -> Callable[[], bool]:
    return lambda: any(name == step for name, _ in _steps(ctx, instance_id))


def _status(ctx: AppContext, rollout_id: int, status: str) -> Callable[[], bool]:
    return lambda: _rollout(ctx, rollout_id).status == status


def _container_ids(docker_hosts: list[Any]) -> dict[str, str]:
    return {
        c.name: c.id
        for h in docker_hosts
        for c in h.client.containers.list(all=True, filters={"label": "smartcpd.tenant"})
    }


@pytest.fixture
def spread(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> Iterator[tuple[AppContext, list[Placed]]]:
    """Six v1 tenants, two per daemon d1..d3; CPDOPS_HOST_WAIT_S 300 (the default)."""
    ctx = make_context(tmp_path)
    try:
        placed = place_tenants(
            ctx, docker_hosts, [(f"f{n}", n % 3) for n in range(6)], standin_images["1"]
        )
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        yield ctx, placed
    finally:
        ctx.close()
        for h in docker_hosts:
            remove_test_containers(h.client)


def _second_on(ctx: AppContext, rollout_id: int, host: str) -> RolloutInstance:
    """An instance on ``host`` with at least one instance before it in the rollout."""
    ordered = sorted(_rollout(ctx, rollout_id).instances, key=lambda i: i.position)
    return next(i for i in ordered[1:] if i.host == host)


def test_dockerd_restarted_mid_gate_the_rollout_waits_and_goes_on(
    spread: tuple[AppContext, list[Placed]],
    docker_fleet: DockerdFleet,
    docker_hosts: list[Any],
    standin_images: dict[str, str],
) -> None:
    ctx, placed = spread
    rollout_id = ctx.executor.create(
        RolloutRequest(image=standin_images["2"], gate=LONG_GATE, strategy=ONE_BY_ONE)
    )
    target = _second_on(ctx, rollout_id, "d2")
    runner = Runner(ctx, rollout_id)
    wait_for(_step_started(ctx, target.id, "gate"), timeout=120, what="the d2 instance's gate")
    before_down = {i.id: i.state for i in _rollout(ctx, rollout_id).instances}
    done_before = [iid for iid, state in before_down.items() if state == "updated"]
    assert done_before, "instances were updated before the d2 one"
    ids_done = {
        name: cid
        for name, cid in _container_ids(docker_hosts).items()
        if name
        in {i.container_name for i in _rollout(ctx, rollout_id).instances if i.id in done_before}
    }
    with docker_fleet.daemon_down("d2"):
        wait_for(_step_started(ctx, target.id, "wait"), timeout=30, what="the wait step")
        time.sleep(5)  # the daemon stays down a while: the scenario, not an assertion
        assert _rollout(ctx, rollout_id).status == "running"
    assert runner.join() == "succeeded"

    r = _rollout(ctx, rollout_id)
    assert {i.state for i in r.instances} == {"updated"}
    assert r.error is None
    assert set(_versions(placed).values()) == {"2"}
    assert _managed_count(docker_hosts) == 6, "one container per tenant"
    assert _leftovers(docker_hosts) == []
    steps = _steps(ctx, target.id)
    assert ("gate", "interrupted") in steps
    assert ("wait", "ok") in steps
    assert not any(name == "rollback" for name, _ in steps), steps
    assert steps[-1] == ("gate", "ok") or steps[-1] == ("reconcile", "ok"), steps
    for i in r.instances:  # nobody rolled back; the ones done before were not touched again
        names = [name for name, _ in _steps(ctx, i.id)]
        assert "rollback" not in names
        if i.id in done_before:
            assert names == ["pull", "replace", "gate"]
    after = _container_ids(docker_hosts)
    assert {n: after[n] for n in ids_done} == ids_done


def test_host_down_past_the_wait_pauses_then_resume_finishes(
    tmp_path: Path,
    docker_fleet: DockerdFleet,
    docker_hosts: list[Any],
    standin_images: dict[str, str],
) -> None:
    ctx = make_context(tmp_path, host_wait_s=3)
    try:
        placed = place_tenants(
            ctx, docker_hosts, [(f"g{n}", n % 3) for n in range(4)], standin_images["1"]
        )
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        rollout_id = ctx.executor.create(
            RolloutRequest(image=standin_images["2"], gate=LONG_GATE, strategy=ONE_BY_ONE)
        )
        target = _second_on(ctx, rollout_id, "d2")
        ordered = sorted(_rollout(ctx, rollout_id).instances, key=lambda i: i.position)
        before = ordered[ordered.index(next(i for i in ordered if i.id == target.id)) - 1]
        assert before.host != "d2"
        runner = Runner(ctx, rollout_id)
        # d2 goes down while the instance before its one is in its gate: the d2 step finds the
        # host silent when it is due (or just as it starts) — whatever the machine's speed,
        # no step on d2 can finish before the daemon is gone.
        wait_for(_step_started(ctx, before.id, "gate"), timeout=120, what="the gate before d2")
        with docker_fleet.daemon_down("d2"):
            wait_for(
                lambda: (
                    _status(ctx, rollout_id, "paused")()
                    and _steps(ctx, target.id)[-1] == ("wait", "timeout")
                    and ctx.factory().get_one(RolloutInstance, target.id).state != "updating"
                ),
                timeout=60,
                what="the pause",
            )
            r = _rollout(ctx, rollout_id)
            assert r.error is not None
            assert r.error.startswith("host d2 unreachable since "), r.error
            assert r.error.endswith("; resume when it is back"), r.error
            assert r.progress["reason"] == r.error
            inst = next(i for i in r.instances if i.id == target.id)
            assert inst.state == "pending" and inst.error == r.error
            assert {i.state for i in r.instances if i.position > target.position} == {"pending"}
            assert _steps(ctx, target.id)[-1] == ("wait", "timeout")
            # shown by `cpdops rollout status` too
            shown = subprocess.run(
                [str(Path(sys.executable).parent / "cpdops"), "rollout", "status", str(rollout_id)],
                env={**os.environ, "CPDOPS_DATABASE_URL": ctx.settings.database_url},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert "host d2 unreachable since" in shown.stdout, shown.stdout + shown.stderr
        ctx.executor.control(rollout_id, "resume")
        assert runner.join() == "succeeded"
        r = _rollout(ctx, rollout_id)
        assert {i.state for i in r.instances} == {"updated"} and r.error is None
        assert set(_versions(placed).values()) == {"2"}
        assert _managed_count(docker_hosts) == 4
        assert _leftovers(docker_hosts) == []
        names = [name for name, _ in _steps(ctx, target.id)]
        assert "rollback" not in names, names
        assert names[-1] == "gate", names
    finally:
        ctx.close()
        for h in docker_hosts:
            remove_test_containers(h.client)


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB tmpfs."""
    where = tmp_path / "backups"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.postgres
def test_full_backup_disk_pauses_before_touching_then_resume_runs_it(
    tmp_path: Path,
    tiny_dir: Path,
    docker_hosts: list[Any],
    standin_images: dict[str, str],
    tenant_db: Any,
) -> None:
    handle = docker_hosts[0]
    ctx = make_context(tmp_path, backup_dir=str(tiny_dir))
    try:
        placed = place_tenants(
            ctx,
            [handle],
            [("acme", 0)],
            standin_images["1"],
            env={"acme": {"SMARTCPD_DB_DSN": tenant_db.container_dsn(handle)}},
            extra_yaml={"acme": f'db_dsn: "{tenant_db.host_dsn}"'},
        )
        wait_health(placed[0].tenant.health_url, version="1")
        old = handle.client.containers.get("smartcpd-acme")
        rollout_id = ctx.executor.create(
            RolloutRequest(
                image=standin_images["2"], gate=GateSpec(passes=2, deadline_s=20, interval_s=0.2)
            )
        )
        runner = Runner(ctx, rollout_id)
        wait_for(_status(ctx, rollout_id, "paused"), timeout=60, what="the pause")
        r = _rollout(ctx, rollout_id)
        assert r.error is not None
        assert r.error.startswith("tenant acme: not enough free space for the backup: need ~")
        assert f"MB in {tiny_dir / f'rollout-{rollout_id}'}" in r.error, r.error
        (inst,) = r.instances
        assert inst.state == "pending"
        assert _steps(ctx, inst.id) == [("space", "refused")], "nothing was touched"
        now = handle.client.containers.get("smartcpd-acme")
        assert (now.id, now.status) == (old.id, "running")
        assert wait_health(placed[0].tenant.health_url, version="1")["version"] == "1"

        subprocess.run(["mount", "-o", "remount,size=200m", str(tiny_dir)], check=True)
        ctx.executor.control(rollout_id, "resume")
        assert runner.join() == "succeeded"
        assert wait_health(placed[0].tenant.health_url, version="2")["version"] == "2"
        assert list((tiny_dir / f"rollout-{rollout_id}").glob("acme-*.dump")), "backup made"
        names = [name for name, _ in _steps(ctx, inst.id)]
        assert names == ["space", "space", "pull", "backup", "replace", "gate"]
        assert _leftovers(docker_hosts) == []
    finally:
        ctx.close()
        remove_test_containers(handle.client)


# A gate that cannot pass in less than 10 s (40 passes × 0.25 s): the daemon is stopped as
# soon as the test sees it start, long before it could pass on any machine.
LONGER_GATE = GateSpec(passes=40, deadline_s=90, interval_s=0.25)
FAIL_GATE = GateSpec(passes=2, deadline_s=4, interval_s=0.2)


def test_dockerd_down_when_its_instance_is_to_be_reverted_the_rollback_waits_and_finishes(
    tmp_path: Path,
    docker_fleet: DockerdFleet,
    docker_hosts: list[Any],
    standin_images: dict[str, str],
) -> None:
    """v0 (d1) and v1 (d2) pass, v2 (d3) fails its gate: the rollback reverts v0 and v1.
    d2 is stopped while v2's failing gate runs — before any revert can start — and started
    again once v1's revert waits for it: v1 ends ``reverted`` on v1, not ``error``."""
    ctx = make_context(tmp_path)
    try:
        names = [("v0", 0), ("v1", 1), ("v2", 2)]
        # the fail-health image fails only where SMARTCPD_FAIL is not overridden (v2)
        env = {"v0": {"SMARTCPD_FAIL": ""}, "v1": {"SMARTCPD_FAIL": ""}}
        placed = place_tenants(ctx, docker_hosts, names, standin_images["1"], env=env)
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        rollout_id = ctx.executor.create(
            RolloutRequest(
                image=standin_images["2-fail-health"], gate=FAIL_GATE, strategy=ONE_BY_ONE
            )
        )
        by_tenant = {i.tenant: i for i in _rollout(ctx, rollout_id).instances}
        assert [i.tenant for i in sorted(by_tenant.values(), key=lambda i: i.position)] == [
            "v0",
            "v1",
            "v2",
        ]
        target, failing = by_tenant["v1"], by_tenant["v2"]
        runner = Runner(ctx, rollout_id)
        wait_for(_step_started(ctx, failing.id, "gate"), timeout=120, what="v2's gate")
        with docker_fleet.daemon_down("d2"):
            wait_for(_step_started(ctx, target.id, "wait"), timeout=60, what="v1's revert waits")
            assert _state(ctx, target.id) == "reverting"
            assert _rollout(ctx, rollout_id).status == "rolling_back"
        assert runner.join() == "failed"  # a rollback after a real failure ends failed

        r = _rollout(ctx, rollout_id)
        states = {i.tenant: i.state for i in r.instances}
        assert states == {"v0": "reverted", "v1": "reverted", "v2": "failed"}, states
        assert set(_versions(placed).values()) == {"1"}
        assert _managed_count(docker_hosts) == 3
        assert _leftovers(docker_hosts) == []
        steps = _steps(ctx, target.id)
        assert ("wait", "ok") in steps, steps
        assert steps[-1] == ("rollback", "ok"), steps
    finally:
        ctx.close()
        for h in docker_hosts:
            remove_test_containers(h.client)


def test_abort_of_a_rollout_paused_on_a_host_fault_reconciles_it(
    tmp_path: Path,
    docker_fleet: DockerdFleet,
    docker_hosts: list[Any],
    standin_images: dict[str, str],
) -> None:
    """d2 stops in the middle of its instance's gate (which cannot pass in under 10 s), the
    wait times out and the rollout pauses. An abort while d2 is down is refused (409); once
    d2 is back the abort reconciles the interrupted instance: every instance ends on a
    known version — updated on v2, or pending on v1 — with no container left aside."""
    ctx = make_context(tmp_path, host_wait_s=3)
    try:
        placed = place_tenants(
            ctx, docker_hosts, [(f"h{n}", n % 3) for n in range(4)], standin_images["1"]
        )
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        rollout_id = ctx.executor.create(
            RolloutRequest(image=standin_images["2"], gate=LONGER_GATE, strategy=ONE_BY_ONE)
        )
        target = _second_on(ctx, rollout_id, "d2")
        runner = Runner(ctx, rollout_id)
        wait_for(_step_started(ctx, target.id, "gate"), timeout=180, what="the d2 gate")
        with docker_fleet.daemon_down("d2"):
            wait_for(
                lambda: (
                    _status(ctx, rollout_id, "paused")()
                    and _steps(ctx, target.id)[-1] == ("wait", "timeout")
                    and _state(ctx, target.id) == "pending"
                ),
                timeout=90,
                what="the pause",
            )
            assert ("gate", "interrupted") in _steps(ctx, target.id)
            with pytest.raises(ConflictError) as refused:
                ctx.executor.control(rollout_id, "abort")
            assert "host(s) d2 (" in str(refused.value), refused.value
            assert "abort again when the host is back" in str(refused.value)
            assert _rollout(ctx, rollout_id).control is None, "the refused abort is not recorded"
        ctx.executor.control(rollout_id, "abort")
        assert runner.join() == "aborted"

        r = _rollout(ctx, rollout_id)
        versions = _versions(placed)
        for i in r.instances:
            assert i.state in ("updated", "pending"), (i.tenant, i.state)
            assert versions[i.tenant] == ("2" if i.state == "updated" else "1"), i.tenant
        steps = _steps(ctx, target.id)
        assert steps[-1][0] == "reconcile" and steps[-1][1] == "ok", steps
        assert "rollback" not in [name for name, _ in steps], steps
        assert _managed_count(docker_hosts) == 4, "one container per tenant"
        assert _leftovers(docker_hosts) == []
        running = {  # every container of the tenants runs
            c.name: c.status
            for h in docker_hosts
            for c in h.client.containers.list(all=True, filters={"label": "smartcpd.tenant"})
        }
        assert set(running.values()) == {"running"}, running
    finally:
        ctx.close()
        for h in docker_hosts:
            remove_test_containers(h.client)


def test_host_down_past_the_wait_during_a_rollback_pauses_then_resume_finishes_it(
    tmp_path: Path,
    docker_fleet: DockerdFleet,
    docker_hosts: list[Any],
    standin_images: dict[str, str],
) -> None:
    """As above with CPDOPS_HOST_WAIT_S 3: d2 stays down past the wait, the rollback pauses
    with the host reason and v1 stays ``updated``; resume once d2 is back reverts it."""
    ctx = make_context(tmp_path, host_wait_s=3)
    try:
        names = [("w0", 0), ("w1", 1), ("w2", 2)]
        env = {"w0": {"SMARTCPD_FAIL": ""}, "w1": {"SMARTCPD_FAIL": ""}}
        placed = place_tenants(ctx, docker_hosts, names, standin_images["1"], env=env)
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        rollout_id = ctx.executor.create(
            RolloutRequest(
                image=standin_images["2-fail-health"], gate=FAIL_GATE, strategy=ONE_BY_ONE
            )
        )
        by_tenant = {i.tenant: i for i in _rollout(ctx, rollout_id).instances}
        target, failing = by_tenant["w1"], by_tenant["w2"]
        runner = Runner(ctx, rollout_id)
        wait_for(_step_started(ctx, failing.id, "gate"), timeout=120, what="w2's gate")
        with docker_fleet.daemon_down("d2"):
            wait_for(
                lambda: (
                    _status(ctx, rollout_id, "paused")()
                    and _steps(ctx, target.id)[-1] == ("wait", "timeout")
                    and _state(ctx, target.id) == "updated"
                ),
                timeout=90,
                what="the pause of the rollback",
            )
            r = _rollout(ctx, rollout_id)
            assert r.error is not None and r.error.startswith("host d2 unreachable since "), r.error
            assert r.progress.get("paused_rollback") == "1 failed instance(s), budget 0"
            states = {i.tenant: i.state for i in r.instances}
            assert states == {"w0": "reverted", "w1": "updated", "w2": "failed"}, states
        ctx.executor.control(rollout_id, "resume")
        assert runner.join() == "failed"
        r = _rollout(ctx, rollout_id)
        assert r.error == "1 failed instance(s), budget 0", "why it rolled back, not the pause"
        states = {i.tenant: i.state for i in r.instances}
        assert states == {"w0": "reverted", "w1": "reverted", "w2": "failed"}, states
        assert set(_versions(placed).values()) == {"1"}
        assert _managed_count(docker_hosts) == 3
        assert _leftovers(docker_hosts) == []
        assert _steps(ctx, target.id)[-1] == ("rollback", "ok")
    finally:
        ctx.close()
        for h in docker_hosts:
            remove_test_containers(h.client)


# --- issue #12 items 8 and 9: a rollout is "succeeded" only with every tenant running -------


def _tenant_containers(docker_hosts: list[Any]) -> dict[str, str]:
    """Every tenant container by name → its status (running, exited, …)."""
    return {
        c.name: c.status
        for h in docker_hosts
        for c in h.client.containers.list(all=True, filters={"label": "smartcpd.tenant"})
    }


def _reports_itself(placed: list[Placed]) -> dict[str, tuple[str, str]]:
    """Each tenant's port answers as (tenant, version)."""
    out = {}
    for p in placed:
        body = wait_health(p.tenant.health_url, timeout=60)
        out[p.tenant.slug] = (body.get("tenant"), body.get("version"))
    return out


@pytest.mark.parametrize("policy", ["no", "unless-stopped"])
def test_dockerd_stopped_after_updates_the_rollout_ends_with_every_tenant_running(
    policy: str,
    tmp_path: Path,
    docker_fleet: DockerdFleet,
    docker_hosts: list[Any],
    standin_images: dict[str, str],
) -> None:
    """Item 8: d2's dockerd is stopped (SIGTERM: its containers stop with it) once its first
    instance is updated, and started again when the rollout waits for d2's second one. The
    daemon's shutdown stopped the updated instance; whether its restart policy brings it
    back (``unless-stopped``) or not (``no``: the instance stays ``Exited (0)``, as the issue
    saw with docker.io 20.10), the rollout ends ``succeeded`` only with every tenant running
    and answering as itself on the new version — the stopped one started and gated again."""
    ctx = make_context(tmp_path)
    try:
        placed = place_tenants(
            ctx, docker_hosts, [(f"s{n}", n % 3) for n in range(6)], standin_images["1"]
        )
        for h in docker_hosts:
            for c in h.client.containers.list(filters={"label": "smartcpd.tenant"}):
                c.update(restart_policy={"Name": policy})  # copied to the new containers
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        rollout_id = ctx.executor.create(
            RolloutRequest(image=standin_images["2"], gate=LONG_GATE, strategy=ONE_BY_ONE)
        )
        ordered = sorted(_rollout(ctx, rollout_id).instances, key=lambda i: i.position)
        first_d2, second_d2 = [i for i in ordered if i.host == "d2"][:2]
        runner = Runner(ctx, rollout_id)
        wait_for(lambda: _state(ctx, first_d2.id) == "updated", timeout=180, what="d2's first")
        with docker_fleet.daemon_down("d2"):
            wait_for(_step_started(ctx, second_d2.id, "wait"), timeout=180, what="the wait for d2")
        assert runner.join() == "succeeded"

        r = _rollout(ctx, rollout_id)
        assert {i.state for i in r.instances} == {"updated"}, [
            (i.tenant, i.state) for i in r.instances
        ]
        statuses = _tenant_containers(docker_hosts)
        assert set(statuses.values()) == {"running"}, statuses
        assert _reports_itself(placed) == {p.tenant.slug: (p.tenant.slug, "2") for p in placed}
        assert _managed_count(docker_hosts) == 6 and _leftovers(docker_hosts) == []
        names = [name for name, _ in _steps(ctx, first_d2.id)]
        assert "rollback" not in names, names
        if policy == "no":  # it did not come back by itself: started and gated again
            assert _steps(ctx, first_d2.id)[-1] == ("verify", "ok"), _steps(ctx, first_d2.id)
    finally:
        ctx.close()
        for h in docker_hosts:
            remove_test_containers(h.client)


def test_dockerd_killed_right_after_the_rename_aside_is_a_host_fault(
    tmp_path: Path,
    docker_fleet: DockerdFleet,
    docker_hosts: list[Any],
    standin_images: dict[str, str],
) -> None:
    """Item 9: d2's dockerd is killed (SIGKILL, nothing cleaned up) right after the old
    container of d2's second instance (p3) was renamed aside, and started again 8 s later,
    with a port proxy left holding p3's published port — docker.io 20.10's killed daemon
    left its docker-proxy processes running (this machine's dockerd ends them, so the test
    leaves one as 20.10 did: a process holding the port and forwarding to the address p3's
    container had, which the restarted daemon may give another tenant). Starting p3's container then
    fails with "port is already allocated": a host fault — cpdops waits and retries (the
    operator ends the stale proxy meanwhile, as the pause reason would say), never a failed
    instance: no rollback, the rollout finishes ``succeeded`` with every tenant running under
    its name and answering as itself on the new version."""
    ctx = make_context(tmp_path, host_wait_s=240)
    stale: list[subprocess.Popen[bytes]] = []
    try:
        placed = place_tenants(
            ctx, docker_hosts, [("p0", 0), ("p1", 1), ("p2", 2), ("p3", 1)], standin_images["1"]
        )
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        p3 = next(p for p in placed if p.tenant.slug == "p3")
        old_ip = (
            docker_hosts[1]
            .client.containers.get("smartcpd-p3")
            .attrs["NetworkSettings"]["IPAddress"]
        )
        rollout_id = ctx.executor.create(
            RolloutRequest(
                image=standin_images["2"],
                gate=GateSpec(passes=2, deadline_s=60, interval_s=0.25),
                strategy=ONE_BY_ONE,
            )
        )
        target = next(i for i in _rollout(ctx, rollout_id).instances if i.tenant == "p3")
        killed = threading.Event()
        worker = ctx.executor._worker
        crashpoint = worker._crashpoint

        def kill_at_rename(point: str) -> None:
            # only p3 is updating (one by one) when its old container is renamed aside
            if point == "after_rename_old" and _state(ctx, target.id) == "updating":
                try:
                    if not killed.is_set():
                        docker_fleet.kill_daemon("d2")
                        stale.append(_stale_proxy(p3.tenant.port, old_ip))
                finally:
                    killed.set()
            crashpoint(point)

        worker._crashpoint = kill_at_rename
        runner = Runner(ctx, rollout_id)
        assert killed.wait(240), "p3's old container was not renamed aside"
        time.sleep(8)  # the daemon stays dead a while: the scenario, not an assertion
        docker_fleet.start_daemon("d2")

        def port_waits() -> list[str]:
            inst = next(i for i in _rollout(ctx, rollout_id).instances if i.id == target.id)
            return [
                st.state
                for st in inst.steps
                if st.step == "wait" and (st.detail or {}).get("cause") == "port"
            ]

        wait_for(port_waits, timeout=240, what="p3's wait for its taken port")
        r = _rollout(ctx, rollout_id)
        assert r.status == "running", (r.status, r.error)
        assert not [i.tenant for i in r.instances if i.state in ("failed", "error")]
        # the operator ends the stale proxy; the next try takes the port
        stale[0].terminate()
        stale[0].wait(30)
        assert runner.join(300) == "succeeded"

        r = _rollout(ctx, rollout_id)
        assert {i.state for i in r.instances} == {"updated"}, [
            (i.tenant, i.state, i.error) for i in r.instances
        ]
        for inst in r.instances:
            names = [name for name, _ in _steps(ctx, inst.id)]
            assert "rollback" not in names, (inst.tenant, names)
        assert port_waits()[-1] == "ok"
        statuses = _tenant_containers(docker_hosts)
        assert statuses == {f"smartcpd-{p.tenant.slug}": "running" for p in placed}, statuses
        assert _reports_itself(placed) == {p.tenant.slug: (p.tenant.slug, "2") for p in placed}
        assert _leftovers(docker_hosts) == []
    finally:
        ctx.close()
        for proc in stale:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        if docker_fleet._find("d2").process.poll() is not None:  # never left dead for others
            docker_fleet.start_daemon("d2")
        for h in docker_hosts:
            remove_test_containers(h.client)


# What a docker-proxy does: listen on the host port, forward each connection to the
# container's address (this dockerd's docker-proxy binary will not run without its daemon).
_FORWARDER = """
import asyncio, sys
port, ip = int(sys.argv[1]), sys.argv[2]
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    finally:
        w.close()
async def serve(r, w):
    try:
        ur, uw = await asyncio.open_connection(ip, 8080)
    except OSError:
        w.close()
        return
    await asyncio.gather(pipe(r, uw), pipe(ur, w), return_exceptions=True)
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def _stale_proxy(port: int, container_ip: str) -> subprocess.Popen[bytes]:
    """A port proxy as a killed docker.io 20.10 left it (its docker-proxy): 127.0.0.1:``port``
    held and forwarded to ``container_ip``:8080; returned once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _FORWARDER, str(port), container_ip],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def listening() -> bool:
        assert proc.poll() is None, "the stale proxy exited"
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, timeout=30, what="the stale proxy")
    return proc
