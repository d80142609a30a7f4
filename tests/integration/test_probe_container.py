"""The container probe: its pure judgement (tables), then against the test dockerd daemons.

The Docker tests run stand-in containers labelled ``cpdops.test=1`` (removed after each test,
also on failure) and drive them into each state: running, killed, paused, OOM-killed, unhealthy,
restarting. Every wait is a poll with a deadline; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from monitors.probe import MonitorSpec, ProbeResult
from monitors.probes.container import (
    ContainerOptions,
    ContainerProbe,
    Seen,
    cpu_ratio,
    judge,
    memory_usage,
)
from tests.integration.dockerd import DockerdHandle, run_test_container

DEADLINE_S = 60.0
CHECKS_AT_1S = 20


# ------------------------------------------------------------------ pure parts (no Docker)


def attrs(
    status: str = "running",
    *,
    exit_code: int = 0,
    oom: bool = False,
    health: dict[str, Any] | None = None,
    restarts: int = 0,
    container_id: str = "c1",
) -> dict[str, Any]:
    state: dict[str, Any] = {"Status": status, "ExitCode": exit_code, "OOMKilled": oom}
    if health is not None:
        state["Health"] = health
    return {"Id": container_id, "Name": "/acme-app", "State": state, "RestartCount": restarts}


UNHEALTHY = {
    "Status": "unhealthy",
    "Log": [{"ExitCode": 1, "Output": "ok"}, {"ExitCode": 1, "Output": "db down:\n  timeout "}],
}

# (case, inspect result, previous check, max_restarts, problems, ok reason)
JUDGE_CASES: list[tuple[str, dict[str, Any] | None, Seen | None, int, list[str], str]] = [
    ("running", attrs(), None, 0, [], "running"),
    ("not found", None, None, 0, ["not found"], ""),
    ("killed", attrs("exited", exit_code=137), None, 0, ["exited (code 137)"], "running"),
    (
        "oom killed",
        attrs("exited", exit_code=137, oom=True),
        None,
        0,
        ["exited (code 137, OOM killed)"],
        "running",
    ),
    ("paused", attrs("paused"), None, 0, ["paused"], "running"),
    (
        "restarting",
        attrs("restarting", exit_code=3),
        None,
        0,
        ["restarting (last exit code 3)"],
        "running",
    ),
    ("created", attrs("created"), None, 0, ["created, never started"], "running"),
    ("dead", attrs("dead", exit_code=1), None, 0, ["dead (code 1)"], "running"),
    (
        "running, a child OOM killed",
        attrs(oom=True),
        None,
        0,
        ["OOM killed (a process of the running container)"],
        "running",
    ),
    ("healthy", attrs(health={"Status": "healthy"}), None, 0, [], "running (healthy)"),
    (
        "health starting",
        attrs(health={"Status": "starting"}),
        None,
        0,
        [],
        "running (health: starting)",
    ),
    (
        "unhealthy: last output",
        attrs(health=UNHEALTHY),
        None,
        0,
        ["unhealthy: db down: timeout"],
        "running (unhealthy)",
    ),
    (
        "unhealthy without output",
        attrs(health={"Status": "unhealthy", "Log": [{"ExitCode": 1, "Output": ""}]}),
        None,
        0,
        ["unhealthy: exit code 1"],
        "running (unhealthy)",
    ),
    (
        "restarts since last check",
        attrs(restarts=5),
        Seen("c1", 3),
        0,
        ["restarted 2 times"],
        "running",
    ),
    ("one restart", attrs(restarts=4), Seen("c1", 3), 0, ["restarted 1 time"], "running"),
    ("restarts within max_restarts", attrs(restarts=5), Seen("c1", 3), 2, [], "running"),
    ("re-created container: no increase", attrs(restarts=0), Seen("old", 7), 0, [], "running"),
    (
        "exited and restarted",
        attrs("restarting", exit_code=1, restarts=2),
        Seen("c1", 0),
        0,
        ["restarting (last exit code 1)", "restarted 2 times"],
        "running",
    ),
]


@pytest.mark.parametrize(
    ("inspected", "previous", "max_restarts", "problems", "ok_reason"),
    [case[1:] for case in JUDGE_CASES],
    ids=[case[0] for case in JUDGE_CASES],
)
def test_judge(
    inspected: dict[str, Any] | None,
    previous: Seen | None,
    max_restarts: int,
    problems: list[str],
    ok_reason: str,
) -> None:
    assert judge(inspected, previous, max_restarts) == (problems, ok_reason)


def test_memory_and_cpu_from_stats() -> None:
    stats = {
        "memory_stats": {"usage": 10_000, "limit": 50_000, "stats": {"inactive_file": 4_000}},
        "cpu_stats": {
            "cpu_usage": {"total_usage": 3_000},
            "system_cpu_usage": 20_000,
            "online_cpus": 4,
        },
        "precpu_stats": {"cpu_usage": {}},  # one-shot stats: no previous sample
    }
    assert memory_usage(stats) == 6_000
    assert cpu_ratio(stats, None, "c1") is None
    assert cpu_ratio(stats, Seen("c1", 0, 1_000, 10_000), "c1") == pytest.approx(0.8)
    assert cpu_ratio(stats, Seen("other", 0, 1_000, 10_000), "c1") is None


def spec(
    target: str, name: str = "m", host: str = "d1", timeout_s: float = 1.0, **options: Any
) -> MonitorSpec:
    """A container monitor with the 1 s timeout of a 1 s interval (docs/monitors.md)."""
    return MonitorSpec(
        id=name,
        name=name,
        tenant="acme",
        host=host,
        kind="container",
        target=target,
        interval_s=1.0,
        timeout_s=timeout_s,
        options=options,
    )


@pytest.mark.parametrize(
    ("target", "options", "message"),
    [
        ("unix:///var/run/docker.sock", {}, "target must be"),
        ("#app", {}, "target must be"),
        ("unix:///x.sock#app", {"max_restarts": -1}, "max_restarts"),
        ("unix:///x.sock#app", {"restarts": 1}, "unknown option"),
        ("ssh://root@h#app", {"ssh": "/id_ed25519"}, "option 'ssh' must be a mapping"),
    ],
)
def test_bad_configuration(target: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ContainerOptions.from_spec(spec(target, **options))


def test_options_win_over_the_target() -> None:
    opts = ContainerOptions.from_spec(
        spec("display-name", docker_url="tcp://10.0.0.5:2376", container="acme-app")
    )
    assert (opts.docker_url, opts.container) == ("tcp://10.0.0.5:2376", "acme-app")
    ssh = {"identity_file": "/k/id", "known_hosts": "/k/known_hosts"}
    opts = ContainerOptions.from_spec(spec("ssh://root@h#acme-app", ssh=ssh))
    assert (opts.docker_url, opts.container, opts.ssh) == ("ssh://root@h", "acme-app", ssh)


# ------------------------------------------------------------------ against real daemons


class Checker:
    """One ContainerProbe (it keeps restart counts between checks) on one event loop; each
    check is cut off at the monitor's timeout, as the engine does (a TimeoutError fails)."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()
        self.probe = ContainerProbe()

    def check(self, monitor: MonitorSpec) -> ProbeResult:
        return self._runner.run(self._check(monitor))

    async def _check(self, monitor: MonitorSpec) -> ProbeResult:
        async with asyncio.timeout(monitor.timeout_s):
            return await self.probe.check(monitor)

    def poll(self, monitor: MonitorSpec, done: Callable[[ProbeResult], bool]) -> ProbeResult:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            result = self.check(monitor)
            if done(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up; last result: {result!r}")
            time.sleep(0.2)

    def close(self) -> None:
        self._runner.run(self.probe.aclose())
        self._runner.close()


@pytest.fixture
def checker() -> Iterator[Checker]:
    c = Checker()
    yield c
    c.close()


@pytest.fixture
def d1(
    docker_hosts: list[DockerdHandle],
    standin_images: dict[str, str],
    remove_test_containers_after: None,
) -> DockerdHandle:
    return docker_hosts[0]


def start(host: DockerdHandle, image: str, command: Any = None, **kwargs: Any) -> tuple[Any, str]:
    name = f"cpdops-probe-{uuid.uuid4().hex[:8]}"
    container = run_test_container(host.client, image, command, name=name, **kwargs)
    return container, name


def sample(result: ProbeResult, name: str) -> float | None:
    return next((s.value for s in result.samples if s.name == name), None)


def test_running_container_passes_with_cpu_and_memory(
    d1: DockerdHandle, standin_images: dict[str, str], checker: Checker
) -> None:
    _, name = start(d1, standin_images["1"])
    monitor = spec(f"{d1.url}#{name}")
    first = checker.poll(monitor, lambda r: r.ok)
    assert first.reason == "running"
    assert first.details["name"] == name
    assert sample(first, "container_restarts") == 0.0
    # memory and CPU come from the stream the first check opened, once it has sent samples
    # (CPU needs two of them)
    later = checker.poll(monitor, lambda r: sample(r, "container_cpu_usage_ratio") is not None)
    assert later.ok
    assert (sample(later, "container_memory_usage_bytes") or 0) > 0
    assert (sample(later, "container_memory_limit_bytes") or 0) > 0
    assert (sample(later, "container_cpu_usage_ratio") or -1) >= 0


def test_a_healthy_container_passes_every_check_at_a_1s_timeout_and_interval(
    d1: DockerdHandle, standin_images: dict[str, str], checker: Checker
) -> None:
    """Issue 12: a one-shot stats call takes about a second on docker 20.10, so a check that
    waited for it timed out at 1 s; state comes from inspect, CPU/memory from the probe's
    stats stream, and every check of a healthy container is UP."""
    container, name = start(d1, standin_images["1"])
    monitor = spec(f"{d1.url}#{name}")
    checker.poll(monitor, lambda r: r.details.get("status") == "running")
    results: list[ProbeResult | str] = []
    for _ in range(CHECKS_AT_1S):
        due = time.monotonic() + monitor.interval_s
        try:
            results.append(checker.check(monitor))
        except TimeoutError:
            results.append("timeout")
        time.sleep(max(0.0, due - time.monotonic()))
    failed = [
        r if isinstance(r, str) else r.reason
        for r in results
        if r == "timeout" or not (isinstance(r, ProbeResult) and r.ok)
    ]
    assert not failed, f"{len(failed)} of {CHECKS_AT_1S} checks failed: {failed}"
    # the stream's samples reach the checks (off their critical path)
    with_stats = checker.poll(
        monitor,
        lambda r: (
            sample(r, "container_cpu_usage_ratio") is not None
            and (sample(r, "container_memory_usage_bytes") or 0) > 0
        ),
    )
    assert with_stats.ok
    # and a container that stops is DOWN at the same timeout
    container.kill()
    down = checker.poll(monitor, lambda r: not r.ok)
    assert down.reason == "exited (code 137)"


def test_killed_container_fails_with_its_exit_code(
    d1: DockerdHandle, standin_images: dict[str, str], checker: Checker
) -> None:
    container, name = start(d1, standin_images["1"])
    monitor = spec(f"{d1.url}#{name}")
    checker.poll(monitor, lambda r: r.ok)
    container.kill()
    result = checker.poll(monitor, lambda r: not r.ok)
    assert result.reason == "exited (code 137)"
    assert result.details["exit_code"] == 137
    assert result.details["oom_killed"] is False


def test_paused_container_fails_as_paused(
    d1: DockerdHandle, standin_images: dict[str, str], checker: Checker
) -> None:
    container, name = start(d1, standin_images["1"])
    monitor = spec(f"{d1.url}#{name}")
    checker.poll(monitor, lambda r: r.ok)
    container.pause()
    try:
        result = checker.poll(monitor, lambda r: not r.ok)
        assert result.reason == "paused"
    finally:
        container.unpause()
    assert checker.poll(monitor, lambda r: r.ok).reason == "running"


def test_oom_killed_container_says_so(
    d1: DockerdHandle, standin_images: dict[str, str], checker: Checker
) -> None:
    _, name = start(
        d1,
        standin_images["1"],
        ["python3", "-c", "x = bytearray(64 * 1024 * 1024); import time; time.sleep(60)"],
        mem_limit="16m",
        memswap_limit="16m",
    )
    monitor = spec(f"{d1.url}#{name}")
    result = checker.poll(monitor, lambda r: r.details.get("status") == "exited")
    assert not result.ok
    assert result.reason == "exited (code 137, OOM killed)"
    assert result.details["oom_killed"] is True


def test_failing_healthcheck_is_unhealthy(
    d1: DockerdHandle, standin_images: dict[str, str], checker: Checker
) -> None:
    _, name = start(
        d1,
        standin_images["1"],
        healthcheck={"test": ["CMD", "false"], "interval": 500_000_000, "retries": 1},
    )
    monitor = spec(f"{d1.url}#{name}")
    result = checker.poll(monitor, lambda r: r.details.get("health") == "unhealthy")
    assert not result.ok
    assert result.reason == "unhealthy: exit code 1"


def test_restarts_between_checks_fail_the_check(
    d1: DockerdHandle, standin_images: dict[str, str], checker: Checker
) -> None:
    _, name = start(
        d1,
        standin_images["1"],
        ["python3", "-c", "import time; time.sleep(0.5); raise SystemExit(3)"],
        restart_policy={"Name": "always"},
    )
    monitor = spec(f"{d1.url}#{name}")
    result = checker.poll(monitor, lambda r: "restarted" in r.reason)
    assert not result.ok
    assert result.details["restarts_since_last_check"] >= 1
    assert (sample(result, "container_restarts") or 0) >= 1
    # allowed restarts: the same container no longer fails for restarting alone
    lenient = spec(f"{d1.url}#{name}", name="lenient", max_restarts=1000)
    checker.check(lenient)
    again = checker.poll(lenient, lambda r: r.details.get("status") == "running")
    assert "restarted" not in again.reason


def test_missing_container_and_unreachable_engine(d1: DockerdHandle, checker: Checker) -> None:
    result = checker.check(spec(f"{d1.url}#no-such-container-{uuid.uuid4().hex[:6]}"))
    assert not result.ok
    assert result.reason == "not found"
    # (a tcp:// URL: docker-py leaks the socket of a failed unix:// connect)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gone = checker.check(spec(f"tcp://127.0.0.1:{port}#app", name="gone"))
    assert not gone.ok
    assert gone.reason.startswith(f"host d1 (tcp://127.0.0.1:{port})"), gone.reason
