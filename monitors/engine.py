"""The monitor engine: one asyncio event loop, in its own daemon thread, probing every monitor.

Threads::

    caller threads ──set_monitors/suppress/run_once──▶ engine loop thread ("cpdops-monitors")
                   ◀──────────── snapshot() (reads under a lock, never waits for the loop)
    engine loop ──run_in_executor──▶ notify thread ("cpdops-monitor-notify") ──▶ on_change(change)

Each monitor has one task on the loop: an initial offset (random within one interval when
``jitter`` is on), then a check every ``interval_s`` on a fixed rate. A check holds one slot of
a semaphore (``max_concurrency``) and is cut off at ``timeout_s``; a slow or dead target only
ever occupies its own task and slot. ``on_change`` runs on a single notify thread, so changes are
delivered one at a time and in the order they happened; it may block (database writes) without
slowing the probes, and an exception from it is logged and forgotten.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

from monitors.probe import MonitorSpec, Probe, ProbeResult, timeout_reason
from monitors.probes import PROBES
from monitors.state import Hold, MonitorState, MonitorStatus, apply_hold, effective_hold, step

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENCY = 500
# Upper bounds (seconds) of the probe lateness histogram: how late a check started.
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Lateness:
    """How late the checks started against their fixed-rate schedule (first start + k ×
    interval; the first check against the end of its initial offset), waiting for a slot of the
    concurrency semaphore included: ``counts[i]`` checks were at most ``buckets[i]`` late
    (cumulative, as Prometheus buckets are), ``count`` checks in all (the ``+Inf`` bucket),
    ``sum_s`` their lateness added up. Counted since the engine was made."""

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum_s: float


@dataclass(frozen=True)
class StateChange:
    """A monitor's status changed. ``result`` is the check that caused it, or ``None`` when a
    hold (maintenance, rollout suppression) was put on or lifted; ``reason`` says which."""

    spec: MonitorSpec
    old: MonitorStatus
    new: MonitorStatus
    result: ProbeResult | None
    reason: str
    at: datetime
    # When the first failing check of the current streak started (None when the last check
    # passed): a DOWN's detection time is ``at - failing_since`` plus the ticket's commit.
    failing_since: datetime | None = None


@dataclass(frozen=True)
class MonitorView:
    """A consistent, immutable copy of one monitor's state (for the API and the metrics)."""

    spec: MonitorSpec
    state: MonitorState
    last_result: ProbeResult | None
    last_change_at: datetime | None
    probe_count: int
    hold_reason: str | None

    @property
    def status(self) -> MonitorStatus:
        return self.state.status


class _Monitor:
    """Mutable per-monitor record. Written on the loop under the engine lock."""

    __slots__ = (
        "failing_since",
        "last_change_at",
        "last_result",
        "probe_count",
        "spec",
        "state",
        "task",
    )

    def __init__(self, spec: MonitorSpec) -> None:
        self.spec = spec
        self.state = MonitorState()
        self.last_result: ProbeResult | None = None
        self.last_change_at: datetime | None = None
        self.probe_count = 0
        self.failing_since: datetime | None = None  # start of the first check of the streak
        self.task: asyncio.Task[None] | None = None


