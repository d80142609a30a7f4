"""The attack of issue 12 (item 1), against a real ``cpdops serve``: an API token declares a
monitor whose target holds ``${CPDOPS_ALERTMANAGER_SECRET}`` and ``${CPDOPS_DATABASE_URL}``,
hoping the server resolves them from its environment and sends them to the attacker's URL —
and that the ticket of its DOWN shows them to every viewer.

A real HTTP listener on 127.0.0.1 records every request that reaches it and echoes what it got
in its (failing) answer, so the probes' evidence would carry whatever was sent. Beside the
attack run two monitors that are probed: one of the fleet file whose target reads a variable
the file declares (the path that must keep working), and one declared through the API with
literal credentials in its URL. Their probes arriving are the events the test waits on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from orchestrator.context import build_context
from orchestrator.db.models import DeclaredMonitor, Incident, IncidentEvent
from orchestrator.db.session import session_scope
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.settings import Settings
from tests.integration.fleet import wait_for
from tests.integration.http_fakes import HttpServer, Reply, Request, Service
from tests.integration.server import api_client

AM_SECRET = "am-S3CRET-4471"
DB_PASSWORD = "db-S3CRET-9912"
FLEET_TOKEN = "fleet-TOK-5521"
LITERAL_PASSWORD = "pw-LITERAL-77"
LITERAL_TOKEN = "tok-LITERAL-88"
SERVER_SECRETS = (AM_SECRET, DB_PASSWORD)
ATTACK = "/leak?am=${CPDOPS_ALERTMANAGER_SECRET}&db=${CPDOPS_DATABASE_URL}"


class Recorder(Service):
    """Records every request; answers 500 with what it received (query and Authorization)."""

    def handle(self, req: Request) -> Reply:
        seen = " ".join(v for values in req.query.values() for v in values)
        return Reply(
            500, {"status": "failing", "seen": seen, "auth": req.headers.get("authorization")}
        )

    def paths(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def everything(self) -> str:
        with self.lock:
            return "\n".join(
                f"{r.method} {r.path} {r.query} {r.headers} {r.body!r}" for r in self.requests
            )


@pytest.fixture
def listener() -> Any:
    recorder = Recorder()
    server = HttpServer(recorder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def fleet_text(base: str) -> str:
    return f"""
version: 1
environment: [LEAK_TEST_FLEET_TOKEN]
tenants:
  - {{slug: acme, name: ACME}}
monitors:
  declared:
    - name: fleet-probe
      tenant: acme
      kind: http
      target: "{base}/fleet?token=${{LEAK_TEST_FLEET_TOKEN}}"
      interval: 300ms
      timeout: 300ms
      failure_threshold: 1
