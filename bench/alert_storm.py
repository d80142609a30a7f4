"""Alert storm (SPEC §8): 10,000 Alertmanager alerts of 500 tenants within 60 s, every body
delivered twice, against a real ``cpdops serve`` → one mass incident, ≤ 1 child per tenant, 0
duplicates.

    python bench/alert_storm.py [--db postgresql|sqlite] [--pg-url URL] [--alerts 10000]
        [--tenants 500] [--seconds 60] [--concurrency 32] [--seed 1] [--json FILE]

``cpdops serve`` runs as a child process (uvicorn, its own process group, stopped also on a
failure) on 127.0.0.1 with monitors off and the scheduler on (so ``check-recovery`` competes
for the lock), on a fresh PostgreSQL database (created on the server of ``--pg-url``, default
``$CPDOPS_TEST_PG_URL``, dropped afterwards) or a fresh SQLite file.

The alerts are grouped as Alertmanager groups them by ``[alertname, tenant]``: each tenant has
1–4 alert names with 1–15 alerts each (a few to tens of alerts per body). Each body is
scheduled at a random moment of the ``--seconds`` window; its second copy follows 0–2 s later
(a quarter of them at the same moment, so both copies are in flight together). At most
``--concurrency`` requests are in flight (Alertmanager's parallel notifications). Reported:
the store's figures afterwards (mass incidents, children per tenant, tenant incidents per
tenant, the alerts the evidence entries count minus the alerts = duplicates, evidence entries
per ticket (one per alert name), the mass incident's subject (naming every tenant), total
tickets), intake latency p50/p99/max per
request, how late the last answer came after the window, and alerts/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from harness import ROOT, free_port, machine, median, percentile

sys.path.insert(0, str(ROOT))  # the worktree's orchestrator/

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from orchestrator.db.migrate import upgrade
from orchestrator.db.models import AlertRecord, Incident, IncidentEvent, Tenant
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from orchestrator.settings import Settings
from tests.integration.server import bearer, make_token

SECRET = "alert-storm-secret"
PATH = "/api/v1/intake/alertmanager"
NAMES = ["PortalDown", "SipTrunkDown", "ApiErrors", "QueueBacklog"]


def storm(alerts: int, tenants: int, rng: random.Random, at: datetime) -> list[dict[str, Any]]:
    """The webhook bodies: ``alerts`` alerts of ``tenants`` tenants, one body per (tenant,
    alertname) group."""
    per_tenant = [alerts // tenants + (1 if i < alerts % tenants else 0) for i in range(tenants)]
    bodies = []
    for i, count in enumerate(per_tenant):
        tenant = f"tenant{i:03d}"
        names = NAMES[: rng.randint(1, min(4, count))]
        split = sorted(rng.sample(range(1, count), len(names) - 1)) if len(names) > 1 else []
        sizes = [b - a for a, b in zip([0, *split], [*split, count], strict=True)]
        for name, size in zip(names, sizes, strict=True):
            starts = at - timedelta(seconds=rng.uniform(0, 5))
            group = [
                {
                    "status": "firing",
                    "labels": {
                        "alertname": name,
                        "tenant": tenant,
                        "instance": f"{tenant}-{k}",
                        "severity": "critical",
                    },
                    "annotations": {"summary": f"{tenant}: {name} on instance {k}"},
                    "startsAt": starts.isoformat().replace("+00:00", "Z"),
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://127.0.0.1:9090/graph",
                    "fingerprint": f"{i:03d}{NAMES.index(name)}{k:04d}",
                }
                for k in range(size)
            ]
            bodies.append(
                {
                    "version": "4",
                    "groupKey": f'{{}}:{{alertname="{name}", tenant="{tenant}"}}',
                    "truncatedAlerts": 0,
                    "status": "firing",
                    "receiver": "cpdops",
                    "groupLabels": {"alertname": name, "tenant": tenant},
                    "commonLabels": {"alertname": name, "tenant": tenant},
                    "commonAnnotations": {},
                    "externalURL": "http://127.0.0.1:9093",
                    "alerts": group,
                }
            )
    return bodies


async def deliver(
    base: str, bodies: list[dict[str, Any]], seconds: float, concurrency: int, rng: random.Random
) -> dict[str, Any]:
    schedule: list[tuple[float, dict[str, Any]]] = []
    for body in bodies:
        at = rng.uniform(0, seconds)
        again = at if rng.random() < 0.25 else at + rng.uniform(0, 2.0)
        schedule += [(at, body), (min(again, seconds), body)]
    schedule.sort(key=lambda item: item[0])
    payloads = {id(b): json.dumps(b).encode() for b in bodies}
    latencies: list[float] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        start = time.monotonic()

        async def one(at: float, body: dict[str, Any]) -> None:
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            async with gate:
                sent = time.monotonic()
                try:
                    r = await client.post(PATH, content=payloads[id(body)], headers=headers)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
                latencies.append(time.monotonic() - sent)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")

        await asyncio.gather(*(one(at, body) for at, body in schedule))
        wall = time.monotonic() - start
    alerts = sum(len(b["alerts"]) for b in bodies)
    return {
        "requests": len(schedule),
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(wall, 2),
        "late_after_window_s": round(max(0.0, wall - seconds), 2),
        "latency_p50_ms": round(1000 * median(latencies), 1),
        "latency_p99_ms": round(1000 * percentile(latencies, 99), 1),
        "latency_max_ms": round(1000 * max(latencies), 1),
        "alerts_per_s": round(alerts / wall, 1),
        "deliveries_per_s": round(2 * alerts / wall, 1),
        "requests_per_s": round(len(schedule) / wall, 1),
    }


def store_figures(url: str, tenants: int, alerts: int) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            masses = c.execute(
                select(Incident.id, Incident.open_key, Incident.subject).where(
                    Incident.type == "mass_incident"
                )
            ).all()
            per_tenant = dict(
                c.execute(
                    select(Incident.tenant, func.count())
                    .where(Incident.type == "incident")
                    .group_by(Incident.tenant)
                ).all()
            )
            mass_ids = [m.id for m in masses]
            children = dict(
                c.execute(
                    select(Incident.tenant, func.count())
                    .where(Incident.parent_id.in_(mass_ids))
                    .group_by(Incident.tenant)
                ).all()
            )
            # one entry per ticket and alert name, counting its alerts (data.occurrences)
            entries = c.execute(
                select(IncidentEvent.incident_id, IncidentEvent.data).where(
                    IncidentEvent.kind == "evidence", IncidentEvent.author == "alertmanager"
                )
            ).all()
            total = c.execute(select(func.count()).select_from(Incident)).scalar_one()
            rows = c.execute(select(func.count()).select_from(AlertRecord)).scalar_one()
    finally:
        engine.dispose()
    evidence = sum(int((data.get("occurrences") or {}).get("count", 1)) for _, data in entries)
    per_ticket: dict[int, int] = {}
    for incident_id, _ in entries:
        per_ticket[incident_id] = per_ticket.get(incident_id, 0) + 1
    subject = f"Mass incident: {tenants} tenants DOWN"
    return {
        "mass_incidents": len(masses),
        "mass_keys": [m.open_key for m in masses],
        "mass_subjects": [m.subject for m in masses],
        "evidence_entries": len(entries),
        "max_evidence_entries_per_ticket": max(per_ticket.values(), default=0),
        "tenants_with_incident": len(per_tenant),
        "max_incidents_per_tenant": max(per_tenant.values(), default=0),
        "tenants_linked": len(children),
        "max_children_per_tenant": max(children.values(), default=0),
        "duplicate_tickets": sum(n - 1 for n in per_tenant.values()) + max(0, len(masses) - 1),
        "duplicate_evidence": evidence - alerts,
        "total_tickets": total,
        "alert_rows": rows,
        "ok": len(masses) == 1
        and len(children) == tenants
        and max(children.values(), default=0) <= 1
        and max(per_tenant.values(), default=0) == 1
        and evidence == alerts
        and max(per_ticket.values(), default=0) <= len(NAMES)
        and [m.subject for m in masses] == [subject]
        and rows == alerts,
    }


def register(url: str, tenants: int) -> str:
    """The storm's tenants in the registry (alerts of unknown tenants would go to one
    fleet-level ticket); returns ``url``."""
    engine = make_engine(url)
    try:
        upgrade(engine)
        with session_scope(make_session_factory(engine)) as s:
            s.add_all(Tenant(slug=f"tenant{i:03d}", name=f"Tenant {i}") for i in range(tenants))
    finally:
        engine.dispose()
    return url


@contextlib.contextmanager
def cpdops_serve(url: str, workdir: Path) -> Iterator[str]:
    """``cpdops serve`` on a free 127.0.0.1 port, in its own process group, its output in
    ``workdir/cpdops.log``; stopped (SIGTERM, then SIGKILL) also when the benchmark fails."""
    port = free_port()
    env = {
        **os.environ,
        "CPDOPS_DATABASE_URL": url,
        "CPDOPS_ALERTMANAGER_SECRET": SECRET,
        "CPDOPS_RUN_MONITORS": "false",
        "PYTHONPATH": str(ROOT),
    }
    argv = [sys.executable, "-c", "from orchestrator.cli import main; main()", "serve"]
    log = (workdir / "cpdops.log").open("ab")
    proc = subprocess.Popen(
        [*argv, "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "cpdops.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"cpdops serve did not start:\n{tail}")
            time.sleep(0.2)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


@contextlib.contextmanager
def database(kind: str, pg_url: str | None, workdir: Path) -> Iterator[str]:
    """A fresh SQLite file, or a fresh database on the PostgreSQL server (dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'cpdops.db'}"
        return
    admin = pg_url or os.environ.get("CPDOPS_TEST_PG_URL")
    if not admin:
        raise SystemExit("--db postgresql needs --pg-url or CPDOPS_TEST_PG_URL")
    name = f"cpdops_storm_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="cpdops-storm-"))
    try:
        with (
            database(args.db, args.pg_url, workdir) as url,
            cpdops_serve(register(url, args.tenants), workdir) as base,
        ):
            bodies = storm(args.alerts, args.tenants, rng, datetime.now(UTC))
            sizes = [len(b["alerts"]) for b in bodies]
            client = asyncio.run(deliver(base, bodies, args.seconds, args.concurrency, rng))
            figures = store_figures(url, args.tenants, args.alerts)
            listed = httpx.get(
                f"{base}/api/v1/incidents",
                params={"type": "mass_incident"},
                headers=bearer(make_token(Settings(database_url=url), "viewer", name="bench")),
                timeout=30,
            ).json()
            figures["mass_incidents_api"] = len(listed)
            figures["ok"] = figures["ok"] and client["errors"] == 0 and len(listed) == 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "db": args.db,
        "alerts": args.alerts,
        "tenants": args.tenants,
        "bodies": len(bodies),
        "alerts_per_body_median": median(sizes),
        "alerts_per_body_max": max(sizes),
        "window_s": args.seconds,
        "concurrency": args.concurrency,
        **client,
        **figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--pg-url", default=None)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args)
    text_out = json.dumps(result, indent=2)
    print(text_out)
    if args.json is not None:
        args.json.write_text(text_out + "\n")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
