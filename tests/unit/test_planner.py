from typing import get_args

import pytest

from orchestrator.errors import InputError
from orchestrator.fleet.discovery import Instance
from orchestrator.fleet.fleetfile import RINGS as FLEET_RINGS
from rollouts.planner import select_instances, wave_sizes, waves_of
from rollouts.spec import Ring, RolloutRequest, Strategy


def inst(tenant: str, host: str = "h1") -> Instance:
    return Instance(
        tenant=tenant,
        component="app",
        host=host,
        container_id=f"id-{tenant}-{host}",
        name=f"smartcpd-{tenant}",
        image="smartcpd-fake:1",
        version="1",
        status="running",
        health=None,
        health_url=None,
        sip_uri=None,
        rollout=None,
    )


FLEET = [inst("a", "h1"), inst("b", "h2"), inst("c", "h1"), inst("d", "h2")]
RINGS = {"a": "general", "b": "canary", "c": "late", "d": "general"}


@pytest.mark.parametrize(
    ("request_kwargs", "expected"),
    [
        ({}, ["b", "a", "d", "c"]),  # canary first, late last
        ({"tenants": ["c", "a"]}, ["a", "c"]),  # ring order wins over the order named
        ({"tenants": ["d", "a"]}, ["d", "a"]),  # same ring: the order named
        ({"hosts": ["h2"]}, ["b", "d"]),
        ({"rings": ["general"]}, ["a", "d"]),
        ({"rings": ["general"], "hosts": ["h1"]}, ["a"]),
    ],
)
def test_selection_and_order(request_kwargs: dict[str, object], expected: list[str]) -> None:
    req = RolloutRequest(image="smartcpd-fake:2", **request_kwargs)  # type: ignore[arg-type]
    plan = select_instances(req, FLEET, RINGS)
    assert [p.tenant for p in plan] == expected
    assert [p.position for p in plan] == list(range(len(expected)))


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        ({"tenants": ["nope"]}, "unknown tenant(s): nope"),
        ({"hosts": ["h9"]}, "no instances on host(s): h9"),
        ({"rings": ["internal"]}, "matches no instance"),
    ],
)
def test_selection_errors(request_kwargs: dict[str, object], message: str) -> None:
    req = RolloutRequest(image="smartcpd-fake:2", **request_kwargs)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select_instances(req, FLEET, RINGS)


def test_registered_tenant_without_instance() -> None:
    req = RolloutRequest(image="x:1", tenants=["e"])
    with pytest.raises(InputError, match="no running instance: e"):
        select_instances(req, FLEET, {**RINGS, "e": "general"})


@pytest.mark.parametrize(
    "bad",
    [
        {"image": ""},
        {"image": "UPPER:1"},
        {"image": "x:1", "rings": ["gold"]},
        {"image": "x:1", "tenants": []},
        {"image": "x:1", "surprise": 1},
    ],
)
def test_request_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RolloutRequest(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("targets", "total", "sizes"),
    [
        (["100%"], 4, [4]),
        (["1", "25%", "100%"], 12, [1, 2, 9]),
        (["1", "25%", "100%"], 3, [1, 2]),  # 25% of 3 rounds up to 1: that wave is empty
        (["1", "50%"], 1, [1]),
        (["2", "1", "100%"], 5, [2, 3]),  # never back below an earlier target
        (["10", "20"], 4, [4]),  # counts beyond the selection
        (["30%"], 10, [10]),  # the last wave always takes the rest
        (["1", "100%"], 0, []),
    ],
)
def test_wave_sizes(targets: list[str], total: int, sizes: list[int]) -> None:
    assert wave_sizes(targets, total) == sizes
    assert sum(sizes) == total


def test_plan_assigns_waves_in_ring_order() -> None:
    fleet = [inst(f"t{i:02d}", f"h{i % 3}") for i in range(12)]
    rings = {f"t{i:02d}": ("canary" if i == 5 else "general") for i in range(12)}
    req = RolloutRequest(image="x:2", strategy={"waves": ["1", "25%", "100%"]})  # type: ignore[arg-type]
    plan = select_instances(req, fleet, rings)
    assert [w[0].tenant for w in waves_of(plan)] == ["t05", "t00", "t02"]
    assert [len(w) for w in waves_of(plan)] == [1, 2, 9]


@pytest.mark.parametrize(
    ("budget", "total", "allowed"), [("0", 10, 0), ("1", 10, 1), ("10%", 30, 3), ("10%", 9, 0)]
)
def test_failure_budget(budget: str, total: int, allowed: int) -> None:
    assert Strategy(failure_budget=budget).budget(total) == allowed


@pytest.mark.parametrize(
    "bad",
    [
        {"waves": []},
        {"waves": ["0"]},
        {"waves": ["150%"]},
        {"waves": ["abc"]},
        {"failure_budget": "-1"},
        {"parallelism": 0},
        {"parallelism": "3"},  # strict, as the schema says
    ],
)
def test_strategy_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Strategy(**bad)  # type: ignore[arg-type]


def test_approve_after_beyond_the_waves_is_refused_by_the_rule_not_the_schema() -> None:
    strategy = Strategy(approve_after=[3], waves=["1", "100%"])
    with pytest.raises(InputError, match=r"strategy\.approve_after: 3: there are 2 wave"):
        strategy.check_rules()


def test_the_rings_of_the_schema_are_the_fleet_files() -> None:
    assert get_args(Ring) == FLEET_RINGS


def test_label_selection() -> None:
    a = Instance(**{**inst("a").__dict__, "labels": {"dc": "msk"}})
    b = Instance(**{**inst("b").__dict__, "labels": {"dc": "spb"}})
    req = RolloutRequest(image="x:2", labels={"dc": "spb"})
    assert [p.tenant for p in select_instances(req, [a, b], {})] == ["b"]