"""


def legacy_row(base: str) -> DeclaredMonitor:
    """A monitor an API token declared before the API refused references."""
    return DeclaredMonitor(
        id="acme/legacy",
        name="legacy",
        tenant="acme",
        kind="http",
        target=f"{base}/legacy?am=${{CPDOPS_ALERTMANAGER_SECRET}}",
        interval_s=0.3,
        timeout_s=0.3,
        failure_threshold=1,
        options={},
        source="api",
        created_by="token:old",
    )


def test_an_api_monitor_cannot_read_the_server_environment_nor_show_credentials(
    tmp_path: Path, listener: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = listener.service
    assert isinstance(recorder, Recorder)
    # the server's environment, as the compose file gives it
    monkeypatch.setenv("CPDOPS_ALERTMANAGER_SECRET", AM_SECRET)
    monkeypatch.setenv(
        "CPDOPS_DATABASE_URL", f"postgresql+psycopg2://cpdops:{DB_PASSWORD}@db:5432/cpdops"
    )
    monkeypatch.setenv("LEAK_TEST_FLEET_TOKEN", FLEET_TOKEN)
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = build_context(Settings(database_url=db_url))
    with session_scope(ctx.factory) as s:
        apply_fleet(s, parse_fleet_text(fleet_text(listener.url)))
        s.add(legacy_row(listener.url))
    ctx.close()
    settings = Settings(
        database_url=db_url,
        alertmanager_secret=AM_SECRET,
        discovery_interval_s=3600,
        local_docker_url="unix:///nonexistent.sock",
    )
    with api_client(settings) as api:
        # the attack: refused, saying why, and nothing stored
        for target in (f"{listener.url}{ATTACK}", f"{listener.url}/leak?x=$${{HOME}}"):
            resp = api.post(
                "/api/v1/monitors",
                json={"name": "exfil", "tenant": "acme", "kind": "http", "target": target},
            )
            assert resp.status_code == 422, resp.text
            (problem,) = resp.json()["detail"]
            assert problem["loc"][-1] == "target"
            assert "fleet file" in problem["msg"] and "environment" in problem["msg"]
        assert "acme/exfil" not in {m["id"] for m in api.get("/api/v1/monitors").json()}

        # a monitor with literal credentials in its URL: accepted, probed, never shown
        control = (
            f"http://ops:{LITERAL_PASSWORD}@127.0.0.1:{listener.port}/control"
            f"?tenant=acme&token={LITERAL_TOKEN}"
        )
        resp = api.post(
            "/api/v1/monitors",
            json={
                "name": "control",
                "tenant": "acme",
                "kind": "http",
                "target": control,
                "interval": 0.3,
                "timeout": 0.3,
                "failure_threshold": 1,
            },
        )
        assert resp.status_code == 201, resp.text
        assert resp.json()["target"] == (
            f"http://ops:***@127.0.0.1:{listener.port}/control?tenant=acme&token=***"
        )

        # both probed monitors reach the listener, several times (the legacy one had as many
        # chances); the fleet file's declared variable is resolved
        wait_for(
            lambda: len(recorder.paths("/control")) >= 3 and len(recorder.paths("/fleet")) >= 3,
            timeout=30,
            what="the control and fleet monitors' probes",
        )
        assert recorder.paths("/fleet")[0].query["token"] == [FLEET_TOKEN]
        assert recorder.paths("/legacy") == [] and recorder.paths("/leak") == []
        reached = recorder.everything()
        assert not [s for s in SERVER_SECRETS if s in reached], reached

        # the ticket of their DOWNs: every monitor's evidence, no secret in any text
        def evidence() -> list[dict[str, Any]]:
            tickets = api.get("/api/v1/incidents", params={"tenant": "acme"}).json()
            if not tickets:
                return []
            detail = api.get(f"/api/v1/incidents/{tickets[0]['number']}").json()
            found = [e["data"] for e in detail["events"] if e["kind"] == "evidence"]
            monitors = {e.get("monitor") for e in found}
            return found if {"acme/control", "acme/fleet-probe"} <= monitors else []

        found = wait_for(evidence, timeout=30, what="the evidence of both monitors")
        control_evidence = next(e for e in found if e.get("monitor") == "acme/control")
        assert control_evidence["status_code"] == 500
        assert '"seen"' in control_evidence["body"]  # the echo is there, its secrets masked
        (ticket,) = api.get("/api/v1/incidents", params={"tenant": "acme"}).json()
        shown = (
            api.get("/api/v1/incidents").text
            + api.get(f"/api/v1/incidents/{ticket['number']}").text
        )
        with session_scope(build_context(settings, migrate=False).factory) as s:
            stored = json.dumps(
                [(i.subject, i.description) for i in s.scalars(select(Incident))]
                + [(e.body, e.data) for e in s.scalars(select(IncidentEvent))],
                ensure_ascii=False,
            )
    hidden = (*SERVER_SECRETS, FLEET_TOKEN, LITERAL_PASSWORD, LITERAL_TOKEN)
    assert not [s for s in hidden if s in shown], shown
    assert not [s for s in hidden if s in stored], stored
    assert "acme/control" in stored and "***" in stored


def test_the_legacy_monitor_is_skipped_not_resolved(
    tmp_path: Path, listener: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's view of an API row holding ``${`` (stored before the API refused them):
    no monitor, rather than one probing the server's secrets."""
    from orchestrator.declared_monitors import specs

    monkeypatch.setenv("CPDOPS_ALERTMANAGER_SECRET", AM_SECRET)
    ctx = build_context(Settings(database_url=f"sqlite:///{tmp_path / 'c.db'}"))
    try:
        with session_scope(ctx.factory) as s:
            s.add(legacy_row(listener.url))
        with ctx.factory() as s:
            found = specs(
                s,
                {"interval_s": 1, "timeout_s": 1, "failure_threshold": 1, "recovery_threshold": 1},
            )
        assert found == []
    finally:
        ctx.close()


CPDOPS = str(Path(sys.executable).parent / "cpdops")
DECLARING = """\
version: 1
environment: [ACME_DB_PASSWORD]
tenants:
  - slug: acme
    name: ACME
    db_dsn: postgresql://app:${ACME_DB_PASSWORD}@db:5432/acme
"""


def _apply(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    env = {**os.environ, "CPDOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    return subprocess.run(
        [CPDOPS, "apply", "-f", str(path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        # a reference to a name the file does not declare
        (
            DECLARING.replace("environment: [ACME_DB_PASSWORD]\n", "environment: []\n"),
            ":6: tenants[0].db_dsn",
            ("${ACME_DB_PASSWORD} is not declared", "environment"),
        ),
        # cpdops's own settings cannot be declared
        (
            DECLARING.replace("[ACME_DB_PASSWORD]", "[ACME_DB_PASSWORD, CPDOPS_DATABASE_URL]"),
            ":2: environment[1]",
            ("CPDOPS_DATABASE_URL is a setting of cpdops itself",),
        ),
    ],
)
def test_the_fleet_file_reads_only_the_names_it_declares(
    tmp_path: Path, text: str, where: str, words: tuple[str, ...]
) -> None:
    refused = _apply(tmp_path, text)
    assert refused.returncode == 2, refused.stderr
    assert where in refused.stderr and all(w in refused.stderr for w in words), refused.stderr
    assert refused.stdout == ""
    applied = _apply(tmp_path, DECLARING)  # nothing of the refused file was stored
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["created"] == [
        "tenant/acme",
        "config/monitors",
        "config/incidents",
    ]
