"""The alert rules' behaviour, with ``promtool test rules`` (Debian ``prometheus``) on
tests/promtool/cpdops_rules_test.yml: a Docker host that does not answer (``cpdops_host_up``
0, its monitors held at MAINTENANCE) fires ``SmartcpdDockerHostUnreachable`` after its
``for:``, a host that answers does not, and the availability, PostgreSQL and cpdops rules fire
as before. amtool (Debian ``prometheus-alertmanager``) shows where Alertmanager routes it.
Skipped without the tools, unless ``CPDOPS_REQUIRE_PROMETHEUS=1`` (CI)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.dashboards import ALERTMANAGER_CONFIG, RULES_DIR
from tests.unit.test_dashboards import tool

RULES_TEST = Path(__file__).resolve().parents[1] / "promtool" / "cpdops_rules_test.yml"
HOST_ALERT = "SmartcpdDockerHostUnreachable"


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    promtool = tool("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_the_rules_test_covers_every_shipped_rules_file_and_the_host_rule() -> None:
    tested = yaml.safe_load(RULES_TEST.read_text())
    files = {(RULES_TEST.parent / f).resolve() for f in tested["rule_files"]}
    assert files == {p.resolve() for p in RULES_DIR.glob("*.yml")}
    alerts = {
        case["alertname"] for test in tested["tests"] for case in test.get("alert_rule_test", [])
    }
    assert {HOST_ALERT, "SmartcpdTenantDown", "SmartcpdHostDown", "PostgresDown"} <= alerts
    (rule,) = [
        r
        for path in RULES_DIR.glob("*.yml")
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
        if r.get("alert") == HOST_ALERT
    ]
    assert "cpdops_host_up" in rule["expr"] and rule["for"]


def test_alertmanager_routes_the_host_alert_to_cpdops() -> None:
    amtool = tool("amtool")

    def route(*labels: str) -> str:
        result = subprocess.run(
            [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
             *labels],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout.strip()

    assert route(f"alertname={HOST_ALERT}", "host=d2", "severity=mass") == "cpdops"
    assert route("alertname=SmartcpdTenantDown", "tenant=acme", "host=d2") == "cpdops"
    assert route("alertname=CpdopsNotScraped", "receiver=fallback") == "fallback"
