"""What one ``GET /api/v1/monitors`` costs with N monitors (in-process, no other load).

    python bench/monitor_list.py [--monitors 10000] [--requests 40] [--db sqlite|postgresql]
        [--no-engine] [--json FILE]

A fresh database (a SQLite file, or a new database on ``$CPDOPS_TEST_PG_URL``'s server, dropped
afterwards) with N declared monitors (20 per tenant, half ``http``, half ``tcp``) and a stored
record for each (a third of them DOWN), and a started ``MonitorEngine`` holding the same N
monitors (as in ``cpdops serve``; probes every 3,600 s against a closed 127.0.0.1 port, so it
barely checks); ``--no-engine``: none (a follower replica). The app of ``cpdops serve`` is called
in this process (Starlette's test client, a viewer token), back to back: ``--requests`` requests
each of ``?limit=100``, ``?limit=100&offset=<N/2>``, ``?tenant=<one>``, ``?status=down&limit=100``
and the whole list (no ``limit``); wall-clock p50/p99 and the process CPU per request (all
threads; the engine is idle). Run under the shared lock:
``flock -o /tmp/cpdops-bench.lock python bench/monitor_list.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import ROOT, free_port, machine, percentile

sys.path.insert(0, str(ROOT))  # the worktree's orchestrator/

from fastapi.testclient import TestClient

from bench.replica_capacity import pg_database
from monitors.engine import MonitorEngine
from monitors.probe import MonitorSpec
from orchestrator.app import create_app
from orchestrator.context import build_context
from orchestrator.db.models import DeclaredMonitor, MonitorRecord
from orchestrator.db.session import session_scope
from orchestrator.settings import Settings
from tests.integration.server import bearer, make_token

PER_TENANT = 20


def seed(settings: Settings, n: int, port: int) -> list[MonitorSpec]:
    ctx = build_context(settings)
    specs: list[MonitorSpec] = []
    now = datetime.now(UTC)
    try:
        with session_scope(ctx.factory) as s:
            for i in range(n):
                tenant, name = f"t{i // PER_TENANT:05d}", f"m{i % PER_TENANT:02d}"
                kind = "http" if i % 2 == 0 else "tcp"
                target = f"http://127.0.0.1:{port}/" if kind == "http" else f"127.0.0.1:{port}"
                mid = f"{tenant}/{name}"
                s.add(
                    DeclaredMonitor(
                        id=mid, name=name, tenant=tenant, host="local", kind=kind,
                        target=target, source="fleet", options={},
                    )
                )  # fmt: skip
                s.add(
                    MonitorRecord(
                        id=mid, name=f"{tenant}-{name}", tenant=tenant, host="local", kind=kind,
                        target=target, status=0 if i % 3 == 0 else 1, reason="seeded",
                        changed_at=now,
                    )
                )  # fmt: skip
                specs.append(
                    MonitorSpec(
                        id=mid, name=f"{tenant}-{name}", tenant=tenant, host="local", kind=kind,
                        target=target, interval_s=3600.0, timeout_s=1.0,
                    )
                )  # fmt: skip
    finally:
        ctx.close()
    return specs


def measure(client: TestClient, path: str, requests: int) -> dict[str, float]:
    walls: list[float] = []
    cpu0 = time.process_time()
    size = 0
    for _ in range(requests):
        t0 = time.perf_counter()
        resp = client.get(path)
        walls.append(time.perf_counter() - t0)
        resp.raise_for_status()
        size = len(resp.json())
    cpu = (time.process_time() - cpu0) / requests
    return {
        "rows": size,
        "p50_ms": percentile(walls, 50) * 1000,
        "p99_ms": percentile(walls, 99) * 1000,
        "cpu_ms": cpu * 1000,
    }


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(database_url=url, run_monitors=False, run_scheduler=False)
    specs = seed(settings, args.monitors, free_port())
    token = make_token(settings, "viewer")
    ctx = build_context(settings)
    engine = None
    try:
        if not args.no_engine:
            engine = MonitorEngine(lambda change: None)
            engine.start()
            engine.set_monitors(specs)
            ctx.monitors = engine
        app = create_app(settings, ctx=ctx)
        paths = {
            "limit=100": "/api/v1/monitors?limit=100",
            "limit=100 offset=N/2": f"/api/v1/monitors?limit=100&offset={args.monitors // 2}",
            "tenant=one": "/api/v1/monitors?tenant=t00001",
            "status=down limit=100": "/api/v1/monitors?status=down&limit=100",
            "whole list": "/api/v1/monitors",
        }
        results: dict[str, Any] = {}
        with TestClient(app, headers=bearer(token)) as client:
            for label, path in paths.items():
                client.get(path).raise_for_status()  # warm
                requests = args.requests if label != "whole list" else max(5, args.requests // 4)
                results[label] = measure(client, path, requests)
                r = results[label]
                print(
                    f"{label:24} rows {r['rows']:6}  p50 {r['p50_ms']:8.1f} ms  "
                    f"p99 {r['p99_ms']:8.1f} ms  cpu {r['cpu_ms']:8.1f} ms/request",
                    flush=True,
                )
        return results
    finally:
        if engine is not None:
            engine.stop()
        ctx.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--monitors", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    ap.add_argument("--no-engine", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.monitors < 1 or args.requests < 1:
        ap.error("--monitors and --requests must be >= 1")
    out: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    if args.db == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            out["results"] = run(f"sqlite:///{tmp}/cpdops.db", args)
    else:
        admin = os.environ.get("CPDOPS_TEST_PG_URL")
        if not admin:
            print("CPDOPS_TEST_PG_URL is not set", file=sys.stderr)
            sys.exit(2)
        with pg_database(admin) as url:
            out["results"] = run(url, args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
