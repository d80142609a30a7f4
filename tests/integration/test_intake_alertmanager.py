"""The Alertmanager intake end to end: a real ``cpdops serve`` on 127.0.0.1, and a real
Alertmanager (Debian package ``prometheus-alertmanager``) with cpdops as its webhook receiver.

The Alertmanager binary is installed with apt-get when missing and we are root; otherwise its
tests are skipped, unless ``CPDOPS_REQUIRE_ALERTMANAGER=1`` (CI), which makes that a failure.
Every process a test starts is stopped by a fixture, also when the test fails.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.settings import Settings
from tests.integration.promstack import AlertmanagerService, binary
from tests.integration.server import api_client

SECRET = "am-shared-secret-for-tests"
BINARY = "/usr/bin/prometheus-alertmanager"
REQUIRE_ENV = "CPDOPS_REQUIRE_ALERTMANAGER"
PATH = "/api/v1/intake/alertmanager"
DEADLINE_S = 60.0


def wait_until(what: str, check: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="PortalDown"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "cpdops",
        "groupLabels": {"alertname": "PortalDown"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }


def am_alert(status: str, fp: str, tenant: str = "") -> dict[str, Any]:
    """An alert of ``tenant``; without one, an alert with a ticket of its own."""
    labels = {"alertname": "PortalDown", **({"tenant": tenant} if tenant else {})}
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": f"{tenant or 'the'} portal down"},
        "startsAt": "2026-12-01T10:00:00Z",
        "endsAt": "2026-12-01T10:05:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": fp,
    }


@contextlib.contextmanager
def cpdops(db_url: str, secret: str | None = SECRET) -> Iterator[httpx.Client]:
    settings = Settings(
        database_url=db_url, run_monitors=False, run_scheduler=False, alertmanager_secret=secret
    )
    with api_client(settings) as api:
        yield api


def auth(secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# --------------------------------------------------------------------------- the API


def test_intake_disabled_without_secret(db_url: str) -> None:
    with cpdops(db_url, secret=None) as api:
        r = api.post(PATH, json=webhook(am_alert("firing", "f1")), headers=auth())
        assert r.status_code == 503
        assert "CPDOPS_ALERTMANAGER_SECRET" in r.json()["detail"]
        operation = api.get("/openapi.json").json()["paths"][PATH]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema["properties"]["alerts"]["items"]["properties"]["fingerprint"]
        assert {"version", "status", "alerts"} <= set(schema["required"])
        assert {"200", "401", "413", "422", "503"} <= set(operation["responses"])


def test_intake_auth_errors_and_limits(db_url: str) -> None:
    with cpdops(db_url) as api:
        good = webhook(am_alert("firing", "f1"))
        for headers in ({}, auth("wrong"), {"Authorization": SECRET}, {"Authorization": "Basic x"}):
            r = api.post(PATH, json=good, headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == "Bearer"
        assert api.get("/api/v1/incidents").json() == []

        bad = webhook({**am_alert("firing", "f1"), "status": "pending"})
        r = api.post(PATH, json=bad, headers=auth())
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "alerts", 0, "status"]
        r = api.post(PATH, json={**good, "alerts": "x"}, headers=auth())
        assert (r.status_code, r.json()["detail"][0]["loc"]) == (422, ["body", "alerts"])
        r = api.post(PATH, content=b"{not json", headers=auth())
        assert r.status_code == 422
        r = api.post(PATH, content=b"\xff\xfe", headers=auth())
        assert r.status_code == 422

        big = b'{"version": "4", "pad": "' + b"x" * (1024 * 1024) + b'"}'
        r = api.post(PATH, content=big, headers=auth())
        assert r.status_code == 413
        r = api.post(PATH, content=iter([big[:1000], big[1000:]]), headers=auth())  # chunked
        assert r.status_code == 413
        assert api.get("/api/v1/incidents").json() == []


def test_intake_mixed_body(db_url: str) -> None:
    with cpdops(db_url) as api:
        r = api.post(
            PATH, json=webhook(am_alert("firing", "f1"), am_alert("firing", "f2")), headers=auth()
        )
        assert r.status_code == 200
        first, second = r.json()["created"]
        r = api.post(
            PATH,
            json=webhook(
                am_alert("resolved", "f1"),
                am_alert("firing", "f2"),
                am_alert("firing", "f3", tenant="globex"),
                am_alert("firing", "f5", tenant="globex"),
                am_alert("resolved", "f4"),
            ),
            headers=auth(),
        )
        assert r.status_code == 200
        out = r.json()
        assert out["resolved"] == [first] and out["joined"] == [] and out["ignored"] == 2
        (globex,) = out["created"]
        shown = api.get(f"/api/v1/incidents/{first}").json()
        assert shown["status"] == "solution_provided"
        assert "resolved at 2026-12-01T10:05:00+00:00" in shown["events"][-1]["body"]
        assert api.get(f"/api/v1/incidents/{second}").json()["status"] == "new"
        shown = api.get(f"/api/v1/incidents/{globex}").json()
        assert (shown["tenant"], shown["subject"]) == ("globex", "globex portal down")
        # both alerts of globex on its incident: one PortalDown entry that counts them, its
        # data the latest alert's
        (entry,) = [e for e in shown["events"] if e["kind"] == "evidence"]
        assert entry["data"]["fingerprint"] == "f5" and entry["data"]["occurrences"]["count"] == 2
        metrics = api.get("/metrics").text
        assert (
            'cpdops_incidents_created_total{source="alertmanager",type="incident"} 3.0' in metrics
        )


# --------------------------------------------------------------------------- a real Alertmanager


@pytest.fixture(scope="session")
def alertmanager_bin() -> str:
    return binary(BINARY, "prometheus-alertmanager", require_env=REQUIRE_ENV)


class Alertmanager(AlertmanagerService):
    """A real Alertmanager delivering to ``receiver_url`` with the intake's secret, grouped by
    alert name and tenant, 1 s grouping and a 2 s repeat (repeated notifications on purpose)."""

    def __init__(self, binary: str, workdir: Path, receiver_url: str) -> None:
        super().__init__(binary, workdir)
        self.config = workdir / "alertmanager.yml"
        self.config.write_text(
            f"""
