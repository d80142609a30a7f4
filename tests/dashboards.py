"""The dashboards of ``dashboards/`` as data, for the static and the end-to-end tests.

* ``load_dashboards()``: every ``dashboards/grafana/*.json`` Grafana model.
* ``panel_queries(model)``: ``(panel title, refId, expr)`` of every target of every panel.
* ``variable_queries(model)``: ``(name, query)`` of the ``label_values(...)`` template variables.
* ``metric_names(expr)``: the metric names a PromQL expression selects.
* ``concrete(expr)``: the expression with Grafana's variables replaced as Grafana would
  ("All" is ``.*``), ready for Prometheus's HTTP API.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
GRAFANA = DASHBOARDS / "grafana"
PROMETHEUS_DIR = DASHBOARDS / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
ALERTMANAGER_CONFIG = DASHBOARDS / "alertmanager" / "alertmanager.yml"

# What cpdops exports (SPEC §3.5 and docs/monitors.md), sample names as /metrics writes them.
# The end-to-end test checks every one of them against a real scrape.
EXPORTED = frozenset(
    {
        "probe_success",
        "probe_duration_seconds",
        "probe_http_status_code",
        "monitor_status",
        "container_cpu_usage_ratio",
        "container_memory_usage_bytes",
        "container_memory_limit_bytes",
        "container_restarts",
        "pg_up",
        "pg_settings_max_connections",
        "pg_replication_is_replica",
        "pg_replication_lag_seconds",
        "pg_stat_activity_count",
        "pg_stat_activity_max_tx_duration",
        "pg_stat_activity_waiting_count",
        "pg_locks_count",
        "pg_database_wraparound_age",
        "pg_database_size_bytes",
        "pg_stat_database_deadlocks",
        "pg_stat_database_blks_hit",
        "pg_stat_database_blks_read",
        "pg_stat_database_blks_hit_ratio",
        "cpdops_rollouts_total",
        "cpdops_rollout_instances",
        "cpdops_rollout_duration_seconds_bucket",
        "cpdops_rollout_duration_seconds_sum",
        "cpdops_rollout_duration_seconds_count",
        "cpdops_rollback_duration_seconds_bucket",
        "cpdops_rollback_duration_seconds_sum",
        "cpdops_rollback_duration_seconds_count",
        "cpdops_incidents_open",
        "cpdops_host_up",
        "cpdops_incidents_created_total",
        "cpdops_incident_solution_seconds_bucket",
        "cpdops_incident_solution_seconds_sum",
        "cpdops_incident_solution_seconds_count",
        "cpdops_detection_seconds_bucket",
        "cpdops_detection_seconds_sum",
        "cpdops_detection_seconds_count",
    }
)
# Series Prometheus makes itself for every scrape target.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# Grafana's built-in interval variables, replaced as the test Prometheus (1 s scrapes) needs.
BUILTINS = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}

_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                       "and", "or", "unless", "offset", "inf", "nan"})  # fmt: skip
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()")


def load_dashboards() -> dict[str, dict[str, Any]]:
    """File name → Grafana dashboard model."""
    return {p.name: json.loads(p.read_text()) for p in sorted(GRAFANA.glob("*.json"))}


def panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too, rows themselves left out."""
    found = []
    for panel in model["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def panel_queries(model: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(p["title"], t["refId"], t["expr"]) for p in panels(model) for t in p["targets"]]


def variable_queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for var in model["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((var["name"], query))
    return out


def parse_label_values(query: str) -> tuple[str, str]:
    """``label_values(selector, label)`` → (selector, label)."""
    found = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)", query.strip())
    if not found:
        raise ValueError(f"not a label_values(selector, label) query: {query!r}")
    return found.group(1).strip(), found.group(2)


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (label matchers, ranges and grouping removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\w+", " ", text)
    return {n for n in _NAME.findall(text) if n.lower() not in _KEYWORDS}


def concrete(expr: str, variables: dict[str, str] | None = None) -> str:
    """``expr`` as Grafana sends it with every multi-value variable on "All" (``.*``)."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    for name, value in (variables or {}).items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return re.sub(r"\$\{?[a-zA-Z_]\w*\}?", ".*", expr)
