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
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from orchestrator.change_writer import retry_delay
from orchestrator.db.outage import database_unavailable, describe

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000
DEFAULT_BATCH = 200

Entry = dict[str, Any]


def _text(entry: Entry) -> str:
    return json.dumps(entry, default=str)


class AuditQueue:
    def __init__(
        self,
        write_batch: Callable[[list[Entry]], None],
        *,
        capacity: int = DEFAULT_CAPACITY,
        batch_size: int = DEFAULT_BATCH,
        registry: CollectorRegistry | None = None,
        delay: Callable[[int], float] = retry_delay,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._write_batch = write_batch
        self._capacity = capacity
        self._batch_size = batch_size
        self._delay = delay
        self._queue: deque[Entry] = deque()
        self._current: list[Entry] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self._dropped = Counter(
            "cpdops_audit_entries_dropped_total",
            "API audit entries dropped before they were written (queue full during a state "
            "database outage, or a write that failed for another reason); each is logged",
            ["why"],
            registry=registry,
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
                log.error("audit entry not written (stopping) entry=%s", _text(entry))
                return
            if len(self._queue) >= self._capacity:
                lost = self._queue.popleft()
                self.dropped += 1
                self._dropped.labels(why="queue_full").inc()
                log.error(
                    "audit entry dropped (queue full: %d) entry=%s", self._capacity, _text(lost)
                )
            self._queue.append(entry)
            log.warning(
                "audit entry queued for the state database (%d waiting) entry=%s",
                len(self._queue) + len(self._current),
                _text(entry),
            )
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cpdops-audit-writer", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def pending(self) -> int:
        """Entries not written yet (those being written included)."""
        with self._cond:
            return len(self._queue) + len(self._current)

    def stop(self, drain_timeout_s: float = 10.0) -> int:
        """Write what is queued (for up to ``drain_timeout_s``), then stop; entries left
        unwritten (each logged)."""
        deadline = time.monotonic() + drain_timeout_s
        with self._cond:
            while (
                (self._queue or self._current)
                and self._thread is not None
                and time.monotonic() < deadline
            ):
                self._cond.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)
        with self._cond:
            left = [*self._current, *self._queue]
            self._current, self._thread = [], None
            self._queue.clear()
        for entry in left:
            log.error("audit entry not written (stopping) entry=%s", _text(entry))
        return len(left)

    # ----------------------------------------------------------------- writer thread

    def _run(self) -> None:
        attempt = 0
        while True:
            with self._cond:
                while not self._current and not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                if not self._current:
                    take = min(self._batch_size, len(self._queue))
                    self._current = [self._queue.popleft() for _ in range(take)]
                batch = list(self._current)
            left, unavailable, written = self._attempt(batch)
            with self._cond:
                self.written += written
                if unavailable is not None:
                    attempt += 1
                    if attempt == 1:
                        log.warning(
                            "state database unavailable: audit entries wait in memory "
                            "(%d queued): %s",
                            len(self._queue) + len(left),
                            describe(unavailable),
                        )
                    self._current = left
                    self._cond.wait_for(lambda: self._stopping, timeout=self._delay(attempt))
                    continue
                self._current = []
                if attempt:
                    log.info("state database back: audit entries written")
                    attempt = 0
                self._cond.notify_all()

    def _attempt(self, batch: list[Entry]) -> tuple[list[Entry], Exception | None, int]:
        """Write ``batch``: (entries left to retry, the outage error or None, written)."""
        try:
            self._write_batch(batch)
            return [], None, len(batch)
        except Exception as exc:
            if database_unavailable(exc):
                return batch, exc, 0
            if len(batch) == 1:
                self._drop_bad(batch[0])
                return [], None, 0
            log.warning(
                "writing %d audit entries in one transaction failed (%s): one at a time",
                len(batch),
                exc,
            )
        written = 0
        for index, entry in enumerate(batch):
            try:
                self._write_batch([entry])
            except Exception as exc:
                if database_unavailable(exc):
                    return batch[index:], exc, written
                self._drop_bad(entry)
            else:
                written += 1
        return [], None, written

    def _drop_bad(self, entry: Entry) -> None:
        self.dropped += 1
        self._dropped.labels(why="error").inc()
        log.exception("audit entry not written entry=%s", _text(entry))
