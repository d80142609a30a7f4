"""Declared monitors end to end: the fleet file and the API declare them, a real ``cpdops
serve`` probes them at once (no restart), DELETE stops them; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.context import build_context
from orchestrator.db.models import DeclaredMonitor
from orchestrator.db.session import session_scope
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.settings import Settings
from tests.integration.fleet import free_port, wait_for
from tests.integration.server import api_client

INTERVAL = 0.3


class Health:
    """``GET /health`` answers 200 with a JSON body naming ``self.state``."""

    def __init__(self) -> None:
        self.state = "ok"
        self.delay = 0.0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(owner.delay)
                body = f'{{"status":"{owner.state}"}}'.encode()
                self.send_response(200 if self.path == "/health" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def health() -> Iterator[Health]:
    server = Health()
    try:
        yield server
    finally:
        server.close()


def test_http_latency_and_body_conditions(health: Health) -> None:
    import asyncio

    from monitors.probe import MonitorSpec, ProbeResult
    from monitors.probes.http import HttpProbe

    def check(**options: Any) -> ProbeResult:
        spec = MonitorSpec(
            id="m", name="m", tenant="t", host="h", kind="http", target=health.url,
            options=options,
        )  # fmt: skip

        async def run() -> ProbeResult:
            probe = HttpProbe()
            try:
                return await probe.check(spec)
            finally:
                await probe.aclose()

        return asyncio.run(run())

    assert check(max_latency_s=2, body_contains="ok").reason == "HTTP 200"
    health.delay = 0.3
    slow = check(max_latency_s=0.1)
    assert not slow.ok and slow.reason.startswith("HTTP 200; took 0.3")
    assert slow.reason.endswith("s (max_latency_s 0.1)")
    assert check(max_latency_s=2).ok
    missing = check(body_contains="nope", max_latency_s=0.1)
    assert missing.reason.startswith("HTTP 200; body does not contain 'nope'; took ")
    bad = check(tls_verify="no")
    assert not bad.ok and bad.reason.startswith("invalid configuration: option 'tls_verify'")


def fleet_text(health: Health, dead_port: int) -> str:
    return f"""\
version: 1
hosts:
  - {{name: h1, url: "unix:///nonexistent/cpdops-test.sock"}}
tenants:
  - slug: acme
    name: Acme
    host: h1
    db_dsn: "postgresql://mon:db-s3cret@127.0.0.1:{dead_port}/acme"
monitors:
  defaults: {{interval: {INTERVAL}s, timeout: {INTERVAL}s, failure_threshold: 2}}
  declared:
    - name: portal-port
      tenant: acme
      kind: tcp
      target: 127.0.0.1:{health.port}
