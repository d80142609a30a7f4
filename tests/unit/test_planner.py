import pytest

from orchestrator.errors import InputError
from orchestrator.fleet.discovery import Instance
from rollouts.planner import select_instances
from rollouts.spec import RolloutRequest


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
