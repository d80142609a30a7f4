"""Monitor state changes on their way to the database: a bounded in-memory queue and one
writer thread that retries while the state database is unavailable.

The monitor engine hands every ``StateChange`` to :meth:`ChangeWriter.submit`, which never
blocks (probing goes on whatever the database does). The writer thread writes them oldest
first — the order they happened in — with ``write`` (the incident engine's
``on_monitor_change``: the monitor record, ``monitor_changes``, the tenant's incident), or,
given ``write_batch`` (``on_monitor_changes``), up to ``batch_size`` queued changes at a time
in one transaction, in order (issue #8: 10,000 monitors' first checks are 10,000 changes at
once; one transaction each kept a replica busy for minutes). When a write fails because the
database is unavailable (``orchestrator.db.outage``) the change — or the batch — stays at the
head of the queue and is tried again, after ``retry_delay`` (0.5 s doubling up to 5 s), until
the database is back; the changes behind it wait. Writes are idempotent (a change is
recognised by its monitor and time), so a retry after an ambiguous commit — the connection
lost while COMMIT was on its way — does not apply it twice. Any other error (a bug, a
constraint) is logged and the change dropped: one bad change must not hold up all the others
(a batch failing so is written again one change at a time, so only the bad one is dropped).

The queue holds ``capacity`` changes (default 10,000: a flapping fleet of thousands of
monitors for many minutes); when full the oldest change is dropped, logged and counted in
``cpdops_monitor_changes_dropped_total`` — the newest states matter most. The queue and its
thread are ``orchestrator.db.retry_queue.RetryQueue``, shared with the audit entries.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from monitors.engine import StateChange
from orchestrator.db.retry_queue import RetryQueue, retry_delay

__all__ = ["DEFAULT_BATCH", "DEFAULT_CAPACITY", "ChangeWriter", "retry_delay"]

DEFAULT_CAPACITY = 10_000
DEFAULT_BATCH = 500


def _label(change: StateChange) -> str:
    return f"monitor={change.spec.id} new={change.new.name} at={change.at.isoformat()}"


class ChangeWriter(RetryQueue[StateChange]):
    def __init__(
        self,
        write: Callable[[StateChange], None],
        *,
        write_batch: Callable[[list[StateChange]], None] | None = None,
        batch_size: int = DEFAULT_BATCH,
        capacity: int = DEFAULT_CAPACITY,
        registry: CollectorRegistry | None = None,
        delay: Callable[[int], float] = retry_delay,
    ) -> None:
        super().__init__(
            write,
            write_batch=write_batch,
            batch_size=batch_size,
            capacity=capacity,
            delay=delay,
            dropped=Counter(
                "cpdops_monitor_changes_dropped_total",
                "Monitor state changes dropped before they were written (queue full during a "
                "database outage, or a write that failed for another reason)",
                ["why"],
                registry=registry,
            ),
            label=_label,
            noun="monitor change",
            plural="monitor changes",
            thread_name="cpdops-change-writer",
        )
        pending = Gauge(
            "cpdops_monitor_changes_pending",
            "Monitor state changes waiting to be written to the state database",
            registry=registry,
        )
        pending.set_function(self.pending)
