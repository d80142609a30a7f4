"""The Alertmanager intake end to end: a real ``cpdops serve`` on 127.0.0.1, and a real
Alertmanager (Debian package ``prometheus-alertmanager``) with cpdops as its webhook receiver.

The Alertmanager binary is installed with apt-get when missing and we are root; otherwise its
tests are skipped, unless ``CPDOPS_REQUIRE_ALERTMANAGER=1`` (CI), which makes that a failure.
Every process a test starts is stopped by a fixture, also when the test fails.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.db.migrate import upgrade
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.incidents.alertmanager import printable
from orchestrator.settings import Settings
from tests.integration.promstack import AlertmanagerService, binary
from tests.integration.server import api_client
from tests.integration.stored import assert_not_stored

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


TENANTS = ("acme", "globex", *(f"t{i}" for i in range(5)))
# Tenant labels of no registered tenant: a made-up slug, a path, a Cyrillic look-alike (с1:
# U+0441), a header injection.
MADE_UP = ("nosuch", "../../etc", "\u04411", "acme\r\nX-Injected: yes")


def fleet_yaml(hold: str = "0s", extra: str = "") -> str:
    tenants = "".join(f"  - {{slug: {t}, name: {t.upper()}}}\n" for t in TENANTS)
    return f"version: 1\ntenants:\n{tenants}incidents:\n  recovery_hold: {hold}\n{extra}"


def apply(db_url: str, text: str) -> None:
    """``cpdops apply`` of ``text`` (the fleet file's own parser and store)."""
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        with session_scope(make_session_factory(engine)) as s:
            apply_fleet(s, parse_fleet_text(text))
    finally:
        engine.dispose()


@contextlib.contextmanager
def cpdops(
    db_url: str, secret: str | None = SECRET, fleet: str | None = None, **settings: Any
) -> Iterator[httpx.Client]:
    """A ``cpdops serve`` whose registry has ``TENANTS`` (``fleet``: that fleet file), with a
    recovery hold of 0 s unless the fleet file says otherwise."""
    apply(db_url, fleet or fleet_yaml())
    options: dict[str, Any] = {"run_monitors": False, "run_scheduler": False, **settings}
    with api_client(Settings(database_url=db_url, alertmanager_secret=secret, **options)) as api:
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


# --------------------------------------------------------------------------- unknown tenants

UNKNOWN_SUBJECT = "Alertmanager: alerts for tenants not in the registry"


def listed(api: httpx.Client, **params: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = api.get("/api/v1/incidents", params=params).json()
    return rows


def made_up_alerts(status: str = "firing") -> list[dict[str, Any]]:
    return [
        {
            **am_alert(status, f"m{i}"),
            "labels": {"alertname": "Down", "tenant": label},
            "annotations": {"summary": "Портал недоступен\r\nportal down"},
        }
        for i, label in enumerate(MADE_UP)
    ]


def assert_one_fleet_ticket(api: httpx.Client, real: str) -> dict[str, Any]:
    """Exactly one ticket for the made-up tenants, none of theirs, ``real``'s own ticket."""
    rows = listed(api)
    fleet = [r for r in rows if r["subject"] == UNKNOWN_SUBJECT]
    assert len(fleet) == 1, rows
    assert fleet[0]["tenant"] is None and fleet[0]["type"] == "incident"
    assert sorted(str(r["tenant"]) for r in rows) == sorted(["None", real]), rows
    for row in rows:
        assert "\r" not in row["subject"] and "\n" not in row["subject"]
    shown = api.get(f"/api/v1/incidents/{fleet[0]['number']}").json()
    evidence = [e["data"] for e in shown["events"] if e["kind"] == "evidence"]
    assert sorted(e["unknown_tenant"] for e in evidence) == sorted(printable(t) for t in MADE_UP)
    for data in evidence:  # the raw label is not kept, its escaped form is
        assert data["labels"]["tenant"] == data["unknown_tenant"]
        assert data["unknown_tenant"].isascii() and data["unknown_tenant"].isprintable()
    return shown


def test_made_up_tenants_direct_posts_one_fleet_level_ticket(db_url: str) -> None:
    with cpdops(db_url) as api:
        real = am_alert("firing", "r1", tenant="acme")
        r = api.post(PATH, json=webhook(*made_up_alerts(), real), headers=auth())
        assert r.status_code == 200, r.text
        assert len(r.json()["created"]) == 2 and r.json()["refused"] == []
        for alert in made_up_alerts():  # one body each, and again: still the one ticket
            for _ in range(2):
                assert api.post(PATH, json=webhook(alert), headers=auth()).status_code == 200
        shown = assert_one_fleet_ticket(api, real="acme")
        (acme,) = listed(api, tenant="acme")
        assert acme["subject"] == "acme portal down" and acme["status"] == "new"

        # Resolved (hold 0 s): both solved, the fleet-level ticket by the same rule.
        r = api.post(
            PATH,
            json=webhook(*made_up_alerts("resolved"), am_alert("resolved", "r1", tenant="acme")),
            headers=auth(),
        )
        assert sorted(r.json()["resolved"]) == sorted([shown["number"], acme["number"]])


def test_made_up_tenants_refused_when_configured(db_url: str) -> None:
    with cpdops(db_url, alertmanager_unknown_tenants="refuse") as api:
        r = api.post(
            PATH, json=webhook(*made_up_alerts(), am_alert("firing", "r1", "acme")), headers=auth()
        )
        assert r.status_code == 200, r.text
        refused = r.json()["refused"]
        assert [x["tenant"] for x in refused] == [printable(t) for t in MADE_UP]
        assert {x["reason"] for x in refused} == {"tenant not in the registry"}
        assert [t["tenant"] for t in listed(api)] == ["acme"], "only the real tenant's ticket"


@pytest.mark.alertmanager
def test_real_alertmanager_made_up_tenants_one_fleet_level_ticket(
    db_url: str, alertmanager_bin: str, tmp_path: Path
) -> None:
    """A real Alertmanager, grouping by tenant (a delivery per made-up tenant, repeated every
    2 s): one fleet-level ticket, no ticket per made-up tenant, the real tenant's unaffected."""
    with cpdops(db_url) as api:
        am = Alertmanager(alertmanager_bin, tmp_path, f"{api.base_url}{PATH}")
        try:
            am.start()
            started = iso(datetime.now(UTC) - timedelta(seconds=10))
            alerts = [
                {"labels": {"alertname": "Down", "tenant": label}, "startsAt": started}
                for label in MADE_UP
            ]
            real = {"labels": {"alertname": "Down", "tenant": "globex"}, "startsAt": started}
            am.post_alerts(*alerts, real)

            def evidence() -> int:
                rows = [r for r in listed(api) if r["subject"] == UNKNOWN_SUBJECT]
                if len(rows) != 1:
                    return 0
                shown = api.get(f"/api/v1/incidents/{rows[0]['number']}").json()
                return sum(e["kind"] == "evidence" for e in shown["events"])

            wait_until("the four made-up tenants on one ticket", lambda: evidence() == 4)
            wait_until("globex's ticket", lambda: len(listed(api, tenant="globex")) == 1)
            sent = am.notifications()
            wait_until("repeated notifications", lambda: am.notifications() >= sent + 5)
            assert_one_fleet_ticket(api, real="globex")
            assert evidence() == 4
            assert am.notifications("failed") == 0, am.tail()
        finally:
            am.stop()


# --------------------------------------------------------------------------- recovery hold


@pytest.mark.alertmanager
def test_real_alertmanager_resolved_waits_for_the_recovery_hold(
    db_url: str, alertmanager_bin: str, tmp_path: Path
) -> None:
    """The tenant's monitor UP all along; its alert resolved through a real Alertmanager: the
    ticket is not «Решение предоставлено» before ``recovery_hold`` (20 s) has passed since the
    resolution, and is after it (the periodic check, the same rule as the intake's)."""
    hold = 20.0
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        declared = (
            "monitors:\n  declared:\n"
            f"    - {{name: tcp, tenant: acme, kind: tcp, target: '127.0.0.1:{port}', "
            "interval: 1s, timeout: 1s}\n"
        )
        with cpdops(
            db_url,
            fleet=fleet_yaml(f"{hold:g}s", declared),
            run_monitors=True,
            run_scheduler=True,
            recovery_check_interval_s=1.0,
            host_check_s=3600.0,
            local_docker_url="unix:///nonexistent-cpdops-h2-intake.sock",
        ) as api:
            am = Alertmanager(alertmanager_bin, tmp_path, f"{api.base_url}{PATH}")
            try:
                am.start()

                def monitor_up() -> bool:
                    rows = api.get("/api/v1/monitors").json()
                    return any(m["id"] == "acme/tcp" and m["status"] == "up" for m in rows)

                wait_until("acme's monitor UP", monitor_up)
                portal = {
                    "labels": {"alertname": "PortalDown", "tenant": "acme"},
                    "startsAt": iso(datetime.now(UTC) - timedelta(seconds=5)),
                }
                am.post_alerts(portal)
                wait_until("acme's ticket", lambda: len(listed(api, tenant="acme")) == 1)
                (ticket,) = listed(api, tenant="acme")
                number = ticket["number"]
                am.post_alerts({**portal, "endsAt": iso(datetime.now(UTC))})

                def recovered() -> dict[str, Any] | None:
                    events = api.get(f"/api/v1/incidents/{number}").json()["events"]
                    return next((e for e in events if e["kind"] == "recovered"), None)

                wait_until("the resolved delivery", lambda: recovered() is not None)
                entry = recovered()
                assert entry is not None
                due = datetime.fromisoformat(entry["data"]["up_since"]) + timedelta(seconds=hold)
                early: list[str] = []

                def solved() -> bool:
                    status = api.get(f"/api/v1/incidents/{number}").json()["status"]
                    if datetime.now(UTC) < due - timedelta(seconds=1):
                        early.append(status)
                    return bool(status == "solution_provided")

                wait_until("the solution after the hold", solved, deadline_s=hold + 90)
                assert early and set(early) == {"new"}, early
                shown = api.get(f"/api/v1/incidents/{number}").json()
                (solution,) = [e for e in shown["events"] if e["kind"] == "solution"]
                assert datetime.fromisoformat(solution["at"]) >= due, (solution["at"], due)
                assert "all Alertmanager alerts resolved for ≥ 20 s" in solution["body"]
                assert am.notifications("failed") == 0, am.tail()
            finally:
                am.stop()


# --------------------------------------------------------------------------- known secrets

DB_PASSWORD = "Zq81-tenant-db-pw"
NOTIFIER_SECRET = "hook-s3cret-XYZ"
LEAKED = (DB_PASSWORD, NOTIFIER_SECRET, SECRET)
SECRETS_FLEET = fleet_yaml(
    extra=(
        "notifiers:\n"
        "  - {name: hook, kind: webhook, url: 'http://127.0.0.1:9/hook', "
        f"secret: '{NOTIFIER_SECRET}'}}\n"
    )
).replace(
    "  - {slug: acme, name: ACME}\n",
    f"  - {{slug: acme, name: ACME, db_dsn: 'postgresql://app:{DB_PASSWORD}@127.0.0.1/acme'}}\n",
)


def leaky(status: str, fp: str, tenant: str) -> dict[str, Any]:
    """An alert whose labels and annotations hold the three known secrets bare."""
    alert = am_alert(status, fp, tenant=tenant)
    alert["labels"] |= {
        "alertname": f"PortalDown {DB_PASSWORD}",
        "instance": NOTIFIER_SECRET,
        "host": f"h-{SECRET}",
        "db_server": DB_PASSWORD,
    }
    alert["annotations"] = {
        "summary": f"{tenant or 'the'} portal down: login app/{DB_PASSWORD} refused",
        "description": f"signed {NOTIFIER_SECRET}, intake {SECRET}",
    }
    return alert


def test_known_secrets_in_alerts_never_reach_the_tickets(db_url: str) -> None:
    """A registered tenant's DB password, a notifier's secret and cpdops's own intake secret,
    bare in an alert's labels and annotations (a tenant's alert, an alert with a ticket of its
    own, an unknown tenant's; fired, then resolved): none of them in the tickets through the
    API, nor in the database rows of the incidents, their events and the alerts."""
    assert f"db_dsn: 'postgresql://app:{DB_PASSWORD}@" in SECRETS_FLEET
    with cpdops(db_url, fleet=SECRETS_FLEET) as api:
        alerts = [("k1", "acme"), ("k2", ""), ("k3", f"x{NOTIFIER_SECRET}")]
        for status in ("firing", "resolved"):
            body = webhook(*(leaky(status, fp, tenant) for fp, tenant in alerts))
            r = api.post(PATH, json=body, headers=auth())
            assert r.status_code == 200, r.text
            assert not any(s in r.text for s in LEAKED), r.text
        rows = listed(api)
        assert len(rows) == 3, rows
        shown = [api.get(f"/api/v1/incidents/{row['number']}").text for row in rows]
        for text in (api.get("/api/v1/incidents").text, *shown):
            for secret in LEAKED:
                assert secret not in text, (secret, text)
        assert all("***" in text for text in shown), shown
        assert any('"recovered"' in text for text in shown), shown

    assert_not_stored(db_url, ("incidents", "incident_events", "alerts"), LEAKED)
