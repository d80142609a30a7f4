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
``cpdops_monitor_changes_dropped_total`` — the newest states matter most.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from monitors.engine import StateChange
from orchestrator.db.outage import database_unavailable, describe

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000
DEFAULT_BATCH = 500


def retry_delay(attempt: int, *, first_s: float = 0.5, max_s: float = 5.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, …) of a failed write."""
    return float(min(first_s * 2.0 ** max(attempt - 1, 0), max_s))


class ChangeWriter:
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
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._write = write
        self._write_batch = write_batch
        self._batch_size = batch_size if write_batch is not None else 1
        self._capacity = capacity
        self._delay = delay
        self._queue: deque[StateChange] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # The oldest changes, being written (or retried): one, or a batch.
        self._current: list[StateChange] = []
        self.written = 0
        self.dropped = 0
        self._dropped = Counter(
            "cpdops_monitor_changes_dropped_total",
            "Monitor state changes dropped before they were written (queue full during a "
            "database outage, or a write that failed for another reason)",
            ["why"],
            registry=registry,
        )
        pending = Gauge(
            "cpdops_monitor_changes_pending",
            "Monitor state changes waiting to be written to the state database",
            registry=registry,
        )
        pending.set_function(self.pending)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="cpdops-change-writer", daemon=True)
        self._thread.start()

    def submit(self, change: StateChange) -> None:
        """Queue ``change`` to be written (from any thread; never blocks on the database)."""
        with self._cond:
            if len(self._queue) >= self._capacity:
                lost = self._queue.popleft()
                self.dropped += 1
                self._dropped.labels(why="queue_full").inc()
                log.error(
                    "monitor change dropped (queue full: %d) monitor=%s new=%s at=%s",
                    self._capacity,
                    lost.spec.id,
                    lost.new.name,
                    lost.at.isoformat(),
                )
            self._queue.append(change)
            self._cond.notify_all()

    def pending(self) -> int:
        """Changes not written yet (the one being written included)."""
        with self._cond:
            return len(self._queue) + len(self._current)

    def stop(self, drain_timeout_s: float = 10.0) -> int:
        """Write what is queued (for up to ``drain_timeout_s``), then stop the thread; returns
        how many changes were left unwritten (logged)."""
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
        if self._thread is not None:
            self._thread.join(timeout=30)  # a write in progress ends at its connect timeout
            self._thread = None
        left = self.pending()
        if left:
            log.error("stopping with %d monitor change(s) not written", left)
        return left

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
                            "state database unavailable: monitor changes wait in memory "
                            "(%d queued): %s",
                            len(self._queue) + len(left),
                            describe(unavailable),
                        )
                    self._current = left
                    self._cond.wait_for(lambda: self._stopping, timeout=self._delay(attempt))
                    continue
                self._current = []
                if attempt:
                    log.info(
                        "state database back: writing the queued monitor changes (%d)",
                        len(self._queue),
                    )
                    attempt = 0
                self._cond.notify_all()

    def _attempt(self, batch: list[StateChange]) -> tuple[list[StateChange], Exception | None, int]:
        """Write ``batch`` (oldest first): (changes left to retry, the outage error that stopped
        it or None, changes written). A batch that fails for another reason than an outage is
        written again one change at a time, so only a bad change is dropped."""
        if self._write_batch is not None and len(batch) > 1:
            try:
                self._write_batch(batch)
                return [], None, len(batch)
            except Exception as exc:
                if database_unavailable(exc):
                    return batch, exc, 0
                log.warning(
                    "writing %d monitor changes in one transaction failed (%s): "
                    "writing them one at a time",
                    len(batch),
                    exc,
                )
        written = 0
        for index, change in enumerate(batch):
            try:
                self._write(change)
            except Exception as exc:
                if database_unavailable(exc):
                    return batch[index:], exc, written
                self.dropped += 1
                self._dropped.labels(why="error").inc()
                log.exception(
                    "monitor change not written monitor=%s new=%s at=%s",
                    change.spec.id,
                    change.new.name,
                    change.at.isoformat(),
                )
            else:
                written += 1
        return [], None, written
