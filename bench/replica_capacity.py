"""What one ``cpdops serve`` replica holds, and what a second replica adds (issue #8).

    python bench/replica_capacity.py capacity [--steps 2500,5000,10000,20000] [--rounds 2]
        [--interval 10] [--settle 15] [--quiet 5] [--measure 20] [--no-api] [--json FILE]
    python bench/replica_capacity.py second [--monitors 10000] [--rounds 3] [--window 12]
        [--clients 8] [--failovers 3] [--json FILE]

Everything is real but SmartCPD: ``cpdops apply`` of a fleet file with N declared monitors
(half ``http``, half ``tcp``, 20 per tenant) against the fast local targets of
``bench/responders.py``, then ``cpdops serve`` subprocesses (own process groups, stopped also on
a failure) on a fresh PostgreSQL database on the server of ``--pg-url`` (default
``$CPDOPS_TEST_PG_URL``), created and dropped by the benchmark. Only 127.0.0.1 is contacted.

``capacity``: for each N of ``--steps`` (every round runs the steps in turn, so the noise of the
shared machine hits every N alike; medians over the rounds), one replica with N monitors at
``--interval``; after ``--settle`` s (every monitor has started: jitter spreads the first checks
over one interval) it measures for ``--measure`` s:

* the probe rate achieved (checks counted by ``monitor_probe_lateness_seconds_count`` on
  ``/metrics``) against the scheduled N / interval;
* probe lateness p50/p99 in the window (the histogram's difference, interpolated within a bucket
  as PromQL's ``histogram_quantile`` does);
* CPU % (all threads, ``/proc/<pid>/stat``; 100 % = one core) of the replica while probing only
  (``--quiet`` s before the window, no API request) and during the window, and its RSS;
* API latency p50/p99 of ``GET /api/v1/monitors?limit=100`` and ``GET /api/v1/tenants``, one
  client alternating the two, back to back (a viewer token).

A step **holds** when lateness p99 < one interval, the achieved rate ≥ 95 % of the scheduled
one, and both API p99 < ``--api-p99-ms`` (default 1000 ms). ``--no-api``: no API client in the
window (the replica only probes; no API figures, and they are not part of "holds").

``second``: two replicas on one database, ``--monitors`` monitors (the leader probes them all,
the follower none). ``--rounds`` rounds of two ``--window`` s windows, interleaved: ``--clients``
closed-loop clients send the same two GETs to the leader only, then spread over both replicas
(client i → replica i mod 2); throughput (req/s) and latency p50/p99 per window. Then
``--failovers`` times: SIGKILL the leader, and time until the follower says it leads
(``/healthz``), until its first check (its lateness count > 0) and until every monitor has been
checked by it (``probe_success`` series on its ``/metrics`` = N); a new follower is started for
the next round.

Run under the shared lock: ``flock -o /tmp/cpdops-bench.lock python bench/replica_capacity.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from harness import (
    LOCALHOST,
    ROOT,
    Children,
    cpu_seconds,
    free_port,
    machine,
    median,
    percentile,
    rss_bytes,
    start_responder,
)

sys.path.insert(0, str(ROOT))  # the worktree's orchestrator/

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from orchestrator.settings import Settings
from tests.integration.server import bearer, make_token

PER_TENANT = 20
LATENESS = "monitor_probe_lateness_seconds"
API_PATHS = ("/api/v1/monitors?limit=100", "/api/v1/tenants")


# ----------------------------------------------------------------------------- set-up


@contextlib.contextmanager
def pg_database(admin: str) -> Iterator[str]:
    name = f"cpdops_scale_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def fleet_file(path: Path, monitors: int, interval: float, targets: dict[str, str]) -> None:
    """N declared monitors (http, tcp alternately), PER_TENANT per tenant, as a fleet file."""
    tenants = max(1, -(-monitors // PER_TENANT))
    lines = ["version: 1", "monitors:", "  defaults:", f"    interval: {interval:g}s"]
    lines += [f"    timeout: {min(5.0, interval):g}s", "  declared:"]
    for i in range(monitors):
        kind = "http" if i % 2 == 0 else "tcp"
        lines.append(
            f"    - {{name: m{i}, tenant: t{i // PER_TENANT:05d}, kind: {kind}, "
            f'target: "{targets[kind]}"}}'
        )
    lines.append("tenants:")
    lines += [f"  - {{slug: t{t:05d}, name: Tenant {t}}}" for t in range(tenants)]
    path.write_text("\n".join(lines) + "\n")


def cpdops_env(url: str) -> dict[str, str]:
    return {**os.environ, "CPDOPS_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}


def cpdops_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "from orchestrator.cli import main; main()", *args]


def apply_fleet(url: str, path: Path) -> float:
    started = time.monotonic()
    out = subprocess.run(
        cpdops_argv("apply", "-f", str(path)),
        env=cpdops_env(url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"cpdops apply failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
    return time.monotonic() - started


class Replica:
    """``cpdops serve`` on a free port in its own process group (stopped by ``Children``)."""

    def __init__(self, children: Children, name: str, url: str) -> None:
        self.name = name
        self.port = free_port()
        argv = cpdops_argv("serve", "--host", LOCALHOST, "--port", str(self.port))
        self.child = children.start(name, argv, env=cpdops_env(url))
        self.base = f"http://{LOCALHOST}:{self.port}"
        self.http = httpx.Client(base_url=self.base, timeout=30)
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/healthz").status_code == 200:
                    break
            if self.child.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{children.log_tail(name)}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self.child.pid

    def health(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get("/healthz", timeout=5).json()
        return data

    def metrics(self) -> str:
        return self.http.get("/metrics").text


def lateness(metrics_text: str) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative buckets as (le, count), count, sum) of the lateness histogram."""
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(LATENESS):
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith(f"{LATENESS}_bucket"):
            le = name.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(value)))
        elif name == f"{LATENESS}_count":
            count = float(value)
        elif name == f"{LATENESS}_sum":
            total = float(value)
    return buckets, count, total


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """PromQL ``histogram_quantile``: linear within the bucket the rank falls in."""
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # above the largest finite bucket
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * (
                (rank - lower_count) / span if span else 1
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def probed_monitors(metrics_text: str) -> int:
    return sum(1 for line in metrics_text.splitlines() if line.startswith("probe_success{"))


def wait_monitors(replica: Replica, monitors: int, timeout_s: float) -> None:
    """Until the engine probes ``monitors`` monitors (``monitor_status`` series)."""
    deadline = time.monotonic() + timeout_s
    while True:
        have = sum(
            1 for line in replica.metrics().splitlines() if line.startswith("monitor_status{")
        )
        if have >= monitors:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{replica.name}: {have} of {monitors} monitors after {timeout_s}s")
        time.sleep(1.0)


# ----------------------------------------------------------------------------- capacity


def api_latencies(base: str, token: str, seconds: float) -> dict[str, list[float]]:
    """One client alternating the API paths for ``seconds``; latency per path (seconds)."""
    out: dict[str, list[float]] = {p: [] for p in API_PATHS}
    with httpx.Client(base_url=base, headers=bearer(token), timeout=60) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for path in API_PATHS:
                started = time.perf_counter()
                client.get(path).raise_for_status()
                out[path].append(time.perf_counter() - started)
    return out


def capacity_step(
    args: argparse.Namespace, children: Children, targets: dict[str, str], monitors: int
) -> dict[str, Any]:
    with pg_database(args.pg_url) as url:
        path = children.tmp / f"fleet-{monitors}.yaml"
        fleet_file(path, monitors, args.interval, targets)
        apply_s = apply_fleet(url, path)
        token = make_token(Settings(database_url=url), "viewer", name="bench")
        replica = Replica(children, f"serve-{monitors}", url)
        try:
            wait_monitors(replica, monitors, 120)
            time.sleep(args.settle)
            quiet0, q0 = cpu_seconds(replica.pid), time.monotonic()
            time.sleep(args.quiet)
            probe_cpu = 100 * (cpu_seconds(replica.pid) - quiet0) / (time.monotonic() - q0)
            buckets0, count0, sum0 = lateness(replica.metrics())
            cpu0, t0 = cpu_seconds(replica.pid), time.monotonic()
            if args.no_api:
                time.sleep(args.measure)
                api: dict[str, list[float]] = {}
            else:
                api = api_latencies(replica.base, token, args.measure)
            buckets1, count1, sum1 = lateness(replica.metrics())
            cpu1, t1 = cpu_seconds(replica.pid), time.monotonic()
            rss = rss_bytes(replica.pid)
        finally:
            children.stop(replica.child)
    window = [(le, c1 - c0) for (le, c0), (_, c1) in zip(buckets0, buckets1, strict=True)]
    checks = count1 - count0
    scheduled = monitors / args.interval
    figures: dict[str, Any] = {
        "monitors": monitors,
        "apply_s": round(apply_s, 1),
        "scheduled_per_s": scheduled,
        "achieved_per_s": checks / (t1 - t0),
        "lateness_p50_s": quantile(0.5, window),
        "lateness_p99_s": quantile(0.99, window),
        "lateness_mean_s": (sum1 - sum0) / checks if checks else float("nan"),
        "cpu_probes_only_percent": probe_cpu,
        "cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
        "rss_mib": rss / 2**20,
    }
    for path, values in api.items():
        key = "monitors" if "monitors" in path else "tenants"
        figures[f"api_{key}_p50_ms"] = 1000 * median(values)
        figures[f"api_{key}_p99_ms"] = 1000 * percentile(values, 99)
        figures[f"api_{key}_requests"] = len(values)
    figures["holds"] = bool(
        figures["lateness_p99_s"] < args.interval
        and figures["achieved_per_s"] >= 0.95 * scheduled
        and (
            args.no_api
            or (
                figures["api_monitors_p99_ms"] < args.api_p99_ms
                and figures["api_tenants_p99_ms"] < args.api_p99_ms
            )
        )
    )
    return figures


def run_capacity(args: argparse.Namespace) -> dict[str, Any]:
    steps = [int(s) for s in args.steps.split(",")]
    runs: list[dict[str, Any]] = []
    with Children() as children:
        targets = {
            "http": f"http://{LOCALHOST}:{start_responder(children, 'http')}/health",
            "tcp": f"{LOCALHOST}:{start_responder(children, 'tcp')}",
        }
        for round_ in range(args.rounds):
            for monitors in steps:
                figures = capacity_step(args, children, targets, monitors)
                figures["round"] = round_ + 1
                runs.append(figures)
                print(json.dumps(figures), file=sys.stderr, flush=True)
    summary = []
    for monitors in steps:
        mine = [r for r in runs if r["monitors"] == monitors]
        row: dict[str, Any] = {"monitors": monitors}
        for key, value in mine[0].items():
            if isinstance(value, float) and key != "round":
                row[key] = median([r[key] for r in mine])
        row["holds"] = all(r["holds"] for r in mine)
        summary.append(row)
    holding = [r["monitors"] for r in summary if r["holds"]]
    return {"runs": runs, "summary": summary, "largest_holding": max(holding, default=0)}


# ----------------------------------------------------------------------------- second replica


async def api_load(
    bases: Sequence[str], token: str, clients: int, seconds: float
) -> dict[str, Any]:
    """``clients`` closed-loop clients, client i on ``bases[i % len(bases)]``."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def one(i: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(
            base_url=bases[i % len(bases)], headers=bearer(token), timeout=60
        ) as client:
            k = i
            while time.monotonic() < deadline:
                path = API_PATHS[k % len(API_PATHS)]
                k += 1
                started = time.perf_counter()
                try:
                    (await client.get(path)).raise_for_status()
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * median(latencies),
        "p99_ms": 1000 * percentile(latencies, 99),
        "errors": errors,
    }


def leader_and_follower(replicas: list[Replica]) -> tuple[Replica, Replica]:
    deadline = time.monotonic() + 30
    while True:
        leading = [r for r in replicas if r.health().get("leading")]
        if len(leading) == 1:
            other = next(r for r in replicas if r is not leading[0])
            return leading[0], other
        if time.monotonic() > deadline:
            raise RuntimeError("no single leader after 30s")
        time.sleep(0.2)


def failover(
    children: Children, leader: Replica, follower: Replica, monitors: int
) -> dict[str, float]:
    before = lateness(leader.metrics())[1]
    killed = time.monotonic()
    leader.child.signal(signal.SIGKILL)
    leader.child.proc.wait(timeout=30)
    elected = first = every = float("nan")
    deadline = killed + 120
    while time.monotonic() < deadline:
        now = time.monotonic()
        if elected != elected and follower.health().get("leading"):
            elected = now - killed
        if elected == elected:
            text_ = follower.metrics()
            if first != first and lateness(text_)[1] > 0:
                first = time.monotonic() - killed
            if first == first and probed_monitors(text_) >= monitors:
                every = time.monotonic() - killed
                break
        time.sleep(0.1)
    children.stop(leader.child)
    return {
        "checks_before_kill": before,
        "elected_s": elected,
        "first_check_s": first,
        "all_checked_s": every,
    }


def run_second(args: argparse.Namespace) -> dict[str, Any]:
    windows: list[dict[str, Any]] = []
    failovers: list[dict[str, float]] = []
    with Children() as children, pg_database(args.pg_url) as url:
        targets = {
            "http": f"http://{LOCALHOST}:{start_responder(children, 'http')}/health",
            "tcp": f"{LOCALHOST}:{start_responder(children, 'tcp')}",
        }
        path = children.tmp / "fleet.yaml"
        fleet_file(path, args.monitors, args.interval, targets)
        apply_fleet(url, path)
        token = make_token(Settings(database_url=url), "viewer", name="bench")
        first = Replica(children, "serve-a", url)
        wait_monitors(first, args.monitors, 120)
        second = Replica(children, "serve-b", url)
        leader, follower = leader_and_follower([first, second])
        time.sleep(args.interval)  # every monitor started on the leader
        for round_ in range(args.rounds):
            for label, bases in (("one", [leader.base]), ("two", [leader.base, follower.base])):
                cpu0 = (cpu_seconds(leader.pid), cpu_seconds(follower.pid))
                result = asyncio.run(api_load(bases, token, args.clients, args.window))
                cpu1 = (cpu_seconds(leader.pid), cpu_seconds(follower.pid))
                result.update(
                    {
                        "round": round_ + 1,
                        "replicas": label,
                        "leader_cpu_percent": 100 * (cpu1[0] - cpu0[0]) / args.window,
                        "follower_cpu_percent": 100 * (cpu1[1] - cpu0[1]) / args.window,
                    }
                )
                windows.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
        for k in range(args.failovers):
            figures = failover(children, leader, follower, args.monitors)
            figures["round"] = k + 1
            failovers.append(figures)
            print(json.dumps(figures), file=sys.stderr, flush=True)
            if k + 1 < args.failovers:
                leader = follower
                follower = Replica(children, f"serve-{k}", url)
                time.sleep(args.interval)
    summary: dict[str, Any] = {}
    for label in ("one", "two"):
        mine = [w for w in windows if w["replicas"] == label]
        summary[label] = {
            key: median([w[key] for w in mine])
            for key in ("requests_per_s", "p50_ms", "p99_ms", "leader_cpu_percent",
                        "follower_cpu_percent", "errors")
        }  # fmt: skip
    summary["throughput_ratio_two_over_one"] = (
        summary["two"]["requests_per_s"] / summary["one"]["requests_per_s"]
    )
    summary["failover"] = {
        key: median([f[key] for f in failovers])
        for key in ("elected_s", "first_check_s", "all_checked_s")
    }
    return {"windows": windows, "failovers": failovers, "summary": summary}


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("capacity", "second"))
    parser.add_argument("--pg-url", default=os.environ.get("CPDOPS_TEST_PG_URL"))
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--steps", default="2500,5000,10000,20000")
    parser.add_argument("--rounds", type=int, default=None, help="default: capacity 2, second 3")
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--quiet", type=float, default=5.0)
    parser.add_argument("--measure", type=float, default=20.0)
    parser.add_argument("--api-p99-ms", type=float, default=1000.0)
    parser.add_argument(
        "--no-api", action="store_true", help="capacity: no API client in the window (probing only)"
    )
    parser.add_argument("--monitors", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=12.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not args.pg_url:
        parser.error("needs --pg-url or CPDOPS_TEST_PG_URL")
    try:
        steps = [int(s) for s in args.steps.split(",")]
    except ValueError:
        parser.error("--steps: comma-separated integers, e.g. 2500,5000")
    if any(s < 1 for s in steps) or args.monitors < 1 or args.interval <= 0:
        parser.error("--steps/--monitors must be ≥ 1 and --interval > 0")
    if args.rounds is None:
        args.rounds = 2 if args.part == "capacity" else 3
    result = run_capacity(args) if args.part == "capacity" else run_second(args)
    data = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items() if k != "pg_url"},
        **result,
    }
    print(json.dumps(data.get("summary"), indent=2))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
