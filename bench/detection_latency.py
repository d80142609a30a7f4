"""Failure → mass-incident ticket: cpdops against Prometheus + Alertmanager on the same failure.

    sudo python bench/detection_latency.py [--rounds 5] [--thresholds 3,1] [--interval 1]
        [--tenants 5] [--json FILE]

Five stand-in tenants (``smartcpd-fake:1``) run on one test dockerd (``tests/integration/
dockerd.py``); the fleet's mass-incident threshold is all five (``min_tenants: 5``,
``host_percent: 100``). Watching them at the same time:

* ``cpdops serve`` (uvicorn in this process, SQLite): the generated ``http`` and ``container``
  monitors every ``--interval`` s, DOWN after ``failure_threshold`` failed checks;
* Debian ``prometheus`` scraping Debian ``prometheus-blackbox-exporter`` (an ``http`` probe of
  each tenant's health URL, timeout 1 s) every ``--interval`` s, rules evaluated every
  ``--interval`` s: ``probe_success == 0`` with ``for: (threshold − 1) × interval`` (what
  matches cpdops's threshold: DOWN at the threshold-th failed check) and with ``for: 0s``;
* two Debian ``prometheus-alertmanager`` (clustering off, fresh state each round), grouping by
  ``alertname``: one with the defaults (``group_wait`` 30 s, ``group_interval`` 5 m), one with
  ``group_wait: 0s``; each delivers to a webhook receiver in this process.

Per round: everything healthy, a random wait within one interval (the failure's phase against
the checks is random), then all five containers are stopped at once (``docker stop -t 0`` from
five threads; the recorded instant is taken just before). Measured from that instant: cpdops's
mass incident ``created_at`` (from the API), and each (Alertmanager, rule) pair's first webhook
delivery. Then the containers are started again, the tickets closed, and the next round waits
until everything is UP/inactive again. One cpdops serve per ``--thresholds`` value; Prometheus
and Alertmanager start afresh each round (see run_rounds). SPEC §8 target: ≤ 2 intervals + 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from harness import LOCALHOST, Children, free_port, machine, median, wait_port

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests.integration is not an installed package
    sys.path.insert(0, str(ROOT))

from orchestrator.db.models import ConfigItem  # noqa: E402
from orchestrator.db.session import session_scope  # noqa: E402
from orchestrator.fleet.images import build_standin  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from tests.integration.dockerd import (  # noqa: E402
    DockerdError,
    DockerdFleet,
    DockerdHandle,
    remove_test_containers,
)
from tests.integration.fleet import Placed, make_context, place_tenants, wait_health  # noqa: E402
from tests.integration.server import bearer, make_token, running_server  # noqa: E402

PROMETHEUS = "/usr/bin/prometheus"
BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
ALERTMANAGERS = {"am-default": None, "am-wait0": "0s"}  # name → group_wait (None: default)


class Receiver:
    """A webhook receiver: the arrival time of every delivery, by Alertmanager and alertname."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: list[tuple[float, str, str, int, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.time()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                name = body.get("commonLabels", {}).get("alertname", "?")
                with receiver.lock:
                    receiver.deliveries.append(
                        (at, self.path.strip("/"), name, len(body["alerts"]), body["status"])
                    )
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first(self, since: float, am: str, alertname: str) -> tuple[float, int] | None:
        with self.lock:
            for at, path, name, n, status in self.deliveries:
                if at >= since and path == am and name == alertname and status == "firing":
                    return at, n
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_prometheus(
    tmp: Path,
    placed: list[Placed],
    bb_port: int,
    am_ports: list[int],
    interval: float,
    hold_for: float,
) -> Path:
    iv = f"{interval:g}s"
    rules = tmp / "rules.yml"
    rules.write_text(
        json.dumps(
            {
                "groups": [
                    {
                        "name": "tenants",
                        "interval": iv,
                        "rules": [
                            {
                                "alert": f"TenantDownFor{hold_for:g}s",
                                "expr": "probe_success == 0",
                                "for": f"{hold_for:g}s",
                            },
                            {"alert": "TenantDownFor0s", "expr": "probe_success == 0"},
                        ],
                    }
                ]
            }
        )
    )
    config = {
        "global": {"scrape_interval": iv, "scrape_timeout": iv, "evaluation_interval": iv},
        "rule_files": [str(rules)],
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [f"{LOCALHOST}:{p}" for p in am_ports]}]}
            ]
        },
        "scrape_configs": [
            {
                "job_name": "blackbox",
                "metrics_path": "/probe",
                "params": {"module": ["http_2xx"]},
                "static_configs": [
                    {"targets": [p.tenant.health_url], "labels": {"tenant": p.tenant.slug}}
                    for p in placed
                ],
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"source_labels": ["__param_target"], "target_label": "instance"},
                    {"target_label": "__address__", "replacement": f"{LOCALHOST}:{bb_port}"},
                ],
            }
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def write_blackbox(tmp: Path) -> Path:
    path = tmp / "blackbox.yml"
    path.write_text(
        json.dumps(
            {
                "modules": {
                    "http_2xx": {
                        "prober": "http",
                        "timeout": "1s",
                        "http": {"preferred_ip_protocol": "ip4"},
                    }
                }
            }
        )
    )
    return path


