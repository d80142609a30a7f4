"""``AuditQueue`` with a write function that fails as an unavailable database does (the
exception types SQLAlchemy raises), then works: order, times, bounds, bad entries."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import exc as sa_exc

from orchestrator.auth.audit_queue import AuditQueue

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


class Database:
    """Down until ``up()``; records the batches written; ``bad`` paths fail as a constraint."""

    def __init__(self) -> None:
        self.available = threading.Event()
        self.batches: list[list[str]] = []
        self.rows: list[dict[str, Any]] = []
        self.failed = 0
        self.bad: set[str] = set()

    def write(self, entries: list[dict[str, Any]]) -> None:
        if not self.available.is_set():
            self.failed += 1
            raise sa_exc.OperationalError("INSERT", {}, Exception("connection refused"))
        if any(e["path"] in self.bad for e in entries):
            raise sa_exc.IntegrityError("INSERT", {}, Exception("bad"))
        self.batches.append([e["path"] for e in entries])
        self.rows.extend(entries)


def entry(i: int) -> dict[str, Any]:
    return {"path": f"/p/{i}", "at": T0 + timedelta(seconds=i), "status": 503}


def test_entries_wait_for_the_database_and_keep_their_order_and_time() -> None:
    db = Database()
    registry = CollectorRegistry()
    queue = AuditQueue(db.write, batch_size=3, registry=registry, delay=lambda _a: 0.01)
    for i in range(7):
        queue.submit(entry(i))
    assert registry.get_sample_value("cpdops_audit_entries_pending") == 7
    # down: the writer keeps retrying and writes nothing (bounded wait for a few retries)
    for _ in range(500):
        if db.failed >= 3:
            break
        threading.Event().wait(0.01)
    assert db.failed >= 3 and db.rows == [] and queue.pending() == 7
    db.available.set()
    assert queue.stop(drain_timeout_s=30) == 0
    assert [r["path"] for r in db.rows] == [f"/p/{i}" for i in range(7)]
    assert [r["at"] for r in db.rows] == [T0 + timedelta(seconds=i) for i in range(7)]
    # batches of at most 3 (how the 7 were cut depends on when the writer woke: a first
    # entry may go alone), each entry in exactly one written batch
    written = [r for b in db.batches for r in b]
    assert all(1 <= len(b) <= 3 for b in db.batches) and len(written) == 7
    assert queue.written == 7 and queue.dropped == 0
    assert registry.get_sample_value("cpdops_audit_entries_pending") == 0


def test_a_full_queue_drops_the_oldest_and_counts_it() -> None:
    db = Database()
    registry = CollectorRegistry()
    queue = AuditQueue(db.write, capacity=3, batch_size=1, registry=registry, delay=lambda _a: 0.01)
    for i in range(5):
        queue.submit(entry(i))
    db.available.set()
    assert queue.stop(drain_timeout_s=30) == 0
    dropped = registry.get_sample_value("cpdops_audit_entries_dropped_total", {"why": "queue_full"})
    # the writer may already hold the oldest one (its batch of 1, retried): kept, not dropped
    written = [r["path"] for r in db.rows]
    assert dropped == 5 - len(written) and dropped in (1, 2)
    assert written[-2:] == ["/p/3", "/p/4"]


def test_a_bad_entry_is_dropped_alone() -> None:
    db = Database()
    db.bad = {"/p/1"}
    registry = CollectorRegistry()
    queue = AuditQueue(db.write, batch_size=10, registry=registry, delay=lambda _a: 0.01)
    for i in range(3):
        queue.submit(entry(i))
    db.available.set()
    assert queue.stop(drain_timeout_s=30) == 0
    assert [r["path"] for r in db.rows] == ["/p/0", "/p/2"]
    assert registry.get_sample_value("cpdops_audit_entries_dropped_total", {"why": "error"}) == 1


def test_stop_reports_what_could_not_be_written() -> None:
    db = Database()
    queue = AuditQueue(db.write, registry=CollectorRegistry(), delay=lambda _a: 0.01)
    queue.submit(entry(0))
    queue.submit(entry(1))
    assert queue.stop(drain_timeout_s=0.2) == 2
    assert db.rows == [] and queue.pending() == 0
    queue.submit(entry(2))  # after stop: logged, not queued
    assert queue.pending() == 0


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        AuditQueue(lambda _e: None, capacity=0, registry=CollectorRegistry())
    with pytest.raises(ValueError):
        AuditQueue(lambda _e: None, batch_size=0, registry=CollectorRegistry())
