"""The first rollout, against real Docker daemons (two 'hosts')."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from orchestrator.context import AppContext
from orchestrator.db.models import Incident, Rollout
from orchestrator.errors import ConflictError, InputError
from orchestrator.fleet.discovery import KEPT_MARKER
from rollouts.spec import GateSpec, RolloutRequest
from tests.integration.dockerd import remove_test_containers
from tests.integration.fleet import Placed, make_context, place_tenants, wait_health

pytestmark = pytest.mark.docker

GATE = GateSpec(passes=2, deadline_s=20, interval_s=0.25)
KEEP_LABELS = ("smartcpd.rollout", "smartcpd.previous-image", "org.opencontainers.image.version")


@pytest.fixture
def three(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> Iterator[tuple[AppContext, list[Placed]]]:
    hosts = docker_hosts[:2]
    ctx = make_context(tmp_path)
    try:
        placed = place_tenants(
            ctx, hosts, [("acme", 0), ("globex", 1), ("initech", 0)], standin_images["1"]
        )
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        yield ctx, placed
    finally:
        ctx.close()
        for h in hosts:
            remove_test_containers(h.client)


def _config(docker_hosts: list[Any], p: Placed) -> dict[str, Any]:
    handle = next(h for h in docker_hosts if h.name == p.host)
    attrs = handle.client.api.inspect_container(p.tenant.container)
    cfg, hc = attrs["Config"], attrs["HostConfig"]
    return {
        "id": attrs["Id"],
        "image": cfg["Image"],
        "env": sorted(e for e in cfg["Env"] if not e.startswith("SMARTCPD_VERSION=")),
        "labels": {k: v for k, v in cfg["Labels"].items() if k not in KEEP_LABELS},
        "ports": hc["PortBindings"],
        "restart": hc["RestartPolicy"],
        "running": attrs["State"]["Running"],
    }


def _kept(docker_hosts: list[Any]) -> list[str]:
    return [
        c.name
        for h in docker_hosts
        for c in h.client.containers.list(all=True)
        if KEPT_MARKER in c.name
    ]


def test_rollout_to_v2_keeps_config(
    three: tuple[AppContext, list[Placed]], docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    ctx, placed = three
    assert {p.host for p in placed} == {docker_hosts[0].name, docker_hosts[1].name}
    before = {p.tenant.slug: _config(docker_hosts, p) for p in placed}
    request = RolloutRequest(
        image=standin_images["2"], tenants=[p.tenant.slug for p in placed], gate=GATE
    )
    rollout_id = ctx.executor.create(request)
    assert ctx.executor.run(rollout_id) == "succeeded"
    for p in placed:
        assert wait_health(p.tenant.health_url, version="2")["version"] == "2"
        after = _config(docker_hosts, p)
        was = before[p.tenant.slug]
        assert after["image"] == standin_images["2"]
        assert after["id"] != was["id"]
        for key in ("env", "labels", "ports", "restart"):
            assert after[key] == was[key], key
        assert after["running"]
    assert _kept(docker_hosts) == [], "kept previous containers must be removed at the end"
    with ctx.factory() as s:
        rollout = s.get_one(Rollout, rollout_id)
        assert rollout.status == "succeeded"
        assert [i.state for i in rollout.instances] == ["updated"] * 3
        steps = [st.step for st in rollout.instances[0].steps]
        assert steps == ["pull", "replace", "gate"]


def test_failing_image_restores_first_instance_and_opens_mass_incident(
    three: tuple[AppContext, list[Placed]], docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    ctx, placed = three
    before = {p.tenant.slug: _config(docker_hosts, p) for p in placed}
    request = RolloutRequest(
        image=standin_images["2-fail-health"],
        tenants=[p.tenant.slug for p in placed],
        gate=GateSpec(passes=2, deadline_s=5, interval_s=0.25),
    )
    rollout_id = ctx.executor.create(request)
    assert ctx.executor.run(rollout_id) == "failed"
    first, rest = placed[0], placed[1:]
    assert wait_health(first.tenant.health_url, version="1", timeout=10)["version"] == "1"
    restored = _config(docker_hosts, first)
    assert restored["id"] == before[first.tenant.slug]["id"], "rollback restarts the kept one"
    assert restored["image"] == standin_images["1"]
    for p in rest:
        assert _config(docker_hosts, p) == before[p.tenant.slug], "untouched"
    assert _kept(docker_hosts) == []
    with ctx.factory() as s:
        rollout = s.get_one(Rollout, rollout_id)
        assert rollout.status == "failed"
        assert [i.state for i in rollout.instances] == ["failed", "pending", "pending"]
        assert "HTTP 500" in (rollout.instances[0].error or "")
        steps = rollout.instances[0].steps
        assert [(st.step, st.state) for st in steps] == [
            ("pull", "ok"),
            ("replace", "ok"),
            ("gate", "failed"),
            ("rollback", "ok"),
        ]
        assert steps[-1].detail["seconds"] > 0
        incidents = list(s.scalars(select(Incident)))
        assert len(incidents) == 1
        assert incidents[0].type == "mass_incident"
        assert incidents[0].rollout_id == rollout_id
        assert f"Rollout {rollout_id}" in incidents[0].subject
        assert incidents[0].events, "the ticket carries evidence"


def test_bad_input_changes_nothing(
    three: tuple[AppContext, list[Placed]], docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    ctx, placed = three
    before = {p.tenant.slug: _config(docker_hosts, p) for p in placed}
    with pytest.raises(InputError, match="not present on host"):
        ctx.executor.create(RolloutRequest(image="smartcpd-fake:does-not-exist", gate=GATE))
    with pytest.raises(InputError, match="unknown tenant"):
        ctx.executor.create(
            RolloutRequest(image=standin_images["2"], tenants=["nobody"], gate=GATE)
        )
    with ctx.factory() as s:
        assert s.scalar(select(func.count()).select_from(Rollout)) == 0
    assert {p.tenant.slug: _config(docker_hosts, p) for p in placed} == before


def test_overlapping_rollout_is_refused(
    three: tuple[AppContext, list[Placed]], standin_images: dict[str, str]
) -> None:
    ctx, _placed = three
    first = ctx.executor.create(
        RolloutRequest(image=standin_images["2"], tenants=["acme", "globex"], gate=GATE)
    )
    with pytest.raises(ConflictError, match=f"active rollout {first}"):
        ctx.executor.create(RolloutRequest(image=standin_images["2"], tenants=["globex"]))
    # a disjoint selection is fine
    ctx.executor.create(RolloutRequest(image=standin_images["2"], tenants=["initech"]))