def start_alertmanager(
    children: Children, name: str, port: int, group_wait: str | None, receiver: int, tmp: Path
) -> Any:
    work = tmp / f"{name}-{time.monotonic_ns()}"
    work.mkdir()
    route: dict[str, Any] = {"receiver": "hook", "group_by": ["alertname"]}
    if group_wait is not None:
        route["group_wait"] = group_wait
    (work / "am.yml").write_text(
        json.dumps(
            {
                "route": route,
                "receivers": [
                    {
                        "name": "hook",
                        "webhook_configs": [
                            {
                                "url": f"http://{LOCALHOST}:{receiver}/{name}",
                                "send_resolved": False,
                            }
                        ],
                    }
                ],
            }
        )
    )
    child = children.start(
        name,
        [
            ALERTMANAGER,
            f"--config.file={work / 'am.yml'}",
            f"--storage.path={work / 'data'}",
            f"--web.listen-address={LOCALHOST}:{port}",
            "--cluster.listen-address=",
        ],
    )
    wait_port(port)
    return child


def start_prometheus(children: Children, config: Path, port: int, tmp: Path) -> Any:
    child = children.start(
        "prometheus",
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / f'tsdb-{time.monotonic_ns()}'}",
            f"--web.listen-address={LOCALHOST}:{port}",
        ],
    )
    wait_port(port, 30)
    return child


@contextlib.contextmanager
def daemon(wait_s: float) -> Iterator[DockerdHandle]:
    fleet = DockerdFleet(1)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            (handle,) = fleet.start()
            break
        except DockerdError as exc:
            if "another test session" not in str(exc) or time.monotonic() > deadline:
                raise
            print("waiting: a test session holds the test daemons", file=sys.stderr)
            time.sleep(10)
    try:
        yield handle
    finally:
        try:
            remove_test_containers(handle.client)
        finally:
            fleet.stop()


def until(what: str, check: Any, timeout_s: float, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout_s}s: {what}")