"""


def by_id(api: httpx.Client) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in api.get("/api/v1/monitors").json()}


def test_declare_probe_and_delete_monitors_without_restart(
    db_url: str, tmp_path: Path, health: Health
) -> None:
    dead_port = free_port()
    ctx = build_context(Settings(database_url=db_url))
    with session_scope(ctx.factory) as s:
        report = apply_fleet(s, parse_fleet_text(fleet_text(health, dead_port)))
    assert "monitor/acme/portal-port" in report.created
    ctx.close()
    settings = Settings(
        database_url=db_url, discovery_interval_s=3600, local_docker_url="unix:///nonexistent.sock"
    )
    with api_client(settings) as api:
        # the fleet file's monitor runs with the fleet file's defaults; the tenant's database
        # monitor is generated; a DSN password is never shown
        wait_for(
            lambda: by_id(api).get("acme/portal-port", {}).get("status") == "up",
            timeout=20,
            what="the fleet-declared tcp monitor UP",
        )
        listed = by_id(api)
        assert listed["acme/portal-port"]["source"] == "fleet"
        assert listed["acme/db"]["source"] == "generated"
        assert listed["acme/db"]["target"] == f"postgresql://mon:***@127.0.0.1:{dead_port}/acme"
        assert "s3cret" not in api.get("/api/v1/monitors").text

        # declare through the API: applied to the running engine at once
        resp = api.post(
            "/api/v1/monitors",
            json={
                "name": "portal",
                "tenant": "acme",
                "kind": "http",
                "target": health.url,
                "interval": INTERVAL,
                "timeout": "300ms",
                "failure_threshold": 2,
                "options": {"body_contains": '"status":"ok"'},
            },
        )
        assert resp.status_code == 201, resp.text
        created = resp.json()
        assert created["id"] == "acme/portal" and created["source"] == "api"
        assert created["interval_s"] == INTERVAL and created["timeout_s"] == 0.3
        assert created["recovery_threshold"] is None
        wait_for(
            lambda: by_id(api).get("acme/portal", {}).get("status") == "up",
            timeout=20,
            what="the API-declared http monitor UP",
        )
        assert by_id(api)["acme/portal"]["reason"] == "HTTP 200"

        # the body condition fails: DOWN with the reason, an incident with the evidence
        health.state = "degraded"
        wait_for(
            lambda: by_id(api)["acme/portal"]["status"] == "down",
            timeout=20,
            what="acme/portal DOWN",
        )
        assert by_id(api)["acme/portal"]["reason"] == (
            'HTTP 200; body does not contain \'"status":"ok"\''
        )
        assert by_id(api)["acme/portal-port"]["status"] == "up"  # tcp still connects
        tickets = wait_for(
            lambda: api.get("/api/v1/incidents", params={"tenant": "acme"}).json(),
            timeout=20,
            what="acme's incident",
        )
        events = api.get(f"/api/v1/incidents/{tickets[0]['number']}").json()["events"]
        evidence = [e["data"] for e in events if e["kind"] == "evidence"]
        assert any(e.get("monitor") == "acme/portal" for e in evidence), evidence
        portal = next(e for e in evidence if e.get("monitor") == "acme/portal")
        assert portal["body"] == '{"status":"degraded"}' and portal["status_code"] == 200
        assert "s3cret" not in str(events)

        # bad input: clear errors that name the field, nothing stored
        def post(**changes: Any) -> httpx.Response:
            body = {"name": "x", "tenant": "acme", "kind": "http", "target": health.url}
            body.update(changes)
            return api.post("/api/v1/monitors", json={k: v for k, v in body.items() if v != ...})

        def where(res: httpx.Response) -> list[Any]:
            # the body is a union discriminated by kind: the loc names the kind, then the field
            assert res.status_code == 422, res.text
            loc: list[Any] = res.json()["detail"][0]["loc"]
            return loc

        bad = post(options={"body_contain": "ok"})
        assert where(bad) == ["body", "http", "options", "body_contain"]
        assert bad.json()["detail"][0]["msg"] == "Extra inputs are not permitted"
        assert where(post(target="ftp://127.0.0.1/")) == ["body", "http", "target"]
        bad = post(kind="smtp")
        assert where(bad) == ["body"] and "'kind'" in bad.json()["detail"][0]["msg"]
        bad = post(kind="sip", target="sip:127.0.0.1", options={"accept_codes": ["7xx"]})
        assert where(bad)[:4] == ["body", "sip", "options", "accept_codes"]
        assert where(post(interval=-1))[:3] == ["body", "http", "interval"]
        assert where(post(name="Bad Name")) == ["body", "http", "name"]
        assert where(post(target=...)) == ["body", "http", "target"]
        bad = post(tenant="ghost")
        assert bad.status_code == 404 and bad.json()["detail"].startswith("tenant: unknown")
        bad = post(host="h9")
        assert bad.status_code == 404 and bad.json()["detail"].startswith("host: unknown host")
        bad = post(name="portal")
        assert bad.status_code == 409 and "already declared" in bad.json()["detail"]
        bad = post(name="db", kind="tcp", target="127.0.0.1:1")
        assert bad.status_code == 409 and "generated" in bad.json()["detail"]
        assert "acme/x" not in by_id(api)

        # DELETE: a declared monitor stops at once; a generated one cannot be deleted
        engine = api.delete("/api/v1/monitors/acme/db")
        assert engine.status_code == 409 and "generated" in engine.json()["detail"]
        assert api.delete("/api/v1/monitors/acme/nope").status_code == 404
        gone = api.delete("/api/v1/monitors/acme/portal")
        assert gone.status_code == 204
        assert "acme/portal" not in by_id(api)
        assert api.get("/api/v1/monitors/acme/portal/history").status_code == 404
        assert api.delete("/api/v1/monitors/acme/portal").status_code == 404
        time.sleep(INTERVAL * 3)
        assert "acme/portal" not in by_id(api), "not re-created by a late state change"
        openapi = api.get("/openapi.json").json()
        assert "delete" in openapi["paths"]["/api/v1/monitors/{monitor_id}"]
        assert "post" in openapi["paths"]["/api/v1/monitors"]

    # stored in the database: a second process sees the declared monitors
    ctx = build_context(Settings(database_url=db_url))
    try:
        with ctx.factory() as s:
            rows = {r.id: r.source for r in s.query(DeclaredMonitor)}
        assert rows == {"acme/portal-port": "fleet"}
        # pruning with a file that no longer declares it removes the fleet's monitor
        text = fleet_text(health, dead_port).split("  declared:")[0]
        with session_scope(ctx.factory) as s:
            report = apply_fleet(s, parse_fleet_text(text), prune=True)
        assert report.removed == ["monitor/acme/portal-port"]
        with ctx.factory() as s:
            assert s.query(DeclaredMonitor).count() == 0
    finally:
        ctx.close()
