"""End to end: the ticket of a failing stand-in keeps the evidence, secrets redacted, and the
detection time is a real ``cpdops_detection_seconds`` observation on ``/metrics``.

A real stand-in container on a test dockerd prints secrets to its log at start and answers
``/health`` with 500 (``SMARTCPD_FAIL=health``); ``cpdops serve`` monitors it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from orchestrator.db.models import Incident, IncidentEvent, Notifier
from orchestrator.db.session import session_scope
from orchestrator.settings import Settings
from tests.integration.dockerd import remove_test_containers
from tests.integration.fleet import make_context, place_tenants, wait_for
from tests.integration.server import bearer, make_token, running_server

CPD_TOKEN = "cpd_0123456789ab_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcd"
HOOK_SECRET = "whsec-bare-7781"  # a notifier's secret, through ${EVIDENCE_HOOK_SECRET}
AM_SECRET = "am-bare-6620"  # cpdops's own CPDOPS_ALERTMANAGER_SECRET
SECRETS = (
    "Sup3rS3cret",
    "tok-9f8e7d6c",
    "abcdefgh12345678",
    "hunter2-XYZ",
    "pa55-QRS",
    "cred-LMN",
    "xml-PW-3",
    CPD_TOKEN,
    HOOK_SECRET,
    AM_SECRET,
)
LOG_LINE = (
    "boot: db=postgresql://app:Sup3rS3cret@db:5432/acme API_TOKEN=tok-9f8e7d6c "
    "Authorization: Bearer abcdefgh12345678 "
    # the forms issue 12 found unredacted, and secrets cpdops knows printed bare
    "DB_PASS=hunter2-XYZ --password hunter2-XYZ pass=pa55-QRS credentials=cred-LMN "
    f"<password>xml-PW-3</password> client {CPD_TOKEN} hook {HOOK_SECRET} am {AM_SECRET}"
)


def test_failing_instance_ticket_keeps_redacted_evidence_and_detection_time(
    tmp_path: Path,
    docker_hosts: list[Any],
    standin_images: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = docker_hosts[:1]
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    monkeypatch.setenv("EVIDENCE_HOOK_SECRET", HOOK_SECRET)
    ctx = make_context(tmp_path, db_url)
    try:
        with session_scope(ctx.factory) as s:  # as `cpdops apply` stores a webhook notifier
            s.add(
                Notifier(
                    name="hook",
                    kind="webhook",
                    settings={
                        "url": "http://127.0.0.1:1/hook",
                        "secret": "${EVIDENCE_HOOK_SECRET}",
                    },
                )
            )
        place_tenants(
            ctx,
            hosts,
            [("acme", 0)],
            standin_images["1"],
            env={"acme": {"SMARTCPD_FAIL": "health", "SMARTCPD_LOG_LINE": LOG_LINE}},
        )
        ctx.close()
        settings = Settings(
            database_url=db_url,
            monitor_interval_s=1.0,
            monitor_timeout_s=1.0,
            monitor_failure_threshold=2,
            discovery_interval_s=1.0,
            alertmanager_secret=AM_SECRET,
        )
        with (
            running_server(settings) as base,
            httpx.Client(
                base_url=base, timeout=30, headers=bearer(make_token(settings, "viewer"))
            ) as api,
        ):
            (ticket,) = wait_for(
                lambda: api.get("/api/v1/incidents", params={"tenant": "acme"}).json(),
                timeout=30,
                what="acme's incident",
            )

            def evidence() -> list[dict[str, Any]]:
                detail = api.get(f"/api/v1/incidents/{ticket['number']}").json()
                return [e["data"] for e in detail["events"] if e["kind"] == "evidence"]

            found = wait_for(
                lambda: [e for e in evidence() if "containers" in e] and evidence(),
                timeout=30,
                what="the container evidence",
            )
            # the check that turned the monitor DOWN: HTTP status and the body's start
            (probe,) = [e for e in found if e.get("monitor") == "acme/app@d1/http"]
            assert probe["status_code"] == 500
            assert '"status": "failing"' in probe["body"]
            # the container: its state and the log excerpt, secrets replaced
            (containers,) = [e for e in found if "containers" in e]
            assert containers["host"] == "d1" and "error" not in containers
            (state,) = containers["containers"]
            assert state["name"] == "smartcpd-acme" and state["status"] == "running"
            assert state["image"] == standin_images["1"]
            assert state["oom_killed"] is False and state["exit_code"] == 0
            logs = state["logs"]
            assert "postgresql://app:***@db:5432/acme" in logs
            assert "API_TOKEN=***" in logs and "Authorization: Bearer ***" in logs
            assert "GET /health HTTP/1.1" in logs  # the probes' requests, answered 500
            assert "DB_PASS=*** --password ***" in logs and "pass=***" in logs
            assert "credentials=***" in logs and "<password>***</password>" in logs
            assert "client cpd_***" in logs and "hook *** am ***" in logs
            shown = api.get(f"/api/v1/incidents/{ticket['number']}").text
            assert not [s for s in SECRETS if s in shown], shown
            engine = create_engine(db_url)
            with Session(engine) as s:  # and as stored
                stored = json.dumps(
                    [(i.subject, i.description) for i in s.scalars(select(Incident))]
                    + [(e.body, e.data) for e in s.scalars(select(IncidentEvent))]
                )
            engine.dispose()
            assert "<password>***</password>" in stored
            assert not [s for s in SECRETS if s in stored], stored

            # detection: one observation, from the first failing check of the streak (one
            # interval before the check that made it DOWN), not from the DOWN itself
            text = api.get("/metrics").text
            count = re.search(
                r'^cpdops_detection_seconds_count\{type="incident"\} (\S+)$', text, re.M
            )
            total = re.search(
                r'^cpdops_detection_seconds_sum\{type="incident"\} (\S+)$', text, re.M
            )
            assert count is not None and total is not None, text
            assert float(count.group(1)) == 1.0
            assert float(total.group(1)) >= 0.5
    finally:
        for h in hosts:
            remove_test_containers(h.client)
