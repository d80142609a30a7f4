"""A bounded in-memory queue with one writer thread that keeps trying while the state database
is unavailable — what the monitor changes (``orchestrator.change_writer``) and the API audit
entries (``orchestrator.auth.audit_queue``) both need.

Items are written oldest first, up to ``batch_size`` a transaction with ``write_batch`` (or
one at a time with ``write_one``). When a write fails because the database is unavailable
(``orchestrator.db.outage``) the item — or the batch — stays at the head of the queue and is
tried again after ``delay(attempt)`` (:func:`retry_delay`: 0.5 s doubling up to 5 s) until the
database is back; the items behind it wait. Any other error is logged and the item dropped: one
bad item must not hold up all the others (a batch failing so is written again one item at a
time, so only the bad one is dropped). When the queue is full the oldest item is dropped,
logged and counted (``why="queue_full"``; bad items: ``why="error"``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client import Counter

from orchestrator.db.outage import database_unavailable, describe
from orchestrator.metrics import at_zero

log = logging.getLogger(__name__)

T = TypeVar("T")
# The ``why`` of the ``dropped`` counter.
DROPPED_WHY = ("queue_full", "error")


def retry_delay(attempt: int, *, first_s: float = 0.5, max_s: float = 5.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, …) of a failed write."""
    return float(min(first_s * 2.0 ** max(attempt - 1, 0), max_s))


class RetryQueue(Generic[T]):
    """See the module docstring. ``noun``/``plural`` and ``label(item)`` word the logs."""

    def __init__(
        self,
        write_one: Callable[[T], None],
        *,
        write_batch: Callable[[list[T]], None] | None,
        batch_size: int,
        capacity: int,
        delay: Callable[[int], float],
        dropped: Counter,
        label: Callable[[T], str],
        noun: str,
        plural: str,
        thread_name: str,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._write_one = write_one
        self._write_batch = write_batch
        self._batch_size = batch_size if write_batch is not None else 1
        self._capacity = capacity
        self._delay = delay
        self._dropped = dropped
        at_zero(dropped, [(why,) for why in DROPPED_WHY])
        self._label = label
        self._noun, self._plural = noun, plural
        self._thread_name = thread_name
        self._queue: deque[T] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # The oldest items, being written (or retried): one, or a batch.
        self._current: list[T] = []
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            self._thread.start()

    def submit(self, item: T) -> None:
        """Queue ``item`` to be written (from any thread; never blocks on the database)."""
        with self._cond:
            if self._stopping:
                log.error("%s not written (stopping) %s", self._noun, self._label(item))
                return
            if len(self._queue) >= self._capacity:
                lost = self._queue.popleft()
                self.dropped += 1
                self._dropped.labels(why="queue_full").inc()
                log.error(
                    "%s dropped (queue full: %d) %s", self._noun, self._capacity, self._label(lost)
                )
            self._queue.append(item)
            self._cond.notify_all()

    def pending(self) -> int:
        """Items not written yet (those being written included)."""
        with self._cond:
            return len(self._queue) + len(self._current)

    def stop(self, drain_timeout_s: float = 10.0) -> int:
        """Write what is queued (for up to ``drain_timeout_s``), then stop the thread; returns
        how many items were left unwritten (each logged)."""
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
            thread.join(timeout=30)  # a write in progress ends at its connect timeout
        with self._cond:
            left = [*self._current, *self._queue]
            self._current, self._thread = [], None
            self._queue.clear()
        for item in left:
            log.error("%s not written (stopping) %s", self._noun, self._label(item))
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
                            "state database unavailable: %s wait in memory (%d queued): %s",
                            self._plural,
                            len(self._queue) + len(left),
                            describe(unavailable),
                        )
                    self._current = left
                    self._cond.wait_for(lambda: self._stopping, timeout=self._delay(attempt))
                    continue
                self._current = []
                if attempt:
                    log.info(
                        "state database back: writing the queued %s (%d)",
                        self._plural,
                        len(self._queue),
                    )
                    attempt = 0
                self._cond.notify_all()

    def _attempt(self, batch: list[T]) -> tuple[list[T], Exception | None, int]:
        """Write ``batch`` (oldest first): (items left to retry, the outage error that stopped
        it or None, items written)."""
        if self._write_batch is not None and len(batch) > 1:
            try:
                self._write_batch(batch)
                return [], None, len(batch)
            except Exception as exc:
                if database_unavailable(exc):
                    return batch, exc, 0
                log.warning(
                    "writing %d %s in one transaction failed (%s): writing them one at a time",
                    len(batch),
                    self._plural,
                    exc,
                )
        written = 0
        for index, item in enumerate(batch):
            try:
                self._write_one(item)
            except Exception as exc:
                if database_unavailable(exc):
                    return batch[index:], exc, written
                self.dropped += 1
                self._dropped.labels(why="error").inc()
                log.exception("%s not written %s", self._noun, self._label(item))
            else:
                written += 1
        return [], None, written