class MonitorEngine:
    """Probes monitors on a private event loop; see the module docstring for the threads."""

    def __init__(
        self,
        on_change: Callable[[StateChange], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: bool = True,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        probes: Mapping[str, Callable[[], Probe]] | None = None,
        drain_timeout_s: float = 10.0,
        on_result: Callable[[MonitorSpec, ProbeResult, MonitorStatus], None] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self._on_change = on_change
        # Called on the loop thread for every check (must be cheap: e.g. history aggregation).
        self._on_result = on_result
        self._clock = clock
        self._jitter = jitter
        self._max_concurrency = max_concurrency
        self._factories = dict(PROBES if probes is None else probes)
        self._drain_timeout_s = drain_timeout_s
        self._rng = random.Random()
        self._lock = threading.Lock()  # guards _monitors and _holds
        self._lifecycle = threading.Lock()  # guards _phase
        self._stop_lock = threading.Lock()
        self._phase = "new"  # new -> running -> stopped
        self._monitors: dict[str, _Monitor] = {}
        # ``_monitors``' keys sorted, built on the first ``ids()`` after the set changed.
        self._sorted_ids: tuple[str, ...] | None = None
        self._holds: dict[str, dict[Hold, str]] = {}
        # Loop-side state (touched only on the loop thread once started).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._notify_ident: int | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._probes: dict[str, Probe] = {}
        self._deliveries: set[asyncio.Future[None]] = set()
        self._oneshots: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._drained = True
        self._late_counts = [0] * len(LATENESS_BUCKETS)  # per bucket, not cumulative
        self._late_count = 0
        self._late_sum = 0.0

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the loop thread. Idempotent while running; a stopped engine stays stopped."""
        with self._lifecycle:
            if self._phase == "running":
                return
            if self._phase == "stopped":
                raise RuntimeError("a stopped MonitorEngine cannot be started again")
            loop = asyncio.new_event_loop()
            self._executor = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="cpdops-monitor-notify",
                initializer=self._mark_notify_thread,
            )
            ready = threading.Event()
            self._loop = loop
            self._thread = threading.Thread(
                target=self._run_loop, args=(loop, ready), name="cpdops-monitors", daemon=True
            )
            self._thread.start()
            ready.wait()
            self._phase = "running"

    def stop(self) -> None:
        """Cancel every check, deliver pending changes, close the probes, join the thread.

        Idempotent. Must not be called from ``on_change`` (it waits for ``on_change`` to finish).
        """
        if threading.get_ident() == self._notify_ident:
            raise RuntimeError("MonitorEngine.stop() called from on_change")
        self._refuse_loop_thread()
        with self._stop_lock:
            with self._lifecycle:
                was_running = self._phase == "running"
                self._phase = "stopped"
            if not was_running:
                return
            loop, thread, executor = self._loop, self._thread, self._executor
            assert loop is not None and thread is not None and executor is not None
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result()
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
            executor.shutdown(wait=self._drained, cancel_futures=True)

    def __enter__(self) -> MonitorEngine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- thread-safe API

    def set_monitors(self, specs: Iterable[MonitorSpec]) -> None:
        """Make the engine probe exactly ``specs``: add new ids, restart the schedule of changed
        ones (their state is kept), drop vanished ones. Blocks until applied."""
        wanted: dict[str, MonitorSpec] = {}
        for spec in specs:
            if spec.id in wanted:
                raise ValueError(f"duplicate monitor id {spec.id!r}")
            if spec.kind not in self._factories:
                known = ", ".join(sorted(self._factories))
                raise ValueError(f"monitor {spec.id!r}: unknown kind {spec.kind!r} ({known})")
            wanted[spec.id] = spec
        self._call(lambda: self._apply_specs(wanted))

    def suppress(self, monitor_ids: Iterable[str], reason: str) -> None:
        """A rollout works on these monitors' instance: MAINTENANCE until :meth:`unsuppress`.

        Applies to ids not (yet) configured as well, so a monitor re-created during the rollout
        starts suppressed."""
        self._call(lambda: self._change_hold(_ids(monitor_ids), Hold.SUPPRESSED, reason))

    def unsuppress(self, monitor_ids: Iterable[str]) -> None:
        """End suppression: the monitors go PENDING and are checked at once, then follow the
        probes (UP after ``recovery_threshold`` passes, DOWN after ``failure_threshold`` fails)."""
        self._call(lambda: self._change_hold(_ids(monitor_ids), Hold.SUPPRESSED, None))

    def hold_host(self, monitor_ids: Iterable[str], reason: str) -> None:
        """These monitors' Docker host does not answer: MAINTENANCE until :meth:`release_host`
        (a hold of its own: a rollout's or a window's end does not lift it)."""
        self._call(lambda: self._change_hold(_ids(monitor_ids), Hold.HOST, reason))

    def release_host(self, monitor_ids: Iterable[str]) -> None:
        """The host answers again: as :meth:`unsuppress`."""
        self._call(lambda: self._change_hold(_ids(monitor_ids), Hold.HOST, None))

    def set_maintenance(self, monitor_ids: Iterable[str], reason: str) -> None:
        """A maintenance window opened for these monitors (MAINTENANCE, reason "maintenance")."""
        self._call(lambda: self._change_hold(_ids(monitor_ids), Hold.MAINTENANCE, reason))

    def clear_maintenance(self, monitor_ids: Iterable[str]) -> None:
        """The maintenance window closed: as :meth:`unsuppress`."""
        self._call(lambda: self._change_hold(_ids(monitor_ids), Hold.MAINTENANCE, None))

    def run_once(self, spec: MonitorSpec) -> ProbeResult:
        """Check ``spec`` once on the engine's loop (shared client, semaphore, timeout) and return
        the result. Touches no monitor state and reports no change."""
        if spec.kind not in self._factories:
            raise ValueError(f"unknown probe kind {spec.kind!r}")
        return self._call(lambda: self._run_once(spec))

    def lateness(self) -> Lateness:
        """The probe lateness histogram so far (see :class:`Lateness`)."""
        with self._lock:
            per_bucket = list(self._late_counts)
            count, total = self._late_count, self._late_sum
        cumulative, running = [], 0
        for n in per_bucket:
            running += n
            cumulative.append(running)
        return Lateness(LATENESS_BUCKETS, tuple(cumulative), count, total)

    def snapshot(self) -> list[MonitorView]:
        """Every configured monitor, in the order it was added. Never waits for the loop."""
        with self._lock:
            return [self._view(mon) for mon in self._monitors.values()]

    def ids(
        self, where: Callable[[MonitorSpec, MonitorStatus], bool] | None = None
    ) -> tuple[str, ...]:
        """The configured monitors' ids in code point order (Python's ``sorted``), only those
        ``where(spec, status)`` accepts when given. The sorted ids are kept until the set of
        monitors changes, so a page of the API costs no sort. Never waits for the loop."""
        with self._lock:
            if self._sorted_ids is None:
                self._sorted_ids = tuple(sorted(self._monitors))
            if where is None:
                return self._sorted_ids
            mons = self._monitors
            return tuple(i for i in self._sorted_ids if where(mons[i].spec, mons[i].state.status))

    def views(self, monitor_ids: Iterable[str]) -> dict[str, MonitorView]:
        """The views of those of ``monitor_ids`` that are configured (by id): a page's worth
        of :meth:`snapshot` without copying every monitor. Never waits for the loop."""
        with self._lock:
            mons = self._monitors
            return {i: self._view(mons[i]) for i in monitor_ids if i in mons}

    def _view(self, mon: _Monitor) -> MonitorView:  # under self._lock
        return MonitorView(
            spec=mon.spec,
            state=mon.state,
            last_result=mon.last_result,
            last_change_at=mon.last_change_at,
            probe_count=mon.probe_count,
            hold_reason=self._hold_reason(mon.spec.id),
        )

    # ----------------------------------------------------------------- loop thread

    def _run_loop(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        self._semaphore = asyncio.Semaphore(self._max_concurrency)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _mark_notify_thread(self) -> None:
        self._notify_ident = threading.get_ident()

    def _refuse_loop_thread(self) -> None:
        if self._thread is not None and threading.get_ident() == self._thread.ident:
            raise RuntimeError("blocking MonitorEngine call from the engine's own loop")

    def _call(self, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run a coroutine on the loop and wait for its result (from any other thread)."""
        self._refuse_loop_thread()
        with self._lifecycle:
            if self._phase != "running" or self._loop is None:
                raise RuntimeError(f"MonitorEngine is {self._phase}, not running")
            future = asyncio.run_coroutine_threadsafe(make(), self._loop)
        return future.result()

    def _ensure_open(self) -> asyncio.AbstractEventLoop:
        if self._closing or self._loop is None:
            raise RuntimeError("MonitorEngine is stopping")
        return self._loop

    async def _apply_specs(self, wanted: dict[str, MonitorSpec]) -> None:
        self._ensure_open()
        for kind in {spec.kind for spec in wanted.values()}:
            self._probe(kind)
        changes: list[StateChange] = []
        with self._lock:
            self._sorted_ids = None
            for monitor_id in [m for m in self._monitors if m not in wanted]:
                gone = self._monitors.pop(monitor_id)
                if gone.task is not None:
                    gone.task.cancel()
            for monitor_id, spec in wanted.items():
                mon = self._monitors.get(monitor_id)
                if mon is None:
                    mon = self._monitors[monitor_id] = _Monitor(spec)
                    change = self._reapply_hold(mon)
                    if change is not None:
                        changes.append(change)
                elif mon.spec == spec:
                    continue
                mon.spec = spec
                self._schedule(mon, self._initial_delay(spec))
        for change in changes:
            self._notify(change)

    async def _change_hold(self, monitor_ids: list[str], hold: Hold, reason: str | None) -> None:
        self._ensure_open()
        changes: list[StateChange] = []
        with self._lock:
            for monitor_id in monitor_ids:
                holds = self._holds.setdefault(monitor_id, {})
                if reason is None:
                    holds.pop(hold, None)
                else:
                    holds[hold] = reason
                if not holds:
                    del self._holds[monitor_id]
                mon = self._monitors.get(monitor_id)
                if mon is None:
                    continue
                was_held = mon.state.hold is not None
                change = self._reapply_hold(mon)
                if change is not None:
                    changes.append(change)
                if was_held and mon.state.hold is None:
                    self._schedule(mon, 0.0)  # re-verify now, not an interval from now
        for change in changes:
            self._notify(change)

    def _reapply_hold(self, mon: _Monitor) -> StateChange | None:
        """Bring ``mon.state`` in line with its holds (caller holds the lock)."""
        old = mon.state
        hold = effective_hold(self._holds.get(mon.spec.id, {}).keys())
        mon.state = apply_hold(old, hold)
        if mon.state.status == old.status:
            return None
        if hold is not None:
            reason = f"{hold.value}: {self._holds[mon.spec.id][hold]}"
        else:
            ended = {Hold.SUPPRESSED: "suppression", Hold.HOST: "host hold"}.get(
                old.hold or Hold.MAINTENANCE, "maintenance"
            )
            reason = f"{ended} ended: verifying again"
        now = datetime.now(UTC)
        mon.last_change_at = now
        return StateChange(mon.spec, old.status, mon.state.status, None, reason, now)

    def _hold_reason(self, monitor_id: str) -> str | None:
        holds = self._holds.get(monitor_id)
        hold = effective_hold(holds.keys()) if holds else None
        return f"{hold.value}: {holds[hold]}" if holds and hold else None

    def _initial_delay(self, spec: MonitorSpec) -> float:
        return self._rng.uniform(0.0, spec.interval_s) if self._jitter else 0.0

    def _schedule(self, mon: _Monitor, delay: float) -> None:
        loop = self._ensure_open()
        if mon.task is not None:
            mon.task.cancel()
        mon.task = loop.create_task(self._run_monitor(mon, delay), name=f"monitor:{mon.spec.id}")

    def _probe(self, kind: str) -> Probe:
        probe = self._probes.get(kind)
        if probe is None:
            probe = self._probes[kind] = self._factories[kind]()
        return probe

    async def _run_monitor(self, mon: _Monitor, delay: float) -> None:
        spec = mon.spec
        if delay > 0:
            await asyncio.sleep(delay)
        due = self._clock()
        while True:
            try:
                result = await self._check(spec, due)
                self._record(mon, spec, result)
            except Exception:  # a bug must not end this monitor's schedule
                logger.exception(
                    "monitor check failed monitor=%s tenant=%s",
                    spec.id,
                    spec.tenant,
                    extra={"monitor": spec.id, "tenant": spec.tenant},
                )
            due += spec.interval_s
            now = self._clock()
            due = max(due, now)  # fell behind (slow target): skip missed runs, never burst
            await asyncio.sleep(due - now)

    async def _check(self, spec: MonitorSpec, due: float | None = None) -> ProbeResult:
        probe = self._probe(spec.kind)
        assert self._semaphore is not None
        async with self._semaphore:
            at = datetime.now(UTC)
            started = self._clock()
            if due is not None:
                self._note_lateness(max(0.0, started - due))
            try:
                async with asyncio.timeout(spec.timeout_s):
                    return await probe.check(spec)
            except TimeoutError:
                reason = timeout_reason(spec.timeout_s)
            except Exception as exc:  # the Probe contract says "never raise"; enforce it here
                logger.warning(
                    "probe raised monitor=%s tenant=%s kind=%s",
                    spec.id,
                    spec.tenant,
                    spec.kind,
                    exc_info=True,
                    extra={"monitor": spec.id, "tenant": spec.tenant},
                )
                reason = f"probe error: {type(exc).__name__}: {exc}"
            return ProbeResult.failure(reason, duration_s=self._clock() - started, at=at)

    def _note_lateness(self, late_s: float) -> None:
        index = bisect.bisect_left(LATENESS_BUCKETS, late_s)
        with self._lock:
            if index < len(self._late_counts):
                self._late_counts[index] += 1
            self._late_count += 1
            self._late_sum += late_s

    async def _run_once(self, spec: MonitorSpec) -> ProbeResult:
        self._ensure_open()
        task = asyncio.current_task()
        assert task is not None
        self._oneshots.add(task)
        try:
            return await self._check(spec)
        finally:
            self._oneshots.discard(task)

    def _record(self, mon: _Monitor, spec: MonitorSpec, result: ProbeResult) -> None:
        with self._lock:
            if self._monitors.get(spec.id) is not mon or mon.spec is not spec:
                return  # removed or reconfigured while this check was running
            old = mon.state
            hold = effective_hold(self._holds.get(spec.id, {}).keys())
            mon.state = step(
                old,
                result.ok,
                failure_threshold=spec.failure_threshold,
                recovery_threshold=spec.recovery_threshold,
                hold=hold,
            )
            mon.last_result = result
            mon.probe_count += 1
            if mon.state.consecutive_failures == 1:
                mon.failing_since = result.at
            elif mon.state.consecutive_failures == 0:
                mon.failing_since = None
            status = mon.state.status
            changed = status != old.status
            if changed:
                now = datetime.now(UTC)
                mon.last_change_at = now
                change = StateChange(
                    spec, old.status, status, result, result.reason, now, mon.failing_since
                )
        if self._on_result is not None:
            try:
                self._on_result(spec, result, status)
            except Exception:
                logger.exception("on_result failed monitor=%s", spec.id)
        if changed:
            self._notify(change)

    def _notify(self, change: StateChange) -> None:
        loop = self._loop
        assert loop is not None
        logger.info(
            "monitor status monitor=%s tenant=%s host=%s old=%s new=%s reason=%s",
            change.spec.id,
            change.spec.tenant,
            change.spec.host,
            change.old.name,
            change.new.name,
            change.reason,
            extra={"monitor": change.spec.id, "tenant": change.spec.tenant},
        )
        future = loop.run_in_executor(self._executor, self._deliver, change)
        self._deliveries.add(future)
        future.add_done_callback(self._deliveries.discard)

    def _deliver(self, change: StateChange) -> None:
        try:
            self._on_change(change)
        except Exception:
            logger.exception(
                "on_change failed monitor=%s tenant=%s old=%s new=%s",
                change.spec.id,
                change.spec.tenant,
                change.old.name,
                change.new.name,
                extra={"monitor": change.spec.id, "tenant": change.spec.tenant},
            )

    async def _shutdown(self) -> None:
        self._closing = True
        tasks = [m.task for m in self._monitors.values() if m.task is not None]
        tasks.extend(self._oneshots)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for kind, probe in self._probes.items():
            try:
                await probe.aclose()
            except Exception:
                logger.exception("closing probe failed kind=%s", kind)
        self._probes.clear()
        if self._deliveries:
            _, pending = await asyncio.wait(set(self._deliveries), timeout=self._drain_timeout_s)
            if pending:
                self._drained = False
                logger.warning(
                    "on_change still busy after %.1fs; %d change(s) not delivered",
                    self._drain_timeout_s,
                    len(pending),
                )


def _ids(monitor_ids: Iterable[str]) -> list[str]:
    if isinstance(monitor_ids, str):
        raise TypeError("monitor_ids must be a collection of ids, not one string")
    return list(monitor_ids)
