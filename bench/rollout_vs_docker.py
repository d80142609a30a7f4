"""cpdops rollout time vs the raw Docker engine and vs Docker Swarm; rollback time (issue #3).

    CPDOPS_PULL_POLICY=never .venv/bin/python bench/rollout_vs_docker.py [--rounds 5]

Run as root from the project root (about 7 minutes). Starts three test daemons
(``tests/integration/dockerd.py``: three "hosts" on this machine), puts 30 stand-in tenants on
them (10 each, fixed ports on 127.0.0.1, so every replace is stop-first) and registers them in a
throwaway SQLite database. Then one unmeasured warm-up rollout per engine, and per round,
interleaved (A/B, B/A, ...) because the machine is noisy:

* cpdops: ``create`` + ``run`` of a rollout of all 30 to the other version with
  ``Strategy(parallelism=6, waves=["100%"])`` and a gate of 1 pass at a 0.1 s interval;
* raw: the same Docker work with the Docker SDK on a thread pool of 6, no cpdops in between:
  per instance stop, rename (kept), create with the same configuration
  (``DockerHost.create_like``), start, poll the health URL every 0.1 s until one 200 with the
  new version (``rollouts.gates.http_gate``, the gate cpdops uses); the kept containers are
  removed at the end (same pool);
* swarm (the first ``--swarm-rounds`` rounds): a 30-replica service of the stand-in (created
  per round, outside the timing) on a 3-node swarm made of the same three daemons, timed from
  ``docker service update --image`` with ``--update-parallelism 6 --update-delay 0s
  --update-order stop-first --update-monitor 100ms --update-failure-action pause`` to
  ``UpdateStatus.State == completed``; variants by HEALTHCHECK interval (``--swarm-health``:
  ``0.1`` = the gate's interval, start period = the gate's deadline; ``none`` = no health check,
  Swarm's floor with less verification than cpdops).

Then the rollback time per instance: rollouts to a stand-in whose health fails (gate 1 pass
within 2 s, failure budget 0), of 6 instances at once and of 1 instance; the journal's
``rollback`` step ``detail.seconds`` is gate failure → the previous container answering its
health URL again.

Prints a table (medians) and a profile of where cpdops spends its time (journal step
durations, idle slot time, CPU, SQL statements, Docker API requests by endpoint). Writes
nothing else (the test daemons log to test-artifacts/dockerd/ as in the tests); removes its
containers, leaves the swarm and stops the daemons, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests.integration is not an installed package
    sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
import docker.errors  # noqa: E402
import requests  # noqa: E402
from docker.types import EndpointSpec, Healthcheck, ServiceMode  # noqa: E402
from sqlalchemy import Engine, event, select  # noqa: E402

from orchestrator.context import AppContext  # noqa: E402
from orchestrator.db.models import Rollout, RolloutInstance  # noqa: E402
from orchestrator.fleet.discovery import KEPT_MARKER  # noqa: E402
from orchestrator.fleet.images import build_standin, copy_image  # noqa: E402
from orchestrator.fleet.runtime import TENANT_LABEL, DockerHost  # noqa: E402
from rollouts.gates import http_gate  # noqa: E402
from rollouts.spec import GateSpec, RolloutRequest, Strategy  # noqa: E402
from tests.integration.dockerd import DockerdError, DockerdFleet, DockerdHandle  # noqa: E402
from tests.integration.fleet import (  # noqa: E402
    Placed,
    free_port,
    make_context,
    place_tenants,
    wait_health,
)

TENANTS = 30
PARALLELISM = 6
GATE = GateSpec(passes=1, deadline_s=30, interval_s=0.1)
FAIL_GATE = GateSpec(passes=1, deadline_s=2, interval_s=0.1)
SERVICE = "cpdops-bench"
SWARM_LABEL = "com.docker.swarm.service.name"
# The Swarm HEALTHCHECK equal to our gate: GET /health answers 200 and reports the image's
# version ($SMARTCPD_VERSION is baked into the stand-in image). bash's /dev/tcp: the stand-in
# image has no curl, and python3 per probe costs far more CPU.
HEALTH_SCRIPT = (
    "exec 3<>/dev/tcp/127.0.0.1/8080"
    ' && printf "GET /health HTTP/1.0\\r\\n\\r\\n" >&3'
    " && r=$(cat <&3)"
    ' && [[ $r == "HTTP/1.0 200 "* && $r == *"\\"version\\": \\"$SMARTCPD_VERSION\\""* ]]'
)
HEALTH_CMD = "exec bash -c '" + HEALTH_SCRIPT.replace("'", "'\\''") + "'"


# --- counters: SQL statements and Docker API requests ---------------------------------------


@dataclass
class Counters:
    sql: int = 0
    sql_s: float = 0.0
    commits: int = 0
    api: int = 0
    api_s: float = 0.0
    kinds: dict[str, list[float]] = field(default_factory=dict)  # kind → [count, seconds]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> dict[str, float]:
        """The counts since the last reset (``api <kind>``: Docker requests by endpoint)."""
        with self.lock:
            out: dict[str, float] = {
                "sql": self.sql,
                "sql_s": self.sql_s,
                "commits": self.commits,
                "api": self.api,
                "api_s": self.api_s,
            }
            for k, (n, secs) in self.kinds.items():
                out[f"api {k}"] = n
                out[f"api_s {k}"] = secs
            self.sql = self.commits = self.api = 0
            self.sql_s = self.api_s = 0.0
            self.kinds = {}
        return out

    def watch_engine(self, engine: Engine) -> None:
        local = threading.local()

        @event.listens_for(engine, "before_cursor_execute")
        def _before(*_args: Any) -> None:
            local.t = time.perf_counter()

        @event.listens_for(engine, "after_cursor_execute")
        def _after(*_args: Any) -> None:
            elapsed = time.perf_counter() - getattr(local, "t", time.perf_counter())
            with self.lock:
                self.sql += 1
                self.sql_s += elapsed

        @event.listens_for(engine, "commit")
        def _commit(*_args: Any) -> None:
            with self.lock:
                self.commits += 1

    def watch_docker(self, client: docker.DockerClient) -> None:
        def hook(response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
            kind = api_kind(str(response.request.method), str(response.request.path_url))
            with self.lock:
                self.api += 1
                self.api_s += response.elapsed.total_seconds()
                entry = self.kinds.setdefault(kind, [0.0, 0.0])
                entry[0] += 1
                entry[1] += response.elapsed.total_seconds()

        client.api.hooks["response"].append(hook)


def api_kind(method: str, path_url: str) -> str:
    """``DELETE /v1.41/containers/<id>?force=True`` → ``DELETE containers/*``."""
    parts = path_url.split("?", 1)[0].strip("/").split("/")
    if parts and re.fullmatch(r"v\d+\.\d+", parts[0]):
        parts = parts[1:]
    if len(parts) >= 3 and parts[0] in ("containers", "images"):
        parts = [parts[0], "*", parts[-1]]
    elif len(parts) == 2 and parts[0] == "containers" and parts[1] not in ("json", "create"):
        parts = [parts[0], "*"]
    return f"{method} {'/'.join(parts)}"


def cpu_ticks() -> tuple[int, int]:
    """(all, idle) jiffies of the machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    return sum(values), values[3] + values[4]


@dataclass
class CpuMeter:
    """This process's CPU seconds and the machine's busy share over a block."""

    proc_s: float = 0.0
    busy_pct: float = 0.0

    @classmethod
    @contextlib.contextmanager
    def over(cls) -> Iterator[CpuMeter]:
        meter = cls()
        proc, (total, idle) = time.process_time(), cpu_ticks()
        yield meter
        total2, idle2 = cpu_ticks()
        meter.proc_s = time.process_time() - proc
        meter.busy_pct = 100.0 * (1 - (idle2 - idle) / max(1, total2 - total))


# --- the three engines under test -----------------------------------------------------------


@dataclass
class Fleet:
    handles: list[DockerdHandle]
    placed: list[Placed]
    images: dict[str, str]  # "1", "2", "fail"

    def handle(self, name: str) -> DockerdHandle:
        return next(h for h in self.handles if h.name == name)


@dataclass
class CpdopsResult:
    create_s: float
    run_s: float
    profile: dict[str, float]

    @property
    def total_s(self) -> float:
        return self.create_s + self.run_s


def cpdops_round(ctx: AppContext, counters: Counters, image: str) -> CpdopsResult:
    request = RolloutRequest(
        image=image, gate=GATE, strategy=Strategy(parallelism=PARALLELISM, waves=["100%"])
    )
    counters.reset()
    with CpuMeter.over() as cpu:
        started = time.monotonic()
        rid = ctx.executor.create(request, actor="bench", claim=True)
        created = time.monotonic()
        status = ctx.executor.run(rid)
        done = time.monotonic()
    count = counters.reset()
    if status != "succeeded":
        raise RuntimeError(f"cpdops rollout {rid} to {image} ended {status}")
    profile = journal_profile(ctx, rid)
    profile.update(count)
    profile.update(bench_cpu_s=cpu.proc_s, machine_busy_pct=cpu.busy_pct)
    return CpdopsResult(created - started, done - created, profile)


def journal_profile(ctx: AppContext, rollout_id: int) -> dict[str, float]:
    """Per-step durations and slot use of one rollout, from its journal."""
    with ctx.factory() as s:
        rollout = s.get_one(Rollout, rollout_id)
        rows = s.scalars(
            select(RolloutInstance).where(RolloutInstance.rollout_id == rollout_id)
        ).all()
        steps: dict[str, list[float]] = {}
        spans: list[tuple[datetime, datetime]] = []
        for inst in rows:
            for st in inst.steps:
                if st.finished_at is not None:
                    steps.setdefault(st.step, []).append(
                        (st.finished_at - st.started_at).total_seconds()
                    )
            times = [st.started_at for st in inst.steps] + [
                st.finished_at for st in inst.steps if st.finished_at is not None
            ]
            spans.append((min(times), max(times)))
        assert rollout.started_at is not None and rollout.finished_at is not None
        first = min(a for a, _ in spans)
        last = max(b for _, b in spans)
        busy = sum((b - a).total_seconds() for a, b in spans)
        window = (last - first).total_seconds()
        out = {f"step_{k}_s": statistics.median(v) for k, v in steps.items()}
        out.update(
            instance_busy_s=statistics.median([(b - a).total_seconds() for a, b in spans]),
            head_s=(first - rollout.started_at).total_seconds(),
            window_s=window,
            tail_s=(rollout.finished_at - last).total_seconds(),
            idle_slot_s=PARALLELISM * window - busy,
        )
        out.update(
            dispatch_gaps([a.timestamp() for a, _ in spans], [b.timestamp() for _, b in spans])
        )
    return out


def dispatch_gaps(starts: list[float], ends: list[float]) -> dict[str, float]:
    """Time from an instance ending to the next one starting in the freed slot (with P slots
    the (k+P)-th start in time order follows the k-th end): median, max, and how many > 0.1 s."""
    starts, ends = sorted(starts), sorted(ends)
    gaps = [starts[k] - ends[k - PARALLELISM] for k in range(PARALLELISM, len(starts))] or [0.0]
    return {
        "dispatch_s": statistics.median(gaps),
        "dispatch_max_s": max(gaps),
        "dispatch_over_0.1s_n": float(sum(1 for g in gaps if g > 0.1)),
    }


@dataclass
class RawResult:
    total_s: float
    profile: dict[str, float]


def raw_round(
    fleet: Fleet, hosts: dict[str, DockerHost], counters: Counters, version: str, stop_s: int
) -> RawResult:
    image = fleet.images[version]

    def one(p: Placed) -> tuple[float, float, float, str]:
        host = hosts[p.host]
        name = p.tenant.container
        kept = f"{name}{KEPT_MARKER}raw"
        t0 = time.time()
        host.stop(name, timeout=stop_s)
        host.rename(name, kept)
        new_id = host.create_like(kept, image=image, name=name, extra_labels={})
        host.start(new_id)
        t1 = time.time()
        gate = http_gate(
            p.tenant.health_url,
            expect_version=version,
            passes=GATE.passes,
            deadline_s=GATE.deadline_s,
            interval_s=GATE.interval_s,
        )
        if not gate.ok:
            raise RuntimeError(f"raw: {name} on {p.host} not healthy: {gate.reason}")
        return t0, t1, time.time(), kept

    counters.reset()
    with CpuMeter.over() as cpu, ThreadPoolExecutor(max_workers=PARALLELISM) as pool:
        started = time.monotonic()
        spans = list(pool.map(one, fleet.placed))
        ended = time.monotonic()
        removals = [
            pool.submit(hosts[p.host].remove, kept, force=True)
            for p, (*_, kept) in zip(fleet.placed, spans, strict=True)
        ]
        for fut in removals:
            fut.result()
        total = time.monotonic() - started
    count = counters.reset()
    first = min(s[0] for s in spans)
    last = max(s[2] for s in spans)
    busy = sum(s[2] - s[0] for s in spans)
    profile = {
        "step_replace_s": statistics.median(s[1] - s[0] for s in spans),
        "step_gate_s": statistics.median(s[2] - s[1] for s in spans),
        "instance_busy_s": statistics.median(s[2] - s[0] for s in spans),
        "window_s": last - first,
        "tail_s": total - (ended - started),
        "idle_slot_s": PARALLELISM * (last - first) - busy,
        **dispatch_gaps([x[0] for x in spans], [x[2] for x in spans]),
        **count,
        "bench_cpu_s": cpu.proc_s,
        "machine_busy_pct": cpu.busy_pct,
    }
    return RawResult(total, profile)


def check_fleet(fleet: Fleet, version: str) -> None:
    """Outside the timing: every tenant answers with ``version``, nothing else is left over."""
    for p in fleet.placed:
        wait_health(p.tenant.health_url, version=version, timeout=10)
    for h in fleet.handles:
        names = [
            c.name for c in h.client.containers.list(all=True, filters={"label": TENANT_LABEL})
        ]
        extra = [n for n in names if KEPT_MARKER in n or "--cpdops-" in n]
        if len(names) != TENANTS // len(fleet.handles) or extra:
            raise RuntimeError(f"{h.name}: unexpected containers after a round: {sorted(names)}")


# --- Swarm ----------------------------------------------------------------------------------


@dataclass
class Swarm:
    manager: DockerdHandle
    nodes: int
    note: str


def docker_cli(handle: DockerdHandle, *args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["docker", "-H", handle.url, *args], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def swarm_up(handles: Sequence[DockerdHandle]) -> Swarm:
    """A swarm of the test daemons: the first is the manager, the others join as workers.

    The ingress (routing-mesh) overlay network is removed before anyone joins: all daemons
    share this machine's network namespace, and each would create its own
    ``docker_gwbridge`` interface of the same name for the ingress sandbox. The benchmark
    service publishes no port (``--endpoint-mode dnsrr``), so its tasks use the default bridge.
    """
    manager, *workers = handles
    addr = f"127.0.0.1:{free_port()}"
    manager.client.swarm.init(advertise_addr=addr, listen_addr=addr)
    with contextlib.suppress(docker.errors.NotFound):
        manager.client.networks.get("ingress").remove()
    drop_gwbridge(manager)
    token = manager.client.swarm.attrs["JoinTokens"]["Worker"]
    note = "1-node swarm (manager only)"
    joined = 0
    for w in workers:
        waddr = f"127.0.0.1:{free_port()}"
        try:
            w.client.swarm.join(
                remote_addrs=[addr], join_token=token, listen_addr=waddr, advertise_addr=waddr
            )
            joined += 1
        except docker.errors.APIError as exc:
            note = f"worker {w.name} could not join: {exc.explanation or exc}"
    if joined == len(workers):
        note = f"{len(handles)}-node swarm (1 manager + {joined} workers) on this machine"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = [n for n in manager.client.api.nodes() if n["Status"]["State"] == "ready"]
        if len(ready) == 1 + joined:
            break
        time.sleep(0.2)
    return Swarm(manager, 1 + joined, note)


def drop_gwbridge(handle: DockerdHandle) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            handle.client.networks.get("docker_gwbridge").remove()
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:  # the ingress sandbox is still being torn down
            time.sleep(0.2)


def swarm_down(handles: Sequence[DockerdHandle]) -> None:
    """Leave the swarm on every daemon (workers first) and drop what it left; never raises."""
    for h in reversed(handles):
        try:
            with contextlib.suppress(docker.errors.NotFound):
                h.client.api.remove_service(SERVICE)
        except docker.errors.APIError:
            pass
    for h in reversed(handles):
        try:
            if h.client.info()["Swarm"]["LocalNodeState"] != "inactive":
                h.client.swarm.leave(force=True)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            print(f"warning: {h.name} could not leave the swarm: {exc}", file=sys.stderr)
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            drop_gwbridge(h)


def swarm_tasks(swarm: Swarm, version: str) -> int:
    tasks = swarm.manager.client.api.tasks(filters={"service": SERVICE, "desired-state": "running"})
    return sum(
        1
        for t in tasks
        if t["Status"]["State"] == "running"
        and t["Spec"]["ContainerSpec"]["Image"].split("@")[0].endswith(f":{version}")
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def swarm_containers(handles: Sequence[DockerdHandle]) -> int:
    return sum(
        len(
            h.client.containers.list(
                all=True, ignore_removed=True, filters={"label": f"{SWARM_LABEL}={SERVICE}"}
            )
        )
        for h in handles
    )


def swarm_round(
    swarm: Swarm, handles: Sequence[DockerdHandle], images: dict[str, str], health: str
) -> tuple[float, float, float]:
    """Seconds from `docker service update` to completed, Swarm's own StartedAt → CompletedAt,
    and the machine's busy percentage meanwhile."""
    client = swarm.manager.client
    client.services.create(
        images["1"],
        name=SERVICE,
        mode=ServiceMode("replicated", replicas=TENANTS),
        healthcheck=Healthcheck(test=["NONE"]),
        endpoint_spec=EndpointSpec(mode="dnsrr"),
    )
    try:
        wait_until(lambda: swarm_tasks(swarm, "1") == TENANTS, 120, "30 running v1 tasks")
        time.sleep(1)
        if health == "none":
            health_args = ["--no-healthcheck"]
        else:
            health_args = [
                "--health-cmd",
                HEALTH_CMD,
                "--health-interval",
                f"{int(float(health) * 1000)}ms",
                "--health-retries",
                "1",
                "--health-start-period",
                f"{int(GATE.deadline_s)}s",
                "--health-timeout",
                "5s",
            ]
        with CpuMeter.over() as cpu:
            started = time.monotonic()
            docker_cli(
                swarm.manager,
                "service",
                "update",
                "--detach",
                "--no-resolve-image",
                "--image",
                images["2"],
                *health_args,
                "--update-parallelism",
                str(PARALLELISM),
                "--update-delay",
                "0s",
                "--update-order",
                "stop-first",
                "--update-monitor",
                "100ms",
                "--update-failure-action",
                "pause",
                SERVICE,
            )
            status = wait_update(client, started + 300)
            wall = time.monotonic() - started
        own = (_iso(status["CompletedAt"]) - _iso(status["StartedAt"])).total_seconds()
        if swarm_tasks(swarm, "2") != TENANTS:
            raise RuntimeError("swarm reports completed but not 30 running v2 tasks")
        return wall, own, cpu.busy_pct
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_service(SERVICE)
        wait_until(lambda: swarm_containers(handles) == 0, 120, "the service's containers to go")
        time.sleep(1)


def wait_update(client: docker.DockerClient, deadline: float) -> dict[str, Any]:
    """Poll the service every 0.1 s until its update completed; its UpdateStatus."""
    while True:
        status: dict[str, Any] = client.api.inspect_service(SERVICE).get("UpdateStatus") or {}
        state = status.get("State")
        if state == "completed":
            return status
        if state in ("paused", "rollback_started", "rollback_completed"):
            raise RuntimeError(f"swarm update {state}: {status.get('Message')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"swarm update not completed in time: {status}")
        time.sleep(0.1)


def _iso(text: str) -> datetime:
    # Docker gives nanoseconds: 2026-11-25T22:56:20.414484875Z
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


# --- rollback -------------------------------------------------------------------------------


def rollback_round(
    ctx: AppContext, fleet: Fleet, tenants: list[str], parallelism: int
) -> list[dict[str, float]]:
    """One rollout of ``tenants`` to the failing image; per rolled-back instance: ``seconds``
    (the journal's rollback step: gate failure → previous container healthy), ``restart_s``
    (step start → Docker's StartedAt of the kept container: remove new, rename, start),
    ``ready_s`` (StartedAt → step end: the app starting and the health poll) and ``gap_s``
    (gate step end → rollback step start: reading the failed container's logs)."""
    request = RolloutRequest(
        image=fleet.images["fail"],
        tenants=tenants,
        gate=FAIL_GATE,
        strategy=Strategy(parallelism=parallelism, waves=["100%"], failure_budget="0"),
    )
    rid = ctx.executor.create(request, actor="bench", claim=True)
    status = ctx.executor.run(rid)
    if status != "failed":
        raise RuntimeError(f"rollout {rid} to the failing image ended {status}, not failed")
    out = []
    with ctx.factory() as s:
        rows = s.scalars(select(RolloutInstance).where(RolloutInstance.rollout_id == rid)).all()
        for inst in rows:
            steps = {st.step: st for st in inst.steps}
            rb, gate = steps.get("rollback"), steps.get("gate")
            if (
                rb is None
                or rb.state != "ok"
                or rb.finished_at is None
                or inst.old_container_id is None
            ):
                continue
            attrs = fleet.handle(inst.host).client.api.inspect_container(inst.old_container_id)
            restarted = _iso(attrs["State"]["StartedAt"])
            gate_end = gate.finished_at if gate is not None else None
            out.append(
                {
                    "seconds": float(rb.detail["seconds"]),
                    "restart_s": (restarted - rb.started_at).total_seconds(),
                    "ready_s": (rb.finished_at - restarted).total_seconds(),
                    "gap_s": (rb.started_at - gate_end).total_seconds() if gate_end else 0.0,
                }
            )
    return out


# --- setup and report -----------------------------------------------------------------------


@contextlib.contextmanager
def daemons(wait_s: float) -> Iterator[list[DockerdHandle]]:
    """The three test daemons; waits up to ``wait_s`` while a test session holds them."""
    fleet = DockerdFleet(3)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            handles = fleet.start()
            break
        except DockerdError as exc:
            if "another test session" not in str(exc) or time.monotonic() > deadline:
                raise
            print("waiting: a test session holds the test daemons", file=sys.stderr)
            time.sleep(10)
    try:
        yield handles
    finally:
        fleet.stop()


def stats(values: Sequence[float]) -> str:
    return (
        f"{statistics.median(values):7.2f} {min(values):7.2f} {max(values):7.2f} {len(values):3d}"
    )


@dataclass
class Results:
    cpdops: list[CpdopsResult] = field(default_factory=list)
    raw: list[RawResult] = field(default_factory=list)
    cpdops_warmup: list[CpdopsResult] = field(default_factory=list)
    raw_warmup: list[RawResult] = field(default_factory=list)
    swarm_note: str = "skipped (--swarm-health empty)"
    swarm_wall: dict[str, list[float]] = field(default_factory=dict)
    swarm_own: dict[str, list[float]] = field(default_factory=dict)
    swarm_busy: dict[str, list[float]] = field(default_factory=dict)
    rollback_parallel: list[dict[str, float]] = field(default_factory=list)
    rollback_serial: list[dict[str, float]] = field(default_factory=list)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rollouts per engine (median)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured rollouts per engine first (0: none)"
    )
    parser.add_argument(
        "--swarm-rounds", type=int, default=3, help="swarm updates per variant (median)"
    )
    parser.add_argument(
        "--swarm-health",
        default="0.1,none",
        help="comma-separated HEALTHCHECK intervals in seconds for the Swarm variants, "
        "or 'none'; empty to skip Swarm",
    )
    parser.add_argument(
        "--rollback-rounds", type=int, default=2, help="rollouts of 6 instances at once"
    )
    parser.add_argument(
        "--rollback-serial", type=int, default=10, help="rollouts of 1 instance (one each)"
    )
    parser.add_argument("--wait-lock", type=float, default=600, help="seconds to wait for daemons")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark starts its own dockerd (tests/integration/dockerd.py)")
    variants = [v.strip() for v in args.swarm_health.split(",") if v.strip()]
    res = Results(
        swarm_wall={v: [] for v in variants},
        swarm_own={v: [] for v in variants},
        swarm_busy={v: [] for v in variants},
    )
    bench_started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, daemons(args.wait_lock) as handles:
        ctx = make_context(Path(tmp), pull_policy="never")
        counters = Counters()
        raw_hosts = {h.name: DockerHost(h.name, h.url, pull=False) for h in handles}
        swarm: Swarm | None = None
        try:
            first = handles[0]
            images = {
                "1": build_standin(first.client, "1"),
                "2": build_standin(first.client, "2"),
                "fail": build_standin(first.client, "2", fail="health"),
            }
            for h in handles[1:]:
                for tag in images.values():
                    copy_image(first.client, h.client, tag)
            names = [(f"t{i:02d}", i % len(handles)) for i in range(TENANTS)]
            fleet = Fleet(handles, place_tenants(ctx, handles, names, images["1"]), images)
            check_fleet(fleet, "1")
            counters.watch_engine(ctx.engine)
            for host in ctx.hosts.hosts():
                counters.watch_docker(host.client)
            for dh in raw_hosts.values():
                counters.watch_docker(dh.client)
            if variants:
                if shutil.which("docker") is None:
                    res.swarm_note = "skipped: the docker CLI is not installed"
                else:
                    swarm_down(handles)  # a crashed earlier run may have left swarm state
                    try:
                        swarm = swarm_up(handles)
                        res.swarm_note = swarm.note
                    except (docker.errors.DockerException, RuntimeError) as exc:
                        res.swarm_note = f"skipped: swarm could not be set up: {exc}"
                        swarm_down(handles)
            time.sleep(3)  # let the daemons settle after placing tenants and forming the swarm
            version = "1"
            for r in range(-args.warmup, args.rounds):
                order = ("cpdops", "raw") if r % 2 == 0 else ("raw", "cpdops")
                for engine in order:
                    version = "2" if version == "1" else "1"
                    if engine == "cpdops":
                        c_result = cpdops_round(ctx, counters, images[version])
                        took = c_result.total_s
                        (res.cpdops if r >= 0 else res.cpdops_warmup).append(c_result)
                    else:
                        r_result = raw_round(
                            fleet, raw_hosts, counters, version, ctx.settings.stop_timeout_s
                        )
                        took = r_result.total_s
                        (res.raw if r >= 0 else res.raw_warmup).append(r_result)
                    label = f"round {r + 1}" if r >= 0 else "warm-up"
                    print(f"{label} {engine:6s} ->v{version} {took:6.2f}s", file=sys.stderr)
                    check_fleet(fleet, version)
                    time.sleep(1)
                if swarm is not None and 0 <= r < args.swarm_rounds:
                    for v in variants:
                        wall, own, busy = swarm_round(swarm, handles, images, v)
                        res.swarm_wall[v].append(wall)
                        res.swarm_own[v].append(own)
                        res.swarm_busy[v].append(busy)
                        print(f"round {r + 1} swarm health={v} {wall:6.2f}s", file=sys.stderr)
            if swarm is not None:
                swarm_down(handles)
                swarm = None
            slugs = [p.tenant.slug for p in fleet.placed]
            for r in range(args.rollback_rounds):
                # 6 instances (2 per daemon), another set each round
                chosen = [slugs[(r * PARALLELISM + i) % TENANTS] for i in range(PARALLELISM)]
                res.rollback_parallel += rollback_round(ctx, fleet, chosen, PARALLELISM)
            for r in range(args.rollback_serial):
                res.rollback_serial += rollback_round(ctx, fleet, [slugs[(r * 7) % TENANTS]], 1)
            print("rollbacks done", file=sys.stderr)
            check_fleet(fleet, version)
        finally:
            if variants:
                swarm_down(handles)
            for dh in raw_hosts.values():
                dh.close()
            ctx.close()
    report(args, res, time.monotonic() - bench_started)


def _median(values: Sequence[float]) -> str:
    return f"{statistics.median(values):10.3f}" if values else f"{'-':>10s}"


def report(args: argparse.Namespace, res: Results, elapsed: float) -> None:
    c_med = statistics.median(r.total_s for r in res.cpdops)
    r_med = statistics.median(r.total_s for r in res.raw)
    w = 62
    print(
        f"{TENANTS} instances on 3 daemons, parallelism {PARALLELISM}, stop-first, gate 1 pass "
        f"@ {GATE.interval_s}s; rounds={args.rounds} (+{args.warmup} warm-up), swarm rounds="
        f"{args.swarm_rounds}; swarm: {res.swarm_note}"
    )
    print(f"{'figure (seconds)':{w}s} {'median':>7s} {'min':>7s} {'max':>7s} {'n':>3s}")
    print(f"{'cpdops rollout, create + run':{w}s} {stats([r.total_s for r in res.cpdops])}")
    print(f"{'  of which create (plan)':{w}s} {stats([r.create_s for r in res.cpdops])}")
    print(f"{'raw Docker, same work and parallelism':{w}s} {stats([r.total_s for r in res.raw])}")
    for label, warm in (("cpdops", res.cpdops_warmup), ("raw", res.raw_warmup)):
        if warm:
            print(
                f"{'  warm-up (not in the medians), ' + label:{w}s} "
                f"{stats([r.total_s for r in warm])}"
            )
    for v, walls in res.swarm_wall.items():
        if walls:
            label = "no healthcheck" if v == "none" else f"healthcheck every {v}s"
            print(f"{'swarm service update, ' + label:{w}s} {stats(walls)}")
            print(
                f"{'  swarm UpdateStatus StartedAt -> CompletedAt':{w}s} {stats(res.swarm_own[v])}"
            )
            print(f"{'  machine CPU busy % during the update':{w}s} {stats(res.swarm_busy[v])}")
    for label, rows in (
        ("6 at once", res.rollback_parallel),
        ("1 at a time", res.rollback_serial),
    ):
        if rows:
            print(
                f"{'rollback per instance, ' + label + ' (gate fail -> old healthy)':{w}s} "
                f"{stats([x['seconds'] for x in rows])}"
            )
            for key, what in (
                ("restart_s", "remove new, rename, start kept"),
                ("ready_s", "kept started -> health 200"),
                ("gap_s", "before the step: gate end -> rollback start"),
            ):
                print(f"{'  ' + what:{w}s} {stats([x[key] for x in rows])}")
    print()
    pairs = ", ".join(
        f"{c.total_s:.2f}/{r.total_s:.2f}" for c, r in zip(res.cpdops, res.raw, strict=False)
    )
    paired = [c.total_s / r.total_s for c, r in zip(res.cpdops, res.raw, strict=False)]
    print(f"per round cpdops/raw seconds: {pairs}")
    print(f"ratio cpdops/raw (medians): {c_med / r_med:.3f}  (target <= 1.10)")
    print(
        f"ratio cpdops/raw paired: median of per-round ratios {statistics.median(paired):.3f}, "
        f"of the sums {sum(c.total_s for c in res.cpdops) / sum(r.total_s for r in res.raw):.3f}"
    )
    for v, walls in res.swarm_wall.items():
        if walls:
            ratio = c_med / statistics.median(walls)
            print(f"ratio cpdops/swarm (health {v}): {ratio:.3f}  (target < 1)")
    for label, rows in (("6 at once", res.rollback_parallel), ("1 at a time", res.rollback_serial)):
        if rows:
            secs = [x["seconds"] for x in rows]
            print(
                f"rollback {label}: median {statistics.median(secs):.3f}s max {max(secs):.3f}s "
                f"over {len(secs)} instances (target <= 2 s)"
            )
    print()
    print("profile per rollout of 30 (medians over rounds; step_* and instance_busy_s are")
    print("per-instance medians; idle_slot_s = 6 x window - sum of instance busy time;")
    print("dispatch_s: an instance ending -> the next one starting in its slot;")
    print("bench_cpu_s: CPU seconds of this process; sql_s/api_s: summed over threads)")
    keys = sorted(
        {k for r in res.cpdops for k in r.profile} | {k for r in res.raw for k in r.profile}
    )
    print(f"  {'':34s} {'cpdops':>10s} {'raw':>10s}")
    for k in keys:
        if k.startswith(("api ", "api_s ")):
            continue
        cv = [r.profile.get(k, 0.0) for r in res.cpdops]
        rv = [] if k in ("step_pull_s", "head_s") else [r.profile.get(k, 0.0) for r in res.raw]
        print(f"  {k:34s} {_median(cv)} {_median(rv)}")
    print(f"  {'Docker API requests':34s} {'n':>10s} {'s':>10s} {'raw n':>10s} {'raw s':>10s}")
    for k in sorted({k[4:] for k in keys if k.startswith("api ")}):
        row = [
            _median([r.profile.get(f"{prefix} {k}", 0.0) for r in results])
            for results in (res.cpdops, res.raw)
            for prefix in ("api", "api_s")
        ]
        print(f"  {k:34s} {' '.join(row)}")
    print(f"\nbenchmark wall time {elapsed:.0f}s")


if __name__ == "__main__":
    main()