route:
  receiver: cpdops
  group_by: [alertname, tenant]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 2s
receivers:
  - name: cpdops
    webhook_configs:
      - url: {receiver_url}
        send_resolved: true
        http_config:
          authorization:
            credentials: {SECRET}
"""
        )

    def start(self) -> None:
        self.run(self.config, "--log.level=debug")


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.alertmanager
def test_real_alertmanager_alerts_become_tickets_and_resolve_them(
    db_url: str, alertmanager_bin: str, tmp_path: Path
) -> None:
    with cpdops(db_url) as api:
        am = Alertmanager(alertmanager_bin, tmp_path, f"{api.base_url}{PATH}")
        try:
            am.start()
            started = datetime.now(UTC) - timedelta(seconds=30)
            portal = {
                "labels": {"alertname": "PortalDown", "tenant": "acme", "severity": "critical"},
                "annotations": {
                    "summary": "acme portal answers 502",
                    "description": "https://acme.example/health answers 502 Bad Gateway",
                    "api_token": "must-not-be-stored",
                },
                "startsAt": iso(started),
                "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=probe_success",
            }
            sip = {
                "labels": {"alertname": "SipDown", "smartcpd_tenant": "globex", "severity": "mass"},
                "annotations": {"summary": "SIP trunk down"},  # subject: "globex: SIP trunk down"
                "startsAt": iso(started),
            }
            am.post_alerts(portal, sip)

            def tickets() -> list[dict[str, Any]]:
                rows: list[dict[str, Any]] = api.get("/api/v1/incidents").json()
                return sorted(rows, key=lambda t: str(t["tenant"]))

            wait_until("two tickets", lambda: len(tickets()) == 2)
            acme, globex = tickets()
            assert (acme["tenant"], acme["type"], acme["source"], acme["status"]) == (
                "acme", "incident", "alertmanager", "new",
            )  # fmt: skip
            assert acme["subject"] == "acme portal answers 502"  # already names the tenant
            assert (globex["tenant"], globex["type"]) == ("globex", "mass_incident")
            assert globex["subject"] == "globex: SIP trunk down"
            shown = api.get(f"/api/v1/incidents/{acme['number']}").json()
            entries = len(shown["events"])
            (evidence,) = [e for e in shown["events"] if e["kind"] == "evidence"]
            assert evidence["data"]["labels"]["alertname"] == "PortalDown"
            assert evidence["data"]["generatorURL"] == portal["generatorURL"]
            assert "api_token" not in evidence["data"]["annotations"]
            assert "must-not-be-stored" not in str(shown)

            # Several group_interval / repeat_interval deliveries later, and the same alerts
            # posted again (as Prometheus re-sends them): still these two tickets, unchanged.
            sent = am.notifications()
            am.post_alerts(portal, sip)
            wait_until("repeated notifications", lambda: am.notifications() >= sent + 4)
            assert [t["number"] for t in tickets()] == [acme["number"], globex["number"]]
            again = api.get(f"/api/v1/incidents/{acme['number']}").json()
            assert len(again["events"]) == entries

            # Resolve the portal alert: the same labels with endsAt now.
            ended = datetime.now(UTC)
            am.post_alerts({**portal, "endsAt": iso(ended)})

            def solved() -> bool:
                status = api.get(f"/api/v1/incidents/{acme['number']}").json()["status"]
                return bool(status == "solution_provided")

            wait_until("the acme ticket resolved", solved)
            shown = api.get(f"/api/v1/incidents/{acme['number']}").json()
            assert shown["source"] == "alertmanager"
            (change,) = [e for e in shown["events"] if e["kind"] == "solution"]
            assert change["author"] == "alertmanager"
            assert change["data"]["to"] == "solution_provided"
            assert "alert PortalDown (acme): firing since" in change["body"]
            assert f"resolved at {ended:%Y-%m-%d %H:%M:%S} UTC" in change["body"]
            assert api.get(f"/api/v1/incidents/{globex['number']}").json()["status"] == "new"

            # The resolved notification is repeated too: nothing more happens.
            sent = am.notifications()
            wait_until("more notifications", lambda: am.notifications() >= sent + 2)
            assert len(api.get(f"/api/v1/incidents/{acme['number']}").json()["events"]) == len(
                shown["events"]
            )

            am.post_alerts({**sip, "endsAt": iso(datetime.now(UTC))})
            wait_until(
                "the globex ticket resolved",
                lambda: (
                    api.get(f"/api/v1/incidents/{globex['number']}").json()["status"]
                    == "solution_provided"
                ),
            )
            assert len(tickets()) == 2
            assert am.notifications("failed") == 0, am.tail()
            metrics = api.get("/metrics").text
            for kind in ("incident", "mass_incident"):
                line = f'cpdops_incidents_created_total{{source="alertmanager",type="{kind}"}} 1.0'
                assert line in metrics
        finally:
            am.stop()


@pytest.mark.alertmanager
def test_real_alertmanager_five_tenants_one_mass_incident(
    db_url: str, alertmanager_bin: str, tmp_path: Path
) -> None:
    """Two alerts each of five tenants through a real Alertmanager (grouped by alertname and
    tenant, notifications repeated every 2 s): one mass incident with the five tenant
    incidents as children, however often delivered; all resolved → all solved."""
    tenants = [f"t{i}" for i in range(5)]
    with cpdops(db_url) as api:
        am = Alertmanager(alertmanager_bin, tmp_path, f"{api.base_url}{PATH}")
        try:
            am.start()
            started = datetime.now(UTC) - timedelta(seconds=10)
            alerts = [
                {
                    "labels": {"alertname": name, "tenant": t, "severity": "critical"},
                    "annotations": {"summary": f"{t}: {name}"},
                    "startsAt": iso(started),
                }
                for t in tenants
                for name in ("PortalDown", "SipDown")
            ]
            am.post_alerts(*alerts)

            def listed(type: str) -> list[dict[str, Any]]:
                rows: list[dict[str, Any]] = api.get(
                    "/api/v1/incidents", params={"type": type}
                ).json()
                return rows

            def linked() -> bool:
                masses = listed("mass_incident")
                if len(masses) != 1:
                    return False
                shown = api.get(f"/api/v1/incidents/{masses[0]['number']}").json()
                return len(shown["children"]) == len(tenants)

            wait_until("one mass incident with five children", linked)
            sent = am.notifications()
            am.post_alerts(*alerts)  # as Prometheus re-sends them
            wait_until("repeated notifications", lambda: am.notifications() >= sent + 10)
            (mass,) = listed("mass_incident")
            assert mass["source"] == "correlation"
            children = listed("incident")
            assert sorted(c["tenant"] for c in children) == tenants, "one incident per tenant"
            shown = api.get(f"/api/v1/incidents/{mass['number']}").json()
            assert sorted(c["tenant"] for c in shown["children"]) == tenants
            assert sum(e["kind"] == "child" for e in shown["events"]) == len(tenants)
            for child in children:
                events = api.get(f"/api/v1/incidents/{child['number']}").json()["events"]
                assert sum(e["kind"] == "evidence" for e in events) == 2, "each alert once"

            ended = datetime.now(UTC)
            am.post_alerts(*({**a, "endsAt": iso(ended)} for a in alerts))
            wait_until(
                "everything solved",
                lambda: all(
                    t["status"] == "solution_provided"
                    for t in [*listed("mass_incident"), *listed("incident")]
                ),
            )
            assert len(listed("mass_incident")) == 1 and len(listed("incident")) == 5
            assert am.notifications("failed") == 0, am.tail()
        finally:
            am.stop()
