"""Walks the hand-written probe registry: every kind builds a Probe that can be closed."""

from __future__ import annotations

import asyncio
import inspect
import re

import pytest

from monitors.probe import MonitorSpec, Probe, ProbeResult
from monitors.probes import PROBES


def test_registry_lists_the_kinds_shipped() -> None:
    assert "http" in PROBES
    for kind in PROBES:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", kind), kind


@pytest.mark.parametrize("kind", sorted(PROBES))
def test_each_kind_builds_a_probe_without_arguments(kind: str) -> None:
    async def build_and_close() -> Probe:
        probe = PROBES[kind]()
        await probe.aclose()
        return probe

    probe = asyncio.run(build_and_close())
    assert inspect.iscoroutinefunction(probe.check)
    assert inspect.iscoroutinefunction(probe.aclose)


@pytest.mark.parametrize("kind", sorted(PROBES))
def test_each_kind_lives_in_its_own_module(kind: str) -> None:
    factory = PROBES[kind]
    assert factory.__module__ == f"monitors.probes.{kind}"


def test_http_probe_reports_an_unusable_target_as_a_failed_result() -> None:
    spec = MonitorSpec(
        id="m", name="m", tenant="t", host="h", kind="http", target="ftp://127.0.0.1/"
    )

    async def check() -> ProbeResult:
        probe = PROBES["http"]()
        try:
            return await probe.check(spec)
        finally:
            await probe.aclose()

    result = asyncio.run(check())
    assert not result.ok
    assert result.status_code is None
    assert result.reason.startswith("invalid URL")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("interval_s", 0, "interval_s"),
        ("timeout_s", -1.0, "timeout_s"),
        ("failure_threshold", 0, "failure_threshold"),
        ("recovery_threshold", 0, "recovery_threshold"),
        ("expect_status", (), "expect_status"),
        ("expect_status", (200, 999), "outside"),
        ("id", "", "id"),
    ],
)
def test_monitor_spec_is_validated(field: str, value: object, message: str) -> None:
    fields: dict[str, object] = {
        "id": "m1",
        "name": "m1",
        "tenant": "t",
        "host": "h",
        "kind": "http",
        "target": "http://127.0.0.1/",
        field: value,
    }
    with pytest.raises(ValueError, match=message):
        MonitorSpec(**fields)  # type: ignore[arg-type]


def test_monitor_spec_is_immutable_and_comparable() -> None:
    labels = {"component": "web"}
    a = MonitorSpec(
        id="m", name="m", tenant="t", host="h", kind="http", target="http://x/", labels=labels
    )
    labels["component"] = "changed"
    b = MonitorSpec(
        id="m",
        name="m",
        tenant="t",
        host="h",
        kind="http",
        target="http://x/",
        labels={"component": "web"},
    )
    assert a == b
    assert hash(a) == hash(b)
    with pytest.raises(TypeError):
        a.labels["component"] = "x"  # type: ignore[index]
