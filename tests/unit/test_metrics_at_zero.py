"""Every labelled counter and histogram of cpdops exists at 0 before its first event.

Prometheus takes a series' first sample as its start: a series born at 1 is never counted by
``increase()``/``rate()``, so the dashboards' "created in the range" / "per hour" / p95 panels
stayed at 0 after a real rollout or ticket (tests/integration/test_prometheus_stack.py shows it
with a real Prometheus). Here: a fresh app's /metrics text has every known label set at 0.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.change_writer import ChangeWriter
from orchestrator.context import build_context
from orchestrator.settings import Settings


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_fresh_app_exports_every_known_label_set_at_zero(tmp_path: Path) -> None:
    ctx = build_context(Settings(database_url=f"sqlite:///{tmp_path / 'cpdops.db'}"))
    try:
        found = samples(ctx.registry.render().decode())
    finally:
        ctx.close()
    expected = [
        *(
            ("cpdops_rollouts_total", (("result", r),))
            for r in ("succeeded", "failed", "aborted", "rolled_back")
        ),
        *(
            ("cpdops_incidents_created_total", (("source", src), ("type", t)))
            for t, src in [
                ("incident", "monitor"),
                ("mass_incident", "host"),
                ("mass_incident", "correlation"),
                ("mass_incident", "rollout"),
                ("incident", "alertmanager"),
                ("mass_incident", "alertmanager"),
                ("consultation", "email"),
                ("consultation", "telegram"),
            ]
        ),
        *(
            (f"cpdops_detection_seconds_{part}", (("type", t),))
            for t in ("incident", "mass_incident")
            for part in ("count", "sum")
        ),
        ("cpdops_detection_seconds_bucket", (("le", "+Inf"), ("type", "incident"))),
        ("cpdops_detection_seconds_bucket", (("le", "0.5"), ("type", "mass_incident"))),
        *(("cpdops_audit_entries_dropped_total", (("why", w),)) for w in ("queue_full", "error")),
    ]
    missing = [key for key in expected if found.get(key) != 0.0]
    assert not missing, missing


def test_the_monitor_change_writer_counts_drops_from_zero() -> None:
    registry = CollectorRegistry()
    writer = ChangeWriter(lambda change: None, registry=registry)
    try:
        for why in ("queue_full", "error"):
            value = registry.get_sample_value("cpdops_monitor_changes_dropped_total", {"why": why})
            assert value == 0.0, why
    finally:
        writer.stop()
