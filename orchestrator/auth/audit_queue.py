"""API audit entries that could not be written because the state database is unavailable:
a bounded in-memory queue and one writer thread that writes them when it is back.

The audit middleware (``orchestrator.api.middleware.Audit``) writes a request's entry before
the response starts. When that write fails because the database is unavailable
(``orchestrator.db.outage``: a restart, a broken connection, an exhausted pool) the entry is
handed to :meth:`AuditQueue.submit`, which never blocks; while entries wait, the entries of the
next requests join them behind (so the log keeps their order, and a request during an outage
does not wait for a connect timeout a second time). The writer thread writes up to
``batch_size`` entries a transaction, oldest first, each with the time its request was
answered (``at``), retrying after ``retry_delay`` (0.5 s doubling up to 5 s, as the monitor
changes' writer) until the database is back. A batch that fails for another reason is written
again one entry at a time and only the bad entry is dropped (logged with all its fields).

The queue holds ``capacity`` entries (``CPDOPS_AUDIT_QUEUE``, default 10,000); when full the
oldest is dropped, logged with all its fields and counted in
``cpdops_audit_entries_dropped_total{why="queue_full"}``. Each queued entry is logged too
(WARNING, all its fields): a process that dies during the outage leaves them in its log.
Entries are not deduplicated: a retry after an ambiguous commit (the connection lost during
COMMIT) can write a batch twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from orchestrator.db.retry_queue import RetryQueue, retry_delay

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000
DEFAULT_BATCH = 200

Entry = dict[str, Any]


def _text(entry: Entry) -> str:
    return json.dumps(entry, default=str)


class AuditQueue(RetryQueue[Entry]):
    """The shared ``orchestrator.db.retry_queue.RetryQueue``; its thread starts with the first
    entry, and every queued entry is logged in full."""

    def __init__(
        self,
        write_batch: Callable[[list[Entry]], None],
        *,
        capacity: int = DEFAULT_CAPACITY,
        batch_size: int = DEFAULT_BATCH,
        registry: CollectorRegistry | None = None,
        delay: Callable[[int], float] = retry_delay,
    ) -> None:
        super().__init__(
            lambda entry: write_batch([entry]),
            write_batch=write_batch,
            batch_size=batch_size,
            capacity=capacity,
            delay=delay,
            dropped=Counter(
                "cpdops_audit_entries_dropped_total",
                "API audit entries dropped before they were written (queue full during a state "
                "database outage, or a write that failed for another reason); each is logged",
                ["why"],
                registry=registry,
            ),
            label=lambda entry: f"entry={_text(entry)}",
            noun="audit entry",
            plural="audit entries",
            thread_name="cpdops-audit-writer",
        )
        pending = Gauge(
            "cpdops_audit_entries_pending",
            "API audit entries waiting in memory for the state database",
            registry=registry,
        )
        pending.set_function(self.pending)

    def submit(self, entry: Entry) -> None:
        """Queue ``entry`` (its ``at`` set) to be written; starts the writer thread if needed."""
        with self._cond:
            if self._stopping:
                super().submit(entry)  # logged as not written
                return
            self.start()
            super().submit(entry)
            waiting = len(self._queue) + len(self._current)
        log.warning(
            "audit entry queued for the state database (%d waiting) entry=%s",
            waiting,
            _text(entry),
        )
