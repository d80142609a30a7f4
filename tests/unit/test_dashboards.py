"""The Grafana dashboards as JSON models, and the Prometheus/Alertmanager files, checked
statically (the end-to-end test, tests/integration/test_prometheus_stack.py, runs every query
against a real Prometheus). promtool and amtool come from the Debian packages ``prometheus``
and ``prometheus-alertmanager``; without them those checks are skipped, unless
``CPDOPS_REQUIRE_PROMETHEUS=1`` (CI), which makes that a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.dashboards import (
    ALERTMANAGER_CONFIG,
    EXPORTED,
    GRAFANA,
    PROMETHEUS_DIR,
    RULES_DIR,
    SYNTHETIC,
    load_dashboards,
    metric_names,
    panel_queries,
    panels,
    parse_label_values,
    variable_queries,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
EXPECTED = {
    "cpdops-fleet.json": {"tenant", "host", "kind"},
    "cpdops-rollouts.json": {"rollout", "result"},
    "cpdops-postgresql.json": {"server", "datname"},
    "cpdops-incidents.json": {"type", "source", "tenant"},
}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CPDOPS_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"CPDOPS_REQUIRE_PROMETHEUS=1 but {name} is not installed", pytrace=False)
        pytest.skip(f"{name} is not installed (Debian prometheus / prometheus-alertmanager)")
    return found


def test_dashboards_have_grafanas_json_model_shape() -> None:
    models = load_dashboards()
    assert set(models) == set(EXPECTED)
    uids = [m["uid"] for m in models.values()]
    assert len(set(uids)) == len(uids)
    for name, model in models.items():
        assert model["uid"] == name.removesuffix(".json") and len(model["uid"]) <= 40
        assert model["title"] and isinstance(model["schemaVersion"], int)
        assert model["schemaVersion"] >= 36 and "cpdops" in model["tags"]
        assert {"from", "to"} <= set(model["time"])
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert EXPECTED[name] <= set(variables), name
        for var_name, query in variable_queries(model):
            var = variables[var_name]
            assert var["datasource"] == DATASOURCE
            assert var["multi"] and var["includeAll"] and var["allValue"] == ".*"
            parse_label_values(query)
        ids = [p["id"] for p in model["panels"]] + [
            p["id"] for row in model["panels"] for p in row.get("panels", [])
        ]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        for panel in panels(model):
            where = f"{name}: {panel['title']!r}"
            assert panel["type"] in {"stat", "timeseries", "table", "bargauge", "gauge"}, where
            assert panel["datasource"] == DATASOURCE, where
            grid = panel["gridPos"]
            assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
            assert panel["targets"], where
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(set(ref_ids)) == len(ref_ids), where
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE and target["expr"].strip(), where
        # a variable used by a query is defined on the dashboard
        for title, _ref, expr in panel_queries(model):
            for var_name in variables:
                expr = expr.replace(f"${var_name}", "")
            assert "$" not in expr.replace("$__rate_interval", "").replace("$__range", ""), (
                f"{name}: {title!r} uses an undefined variable: {expr}"
            )


def test_every_panel_queries_only_what_cpdops_exports() -> None:
    used: set[str] = set()
    for name, model in load_dashboards().items():
        exprs = [expr for _t, _r, expr in panel_queries(model)]
        exprs += [parse_label_values(q)[0] for _n, q in variable_queries(model)]
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"{name}: no metric in {expr!r}"
            unknown = names - EXPORTED
            assert not unknown, f"{name}: {sorted(unknown)} are not exported by cpdops ({expr})"
            used |= names
    # the SPEC §3.5 families are all charted somewhere
    for family in ("probe_success", "probe_duration_seconds", "monitor_status", "pg_up",
                   "pg_stat_activity_count", "pg_replication_lag_seconds", "pg_locks_count",
                   "pg_stat_activity_max_tx_duration", "pg_database_size_bytes",
                   "pg_database_wraparound_age", "cpdops_rollouts_total",
                   "cpdops_rollout_instances", "cpdops_rollout_duration_seconds_bucket",
                   "cpdops_rollback_duration_seconds_bucket", "cpdops_incidents_open",
                   "cpdops_incidents_created_total", "cpdops_detection_seconds_bucket",
                   "cpdops_incident_solution_seconds_bucket"):  # fmt: skip
        assert family in used, family


def test_metric_names_of_an_expression() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(x_bucket{a=~"$t",b="by (c)"}[$__range])))'
        " / on (host) group_left (tenant) (y offset 5m) > bool 1e9 or vector(0)"
    )
    assert metric_names(expr) == {"x_bucket", "y"}


def test_alert_rules_use_only_exported_metrics_and_name_the_ticket() -> None:
    groups: list[dict[str, Any]] = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 10
    names = {r["alert"] for r in rules}
    assert {"SmartcpdTenantDown", "PostgresDown", "PostgresWraparoundNear"} <= names
    for rule in rules:
        unknown = metric_names(rule["expr"]) - EXPORTED - SYNTHETIC
        assert not unknown, f"{rule['alert']}: {sorted(unknown)}"
        assert rule["labels"]["severity"] in {"warning", "critical", "mass"}
        assert rule["annotations"]["summary"]


def test_promtool_accepts_the_config_and_the_rules() -> None:
    promtool = tool("promtool")
    config = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS" in config.stdout + config.stderr
    rules = subprocess.run(
        [promtool, "check", "rules", *map(str, sorted(RULES_DIR.glob("*.yml")))],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_amtool_accepts_the_alertmanager_config() -> None:
    amtool = tool("amtool")
    result = subprocess.run(
        [amtool, "check-config", str(ALERTMANAGER_CONFIG)], capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    (cpdops,) = [r for r in config["receivers"] if r["name"] == config["route"]["receiver"]]
    (hook,) = cpdops["webhook_configs"]
    assert hook["url"].endswith("/api/v1/intake/alertmanager") and hook["send_resolved"]
    assert hook["http_config"]["authorization"]["credentials_file"]


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    provisioning = GRAFANA / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"].startswith("http://prometheus:")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "cpdops.yml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file" and provider["options"]["path"]