def prom_query(port: int, query: str) -> list[dict[str, Any]]:
    r = httpx.get(f"http://{LOCALHOST}:{port}/api/v1/query", params={"query": query}, timeout=5)
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def run_rounds(
    args: argparse.Namespace,
    handle: DockerdHandle,
    placed: list[Placed],
    db_url: str,
    threshold: int,
    prom: tuple[Path, int],
    am_ports: dict[str, int],
    receiver: Receiver,
    children: Children,
    tmp: Path,
    hold_for: float,
) -> list[dict[str, Any]]:
    prom_cfg, prom_port = prom
    settings = Settings(
        database_url=db_url,
        monitor_interval_s=args.interval,
        monitor_timeout_s=args.interval,
        monitor_failure_threshold=threshold,
        discovery_interval_s=60.0,
    )
    containers = [handle.client.containers.get(p.tenant.container) for p in placed]
    alertnames = [f"TenantDownFor{hold_for:g}s", "TenantDownFor0s"]
    rows = []
    token = make_token(settings, "operator", name=f"bench-threshold-{threshold}")
    with (
        running_server(settings) as base,
        httpx.Client(base_url=base, timeout=30, headers=bearer(token)) as api,
    ):
        for rnd in range(args.rounds):
            ams = {
                name: start_alertmanager(children, name, am_ports[name], wait, receiver.port, tmp)
                for name, wait in ALERTMANAGERS.items()
            }
            # A fresh Prometheus too: one that ran the last round would send its resolved
            # alerts to the new Alertmanagers, which then open the group at once, and this
            # round's alerts would wait for its group_interval (5 m by default).
            ams["prometheus"] = start_prometheus(children, prom_cfg, prom_port, tmp)
            until(
                "cpdops monitors UP",
                lambda: (
                    (m := api.get("/api/v1/monitors").json())
                    and len(m) == 2 * len(placed)
                    and all(x["status"] == "up" for x in m)
                ),
                60,
            )
            until(
                "Prometheus: every probe up, no alert",
                lambda: (
                    len(prom_query(prom_port, "probe_success == 1")) == len(placed)
                    and not prom_query(prom_port, "ALERTS")
                ),
                60,
            )
            until(
                "both Alertmanagers see Prometheus",
                lambda: all(
                    httpx.get(f"http://{LOCALHOST}:{p}/-/ready", timeout=2).status_code == 200
                    for p in am_ports.values()
                ),
                30,
            )
            time.sleep(random.uniform(0, args.interval))
            with ThreadPoolExecutor(len(containers)) as pool:
                failed_at = time.time()
                list(pool.map(lambda c: c.stop(timeout=0), containers))
            stopped_s = time.time() - failed_at

            def mass() -> dict[str, Any] | None:
                got = api.get(
                    "/api/v1/incidents", params={"type": "mass_incident", "status": "new"}
                ).json()
                return got[0] if got else None

            ticket = until("cpdops mass incident", mass, 30)
            at = datetime.fromisoformat(ticket["created_at"])
            created = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
            row: dict[str, Any] = {
                "threshold": threshold,
                "round": rnd,
                "stop_calls_s": round(stopped_s, 3),
                "cpdops_mass_s": round(created - failed_at, 3),
                "children": None,
            }
            for am in ALERTMANAGERS:
                for name in alertnames:
                    try:
                        first = until(
                            f"{am} {name} delivery",
                            lambda am=am, name=name, t=failed_at: receiver.first(t, am, name),
                            90,
                            0.05,
                        )
                    except RuntimeError as exc:  # recorded, with what Alertmanager holds
                        alerts = httpx.get(
                            f"http://{LOCALHOST}:{am_ports[am]}/api/v2/alerts", timeout=5
                        ).text
                        print(f"{exc}; {am} holds {alerts[:1500]}", file=sys.stderr)
                        row[f"{am}/{name}_s"] = None
                        continue
                    row[f"{am}/{name}_s"] = round(first[0] - failed_at, 3)
                    row[f"{am}/{name}_alerts"] = first[1]
            detail = api.get(f"/api/v1/incidents/{ticket['number']}").json()
            row["children"] = len(detail["children"])
            rows.append(row)
            print(json.dumps(row), flush=True)
            for c in containers:
                c.start()
            for p in placed:
                wait_health(p.tenant.health_url, timeout=30)
            r = api.post(
                f"/api/v1/incidents/{ticket['number']}/status",
                json={"status": "closed", "comment": "bench round over", "author": "bench"},
            )
            r.raise_for_status()
            for child in ams.values():
                children.stop(child)
        metrics = api.get("/metrics").text
    detection = [
        line
        for line in metrics.splitlines()
        if line.startswith("cpdops_detection_seconds_") and ("_sum" in line or "_count" in line)
    ]
    rows.append({"threshold": threshold, "detection_metric": detection})
    return rows


