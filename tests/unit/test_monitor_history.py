from datetime import UTC, datetime

from monitors.history import MinuteAggregator, minute_of, uptime
from monitors.probe import MonitorSpec, ProbeResult
from monitors.state import MonitorStatus

SPEC = MonitorSpec(id="m", name="m", tenant="t", host="h", kind="http", target="http://x")


def result(ok: bool, second: int, duration: float = 0.1) -> ProbeResult:
    at = datetime(2026, 11, 25, 12, 0, second, tzinfo=UTC)
    return ProbeResult(ok=ok, duration_s=duration, reason="", at=at)


def test_aggregates_by_minute_and_excludes_maintenance() -> None:
    agg = MinuteAggregator()
    agg.add(SPEC, result(True, 1, 0.1), MonitorStatus.UP)
    agg.add(SPEC, result(False, 2, 0.3), MonitorStatus.PENDING)
    agg.add(SPEC, result(False, 3), MonitorStatus.MAINTENANCE)
    [(mid, minute, b)] = agg.drain()
    assert (mid, minute) == ("m", minute_of(result(True, 0).at))
    assert (b.checks, b.failures, b.maintenance) == (2, 1, 1)
    assert abs(b.duration_sum - 0.4) < 1e-9 and b.duration_max == 0.3
    assert agg.drain() == []


def test_uptime() -> None:
    assert uptime(0, 0) is None
    assert uptime(4, 1) == 0.75
