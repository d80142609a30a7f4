"""Per-minute aggregates of checks (pure, thread-safe): history is never one row per check.

The engine calls ``add`` for every check; a scheduler job ``drain``s the buckets into the
database (``orchestrator.monitor_history``) with an additive upsert, so a partial minute can be
flushed and completed later.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from monitors.probe import MonitorSpec, ProbeResult
from monitors.state import MonitorStatus


@dataclass
class Bucket:
    checks: int = 0  # checks outside maintenance
    failures: int = 0  # failed checks outside maintenance
    maintenance: int = 0  # checks during maintenance or a rollout's suppression
    duration_sum: float = 0.0
    duration_max: float = 0.0


def minute_of(at: datetime) -> int:
    return int(at.timestamp()) // 60


class MinuteAggregator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, int], Bucket] = {}

    def add(self, spec: MonitorSpec, result: ProbeResult, status: MonitorStatus) -> None:
        key = (spec.id, minute_of(result.at))
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                b = self._buckets[key] = Bucket()
            if status == MonitorStatus.MAINTENANCE:
                b.maintenance += 1
                return
            b.checks += 1
            b.failures += 0 if result.ok else 1
            b.duration_sum += result.duration_s
            b.duration_max = max(b.duration_max, result.duration_s)

    def restore(self, rows: list[tuple[str, int, Bucket]]) -> None:
        """Put drained rows back (their write failed: the database is down), merged with
        what was added meanwhile, so the next flush writes them."""
        with self._lock:
            for monitor_id, minute, old in rows:
                b = self._buckets.get((monitor_id, minute))
                if b is None:
                    self._buckets[(monitor_id, minute)] = old
                    continue
                b.checks += old.checks
                b.failures += old.failures
                b.maintenance += old.maintenance
                b.duration_sum += old.duration_sum
                b.duration_max = max(b.duration_max, old.duration_max)

    def pending(self) -> int:
        """Buckets not flushed yet."""
        with self._lock:
            return len(self._buckets)

    def drain(self) -> list[tuple[str, int, Bucket]]:
        with self._lock:
            items, self._buckets = self._buckets, {}
        return [(mid, minute, b) for (mid, minute), b in items.items()]


def uptime(checks: int, failures: int) -> float | None:
    """Share of passing checks outside maintenance; None when there were none."""
    return None if checks == 0 else (checks - failures) / checks
