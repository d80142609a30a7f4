"""The pure parts of ``orchestrator.monitor_changes``: the retention cutoff, status names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator import monitor_changes
from orchestrator.settings import Settings


def test_cutoff_is_the_retention_before_now() -> None:
    now = datetime(2026, 12, 31, 12, 0, tzinfo=UTC)
    assert monitor_changes.cutoff(now, 30) == datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert monitor_changes.cutoff(now, 1.5) == datetime(2026, 12, 30, 0, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        monitor_changes.cutoff(now, 0)


def test_status_names() -> None:
    assert [monitor_changes.status_name(v) for v in range(4)] == [
        "down",
        "up",
        "pending",
        "maintenance",
    ]
    assert monitor_changes.status_name(9) == "9"


def test_retention_setting_default_and_lower_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().monitor_changes_retention_days == 30
    monkeypatch.setenv("CPDOPS_MONITOR_CHANGES_RETENTION_DAYS", "0.5")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Settings()
    monkeypatch.setenv("CPDOPS_MONITOR_CHANGES_RETENTION_DAYS", "90")
    assert Settings().monitor_changes_retention_days == 90