def summary(rows: list[dict[str, Any]], thresholds: list[int], interval: float) -> None:
    print(f"\nfailure → ticket/delivery, seconds (target ≤ {2 * interval + 1:g} s)")
    for th in thresholds:
        mine = [r for r in rows if r.get("threshold") == th and "round" in r]
        if not mine:
            continue
        print(f"-- cpdops failure_threshold={th} ({len(mine)} rounds)")
        pipeline = sorted(k for k in mine[0] if "/" in k and k.endswith("_s"))
        keys = ["cpdops_mass_s", *pipeline, "stop_calls_s"]
        for key in keys:
            values = [r[key] for r in mine if r[key] is not None]
            missed = sum(r[key] is None for r in mine)
            if not values:
                print(f"   {key:36} never delivered")
                continue
            print(
                f"   {key:36} median {median(values):6.2f}  max {max(values):6.2f}"
                + (f"  (not delivered within 90 s: {missed})" if missed else "")
            )
        for r in rows:
            if r.get("threshold") == th and "detection_metric" in r:
                print("   /metrics: " + "; ".join(r["detection_metric"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--thresholds", default="3,1", help="cpdops failure_threshold values")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--wait-lock", type=float, default=600)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--keep-logs", help="copy the children's logs to this directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark starts its own dockerd (tests/integration/dockerd.py)")
    for binary in (PROMETHEUS, BLACKBOX, ALERTMANAGER):
        if not Path(binary).exists():
            sys.exit(
                f"{binary} is missing (Debian prometheus, prometheus-blackbox-exporter, "
                "prometheus-alertmanager)"
            )
    thresholds = [int(t) for t in args.thresholds.split(",")]
    # The rule that matches cpdops's default threshold: DOWN at the 3rd failed check = 2
    # intervals after the first; a second rule with for: 0s matches threshold 1.
    hold_for = 2 * args.interval
    tmp = Path(tempfile.mkdtemp(prefix="cpdops-detect-"))
    rows: list[dict[str, Any]] = []
    receiver = Receiver()
    try:
        with daemon(args.wait_lock) as handle, Children() as children:
            logs_dir = children.tmp
            ctx = make_context(tmp, pull_policy="never")
            image = build_standin(handle.client, "1")
            names = [(f"t{i}", 0) for i in range(args.tenants)]
            placed = place_tenants(ctx, [handle], names, image)
            with session_scope(ctx.factory) as s:
                item = s.get_one(ConfigItem, "incidents")
                item.value = {
                    **item.value,
                    "mass_incident": {
                        "min_tenants": args.tenants,
                        "host_percent": 100,
                        "window": "5m",
                    },
                }
            db_url = str(ctx.settings.database_url)
            ctx.close()
            for p in placed:
                wait_health(p.tenant.health_url)
            bb_port, prom_port = free_port(), free_port()
            am_ports = {name: free_port() for name in ALERTMANAGERS}
            children.start(
                "blackbox",
                [
                    BLACKBOX,
                    f"--config.file={write_blackbox(tmp)}",
                    f"--web.listen-address={LOCALHOST}:{bb_port}",
                ],
            )
            wait_port(bb_port)
            prom_cfg = write_prometheus(
                tmp, placed, bb_port, list(am_ports.values()), args.interval, hold_for
            )
            for th in thresholds:
                rows += run_rounds(
                    args,
                    handle,
                    placed,
                    db_url,
                    th,
                    (prom_cfg, prom_port),
                    am_ports,
                    receiver,
                    children,
                    tmp,
                    hold_for,
                )
            if args.keep_logs:
                shutil.copytree(logs_dir, args.keep_logs, dirs_exist_ok=True)
    finally:
        receiver.close()
        shutil.rmtree(tmp, ignore_errors=True)
    summary(rows, thresholds, args.interval)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": machine(), "args": vars(args), "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
