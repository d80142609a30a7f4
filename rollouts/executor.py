"""Acts on Docker: runs rollouts by applying ``rollouts.decide.next_actions``.

The executor owns no decision: each tick it reads the rollout from the journal (the
database), asks ``next_actions`` what to do, and does it — starting instance updates and
reverts on a thread pool, recording wave ends, approvals and statuses. Every step is
journalled before it acts, so ``reconcile`` can finish or undo the work of a process that
died (SIGKILL included), and another process may take the rollout over once the lease of
the one running it lapses.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import AuditEntry, Rollout, RolloutInstance, Tenant
from orchestrator.db.session import session_scope
from orchestrator.errors import (
    ConflictError,
    DockerError,
    HostUnreachable,
    ImageNotFound,
    InputError,
)
from orchestrator.fleet.discovery import discover
from orchestrator.fleet.hosts import HostRegistry
from orchestrator.fleet.runtime import VERSION_LABEL, DockerHost
from orchestrator.metrics import at_zero
from rollouts import decide, faults
from rollouts.decide import (
    Approve,
    Finish,
    InstanceView,
    MarkWaveDone,
    Reconcile,
    Revert,
    RolloutView,
    SetStatus,
    Update,
    Verify,
    Wait,
    next_actions,
)
from rollouts.instance import InstanceJob, InstanceWorker, PortHeld
from rollouts.planner import PlannedInstance, select_instances
from rollouts.spec import RolloutRequest, Strategy
from rollouts.windows import window_open

log = logging.getLogger(__name__)

CONTROLS = ("pause", "resume", "approve", "abort", "rollback")
# Which controls make sense in which status.
CONTROL_ALLOWED = {
    "pause": ("running", "awaiting_approval", "waiting_window", "pending", "scheduled"),
    "resume": ("paused", "waiting_window"),
    "approve": ("awaiting_approval",),
    "abort": ("pending", "scheduled", "running", "paused", "awaiting_approval", "waiting_window"),
    "rollback": (
        "running",
        "paused",
        "awaiting_approval",
        "waiting_window",
        "aborted",
        "succeeded",
    ),
}
RUNNABLE = ("pending", "scheduled", *decide.ACTIVE)
# Instance states with something a rollback can take back (a failed instance was put back
# on its previous container by its own worker already).
ROLLBACK_TODO = (decide.UPDATED, *decide.BUSY)


def control_refusal(
    rollout_id: int, action: str, status: str, control: str | None, states: Iterable[str]
) -> str | None:
    """Pure: why ``action`` is refused (409) on a rollout in ``status`` with a pending
    ``control`` and instances in ``states`` — or None when it is accepted. The API lists
    the accepted ones (``actions``), so the UI offers exactly what would be accepted."""
    if status not in CONTROL_ALLOWED[action]:
        return f"cannot {action} rollout {rollout_id}: it is {status}"
    if control in ("abort", "rollback") and action != "rollback":
        return f"rollout {rollout_id} is already being {control}ed"
    if action == "rollback" and not any(s in ROLLBACK_TODO for s in states):
        return f"nothing to roll back: no instance of rollout {rollout_id} was updated"
    return None


def accepted_controls(
    rollout_id: int, status: str, control: str | None, states: Iterable[str]
) -> list[str]:
    """The controls ``control_refusal`` accepts now, in CONTROLS order."""
    states = list(states)
    return [a for a in CONTROLS if control_refusal(rollout_id, a, status, control, states) is None]


CRASH_POINTS = (
    "after_backup",
    "after_stop_old",
    "after_rename_old",
    "after_start_new",
    "mid_gate",
    "mid_bake",
)


@dataclass(frozen=True)
class RolloutFailure:
    """What the incident engine is told when a rollout fails."""

    rollout_id: int
    image: str
    tenant: str
    host: str
    reason: str
    evidence: dict[str, Any]


class RolloutMetrics:
    """SPEC §3.5 rollout metrics (``cpdops_rollout_instances`` is read from the store)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.results = Counter(
            "cpdops_rollouts", "Finished rollouts by result", ["result"], registry=registry
        )
        at_zero(self.results, [(result,) for result in decide.FINAL])
        self.duration = Histogram(
            "cpdops_rollout_duration_seconds",
            "Wall time of a rollout from start to end",
            buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
            registry=registry,
        )
        self.rollback_seconds = Histogram(
            "cpdops_rollback_duration_seconds",
            "Gate failure to the previous version answering again, per instance",
            buckets=(0.5, 1, 2, 3, 5, 10, 30, 60),
            registry=registry,
        )


class RolloutExecutor:
    def __init__(
        self,
        factory: sessionmaker[Session],
        hosts: HostRegistry,
        *,
        stop_timeout_s: int = 10,
        on_failure: Callable[[RolloutFailure], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
        on_instance: Callable[[str, str, bool], None] | None = None,
        registry: CollectorRegistry | None = None,
        backup_dir: Path | None = None,
        crash_at: str | None = None,
        tick_s: float = 0.2,
        lease_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        host_wait_s: float = 300.0,
    ) -> None:
        self._factory = factory
        self._hosts = hosts
        self._on_failure = on_failure
        self.on_progress = on_progress
        # Called with (tenant, host, True) before an instance is touched and with False after:
        # ``cpdops serve`` suppresses the instance's monitors meanwhile (the gate judges it).
        self.on_instance = on_instance
        self._metrics = RolloutMetrics(registry or CollectorRegistry())
        self._lock = threading.Lock()
        self._tick = tick_s
        self._lease = lease_s
        self._clock = clock
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # HA (``cpdops serve`` on PostgreSQL, orchestrator/leader.py): ``should_run`` says
        # whether this process may run rollouts now (it leads); ``dead_owners`` names, of the
        # given owners, the replicas whose process is gone, so their rollouts are taken over
        # without waiting for the lease (after ``dead_grace_s`` of absence: a replica that
        # reconnects after a database blip is not declared dead).
        self.should_run: Callable[[], bool] | None = None
        self.dead_owners: Callable[[list[str]], set[str]] | None = None
        self.dead_grace_s = 3.0
        self._absent_since: dict[str, float] = {}
        self._worker = InstanceWorker(
            factory,
            hosts,
            stop_timeout_s=stop_timeout_s,
            backup_dir=backup_dir or Path("/var/lib/cpdops/backups"),
            crashpoint=self._crashpoint,
            report=self._report,
            rollback_seconds=self._metrics.rollback_seconds,
            pause=self._pause_for_fault,
            host_wait_s=host_wait_s,
        )
        if crash_at is not None and crash_at not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {crash_at!r}; expected one of {CRASH_POINTS}")
        self._crash_at = crash_at

    # --- create ---------------------------------------------------------------------------
    def plan(self, request: RolloutRequest) -> tuple[list[PlannedInstance], str | None]:
        """The dry run: the ordered, wave-assigned instances and the target version.

        Raises InputError for an unknown tenant/host/image and HostUnreachable when a target
        host does not answer. Nothing is stored or touched.
        """
        request.strategy.check_rules()
        hosts = self._hosts.hosts()
        if request.hosts:
            unknown = sorted(set(request.hosts) - {h.name for h in hosts})
            if unknown:
                raise InputError(f"unknown host(s): {', '.join(unknown)}")
            hosts = [h for h in hosts if h.name in request.hosts]
        found = discover(hosts)
        if found.errors:
            from orchestrator.errors import HostUnreachable

            # Planning on a partial view could miss instances: refuse, naming the hosts.
            raise HostUnreachable(
                "cannot plan: host(s) not answering: "
                + "; ".join(f"{name}: {err}" for name, err in sorted(found.errors.items()))
            )
        with self._factory() as s:
            rings = {t.slug: t.ring for t in s.scalars(select(Tenant))}
        plan = select_instances(request, found.instances, rings)
        return plan, self._check_image(request.image, {p.host for p in plan}, hosts)

    def create(self, request: RolloutRequest, *, actor: str = "cli", claim: bool = False) -> int:
        """Plan and store a rollout (``plan`` errors, plus ConflictError when an instance
        already belongs to an active rollout). With ``claim`` this process takes the lease
        at once, as the caller is about to ``run`` it."""
        plan, target_version = self.plan(request)
        scheduled = request.schedule.at is not None or request.schedule.window
        with self._lock, session_scope(self._factory) as s:
            busy = s.execute(
                select(RolloutInstance.rollout_id, RolloutInstance.tenant, RolloutInstance.host)
                .join(Rollout)
                .where(Rollout.status.in_(RUNNABLE))
            ).all()
            taken = {(t, h): rid for rid, t, h in busy}
            for p in plan:
                if (p.tenant, p.host) in taken:
                    raise ConflictError(
                        f"instance {p.tenant}@{p.host} is held by active rollout "
                        f"{taken[(p.tenant, p.host)]}"
                    )
            rollout = Rollout(
                image=request.image,
                target_version=target_version,
                status="scheduled" if scheduled else "pending",
                scheduled_for=request.schedule.at,
                selection=request.model_dump(
                    mode="json", include={"tenants", "hosts", "rings", "labels"}
                ),
                options=request.model_dump(
                    mode="json", include={"gate", "strategy", "backup", "migrate", "schedule"}
                ),
                created_by=actor,
                progress={},
                owner=self.owner if claim else None,
                lease_until=(datetime.now(UTC) + timedelta(seconds=self._lease) if claim else None),
            )
            s.add(rollout)
            for p in plan:
                rollout.instances.append(
                    RolloutInstance(
                        position=p.position,
                        wave=p.wave,
                        tenant=p.tenant,
                        host=p.host,
                        container_name=p.container_name,
                        old_image=p.image,
                        old_version=p.version,
                    )
                )
            s.flush()
            s.add(
                AuditEntry(
                    actor=actor,
                    action="rollout.create",
                    target=f"rollout/{rollout.id}",
                    detail={"image": request.image, "instances": len(plan)},
                )
            )
            return rollout.id

    def _check_image(self, image: str, used: set[str], hosts: list[DockerHost]) -> str | None:
        versions: set[str | None] = set()
        for host in hosts:
            if host.name not in used:
                continue
            try:
                labels = host.ensure_image(image)
            except ImageNotFound as exc:
                raise InputError(str(exc)) from exc
            versions.add(labels.get(VERSION_LABEL))
        if len(versions) > 1:
            raise InputError(
                f"image {image} differs between hosts (versions {sorted(map(str, versions))})"
            )
        return versions.pop() if versions else None

    # --- control --------------------------------------------------------------------------
    def control(self, rollout_id: int, action: str, *, actor: str = "cli") -> str:
        """Record an operator's request; the process running the rollout applies it."""
        if action not in CONTROLS:
            raise InputError(f"unknown action {action!r}; expected one of {', '.join(CONTROLS)}")
        if action == "abort":
            self._check_abort(rollout_id)
        with session_scope(self._factory) as s:
            rollout = s.get(Rollout, rollout_id)
            if rollout is None:
                from orchestrator.errors import NotFoundError

                raise NotFoundError(f"no rollout {rollout_id}")
            refusal = control_refusal(
                rollout_id,
                action,
                rollout.status,
                rollout.control,
                [i.state for i in rollout.instances],
            )
            if refusal is not None:
                raise ConflictError(refusal)
            rollout.control = action
            if action == "approve":
                _approve_now(rollout)
            if action == "rollback":
                rollout.progress = {**rollout.progress, "manual_rollback": True}
                if rollout.status in ("succeeded", "aborted"):
                    rollout.status = "rolling_back"
            if action == "abort" and rollout.status in ("pending", "scheduled"):
                rollout.status, rollout.control = "aborted", None
                rollout.finished_at = datetime.now(UTC)
            s.add(
                AuditEntry(actor=actor, action=f"rollout.{action}", target=f"rollout/{rollout_id}")
            )
            return rollout.status

    def _check_abort(self, rollout_id: int) -> None:
        """An abort reconciles the instances a host fault interrupted (``decide.Reconcile``):
        refused (409) while one of their hosts does not answer."""
        with self._factory() as s:
            r = s.get(Rollout, rollout_id)
            if r is None or r.status != "paused":
                return
            stuck = [(i.host, i.tenant) for i in r.instances if self._worker.interrupted(i.id)]
        silent: dict[str, list[str]] = {}
        for host, tenant in stuck:
            if host in silent:
                silent[host].append(tenant)
                continue
            try:
                self._hosts.get(host).ping()
            except DockerError:
                silent[host] = [tenant]
        refusal = faults.abort_refusal(rollout_id, silent)
        if refusal is not None:
            raise ConflictError(refusal)

    # --- run ------------------------------------------------------------------------------
    def run(self, rollout_id: int) -> str:
        """Run (or take over, or finish reverting) a rollout to its end; the final status."""
        self._acquire(rollout_id)
        image, hosts = "", []
        try:
            with session_scope(self._factory) as s:
                rollout = s.get_one(Rollout, rollout_id)
                if rollout.status in decide.FINAL:
                    return rollout.status
                if rollout.status in ("pending", "scheduled"):
                    rollout.status = "running"
                    rollout.started_at = datetime.now(UTC)
                image = rollout.image
                strategy = Strategy.model_validate(rollout.options.get("strategy") or {})
                hosts = sorted({i.host for i in rollout.instances})
            log.info("rollout running rollout=%s image=%s owner=%s", rollout_id, image, self.owner)
            self.reconcile(rollout_id)
            for name in hosts:  # pre-pull on every target host before the first wave
                try:
                    self._hosts.get(name).ensure_image(image)
                except HostUnreachable as exc:  # its instances wait for it (or pause) in turn
                    log.warning("pre-pull skipped rollout=%s host=%s: %s", rollout_id, name, exc)
                    continue
                self._worker.prepulled.add((name, image))
            return self._loop(rollout_id, strategy)
        finally:
            self._worker.prepulled.difference_update((name, image) for name in hosts)
            self._release(rollout_id)

    def _loop(self, rollout_id: int, strategy: Strategy) -> str:
        # Instance id -> its running step and job. A finished one is popped (and its monitors
        # released) before the next look at the journal, so its slot is refilled at once.
        futures: dict[int, tuple[Future[None], InstanceJob]] = {}
        renewed = time.monotonic()  # the lease is wall time, whatever clock decides windows
        quick = 0  # decisions in a row without waiting (bounded: no busy loop on a bug)
        with ThreadPoolExecutor(
            max_workers=strategy.parallelism, thread_name_prefix=f"rollout-{rollout_id}"
        ) as pool:
            while True:
                for iid in [i for i, (f, _) in futures.items() if f.done()]:
                    self._pop(futures, iid)
                if self.should_run is not None and not self.should_run():
                    raise ConflictError(
                        f"rollout {rollout_id}: this replica no longer leads; "
                        "the leader takes the rollout over"
                    )
                if time.monotonic() - renewed >= self._lease / 3:
                    self._keep_lease(rollout_id)
                    renewed = time.monotonic()
                view, actions, jobs = self._decide(rollout_id, strategy)
                until: float | None = None
                acted = False  # a bookkeeping action changed the view: decide again at once
                for action in actions:
                    if isinstance(action, Update | Revert | Reconcile):
                        job = jobs[action.instance_id]
                        if action.instance_id in futures:  # its last step is just returning
                            self._pop(futures, action.instance_id)
                        state = decide.REVERTING if isinstance(action, Revert) else decide.UPDATING
                        self._set_instance(action.instance_id, state=state)
                        self._hold(job, True)
                        run = (
                            self._worker.update
                            if isinstance(action, Update)
                            else self._worker.revert
                            if isinstance(action, Revert)
                            else self._worker.settle
                        )
                        futures[action.instance_id] = (pool.submit(self._guarded, run, job), job)
                    elif isinstance(action, SetStatus):
                        self._set_status(rollout_id, action, view)
                        acted = True
                    elif isinstance(action, MarkWaveDone):
                        self._progress_update(
                            rollout_id, _with_wave_done(action.wave, self._clock())
                        )
                        acted = True
                        if action.wave + 1 < len({i.wave for i in view.instances}):
                            self._crashpoint("mid_bake")
                    elif isinstance(action, Approve):
                        self._progress_update(rollout_id, _with_approved(action.wave))
                        self._clear_control(rollout_id)
                        acted = True
                    elif isinstance(action, Verify):
                        if self._verify(rollout_id, action, strategy):
                            self._progress_update(rollout_id, _with_verified)
                        acted = True
                    elif isinstance(action, Finish):
                        for iid in list(futures):
                            futures[iid][0].exception()  # waits
                            self._pop(futures, iid)
                        return self._finish(rollout_id, action, strategy)
                    elif isinstance(action, Wait) and action.until is not None:
                        until = action.until
                self._notify(rollout_id)
                if acted and quick < 3:
                    quick += 1
                    continue
                quick = 0
                timeout = self._tick
                if until is not None:
                    timeout = max(0.0, min(self._tick * 5, until - self._clock()))
                if futures:  # returns at once when one has finished meanwhile
                    wait_futures(
                        [f for f, _ in futures.values()],
                        timeout=timeout,
                        return_when="FIRST_COMPLETED",
                    )
                else:
                    time.sleep(timeout)

    def _verify(self, rollout_id: int, action: Verify, strategy: Strategy) -> bool:
        """``decide.Verify``: every updated instance running and healthy now, as many at once
        as the rollout runs (``InstanceWorker.verify``). False when one paused the rollout
        (its host did not answer): the verification is done again once it is resumed."""
        with self._factory() as s:
            r = s.get_one(Rollout, rollout_id)
            rows = {i.id: i for i in r.instances}
            jobs = [InstanceJob.from_rows(r, rows[iid]) for iid in action.instance_ids]

        def one(job: InstanceJob) -> bool:
            try:
                return self._worker.verify(job)
            except Exception as exc:  # as _guarded: the instance is marked, the rollout decides
                log.exception("verify crashed rollout=%s tenant=%s", rollout_id, job.tenant)
                error = f"internal error: {exc}"
                self._set_instance(job.instance_id, state=decide.ERROR, error=error)
                return True

        workers = max(1, min(strategy.parallelism, len(jobs)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
            checks = [pool.submit(one, job) for job in jobs]
            # a check may wait for a silent host for CPDOPS_HOST_WAIT_S: the lease is kept
            while wait_futures(checks, timeout=self._lease / 3).not_done:
                self._keep_lease(rollout_id)
            return all(f.result() for f in checks)

    def _pop(self, futures: dict[int, tuple[Future[None], InstanceJob]], iid: int) -> None:
        future, job = futures.pop(iid)
        future.result()  # _guarded never raises; a bug in it should not pass silently
        self._hold(job, False)

    def _guarded(self, fn: Callable[[InstanceJob], None], job: InstanceJob) -> None:
        try:
            fn(job)
        except Exception as exc:  # the instance is marked; the rollout goes on deciding
            log.exception("instance step crashed rollout=%s tenant=%s", job.rollout_id, job.tenant)
            self._set_instance(job.instance_id, state=decide.ERROR, error=f"internal error: {exc}")

    # --- state ------------------------------------------------------------------------------
    def _decide(
        self, rollout_id: int, strategy: Strategy
    ) -> tuple[RolloutView, list[decide.Action], dict[int, InstanceJob]]:
        """Read the rollout, ask ``next_actions``; jobs for the instances it starts."""
        now = self._clock()
        with self._factory() as s:
            r = s.get_one(Rollout, rollout_id)
            window = bool((r.options.get("schedule") or {}).get("window"))
            tenants = {t.slug: t for t in s.scalars(select(Tenant))} if window else {}
            rows = {i.id: i for i in r.instances}
            aborting = r.control == "abort"
            instances = tuple(
                InstanceView(
                    id=i.id,
                    wave=i.wave,
                    host=i.host,
                    state=i.state,
                    eligible=(not window) or _tenant_window_open(tenants.get(i.tenant), now),
                    interrupted=aborting
                    and i.state == decide.PENDING
                    and self._worker.interrupted(i.id),
                )
                for i in rows.values()
            )
            p = r.progress or {}
            view = RolloutView(
                status=r.status,
                strategy=strategy,
                instances=instances,
                now=now,
                control=r.control,
                approved=frozenset(p.get("approved", [])),
                wave_done_at={int(k): float(v) for k, v in (p.get("wave_done_at") or {}).items()},
                acknowledged_failures=int(p.get("acknowledged_failures", 0)),
                manual_rollback=bool(p.get("manual_rollback")),
                paused_rollback=bool(p.get("paused_rollback")),
                verified=bool(p.get("verified")),
            )
            actions = next_actions(view)
            jobs = {
                a.instance_id: InstanceJob.from_rows(r, rows[a.instance_id])
                for a in actions
                if isinstance(a, Update | Revert | Reconcile)
            }
        return view, actions, jobs

    def _set_status(self, rollout_id: int, action: SetStatus, view: RolloutView) -> None:
        with session_scope(self._factory) as s:
            r = s.get_one(Rollout, rollout_id)
            old = r.status
            r.status = action.status
            progress = dict(r.progress or {})
            progress["reason"] = action.reason
            if action.status == "running" and r.control == "resume":
                failures = sum(
                    1 for i in view.instances if i.state in (decide.FAILED, decide.ERROR)
                )
                progress["acknowledged_failures"] = failures
            r.progress = progress
            if r.control in ("pause", "resume", "approve"):
                r.control = None
            if action.status == "running":
                r.error = None  # e.g. the host or disk fault it was paused on
            if action.status == "rolling_back" and r.control == "rollback":
                progress["manual_rollback"] = True
            if action.status == "rolling_back":
                before = progress.pop("paused_rollback", None)
                if isinstance(before, str) and r.control != "rollback":
                    progress["reason"] = before  # why it rolls back, not how it went on
                r.error = None
            image = r.image
        log.info(
            "rollout status rollout=%s %s -> %s reason=%s",
            rollout_id,
            old,
            action.status,
            action.reason,
        )
        if (
            action.status == "rolling_back"
            and not view.manual_rollback
            and not view.paused_rollback  # reported when the rollback began
            and view.control != "rollback"
        ):
            self._report_rollout(rollout_id, image, action.reason)

    def _pause_for_fault(self, rollout_id: int, reason: str) -> None:
        """An instance met a fault of the environment (host unreachable past
        CPDOPS_HOST_WAIT_S, backup disk full): pause with the reason; ``resume`` goes on."""
        with session_scope(self._factory) as s:
            r = s.get_one(Rollout, rollout_id)
            progress = {**(r.progress or {}), "reason": reason}
            if r.status == "rolling_back":  # resume or abort finishes the rollback
                # the rollback's own reason, given back when it goes on
                progress["paused_rollback"] = (r.progress or {}).get("reason") or "rolling back"
            if r.status in (
                "running",
                "awaiting_approval",
                "waiting_window",
                "paused",
                "rolling_back",
            ):
                r.status = "paused"
            r.progress = progress
            r.error = reason
        log.warning("rollout paused rollout=%s reason=%s", rollout_id, reason)
        self._notify(rollout_id)

    def _progress_update(
        self, rollout_id: int, fn: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        with session_scope(self._factory) as s:
            r = s.get_one(Rollout, rollout_id)
            r.progress = fn(dict(r.progress or {}))

    def _clear_control(self, rollout_id: int) -> None:
        with session_scope(self._factory) as s:
            r = s.get_one(Rollout, rollout_id)
            if r.control in ("pause", "resume", "approve"):
                r.control = None
            if r.status == "awaiting_approval":
                r.status = "running"

    def _set_instance(self, instance_id: int, **fields: Any) -> None:
        with session_scope(self._factory) as s:
            row = s.get_one(RolloutInstance, instance_id)
            for key, value in fields.items():
                setattr(row, key, value)

    def _finish(self, rollout_id: int, action: Finish, strategy: Strategy) -> str:
        """Drop the kept previous containers, close the rollout, tell who listens."""
        with self._factory() as s:
            kept = s.execute(
                select(RolloutInstance.host, RolloutInstance.old_container_id).where(
                    RolloutInstance.rollout_id == rollout_id,
                    RolloutInstance.state == decide.UPDATED,
                    RolloutInstance.old_container_id.is_not(None),
                )
            ).all()

        def drop(host_name: str, old_id: str) -> None:
            try:
                self._hosts.get(host_name).remove(old_id, force=True)
            except DockerError as exc:
                log.warning(
                    "could not remove kept container host=%s id=%s: %s", host_name, old_id, exc
                )

        if kept:  # as many at once as the rollout ran
            with ThreadPoolExecutor(max_workers=min(strategy.parallelism, len(kept))) as pool:
                list(pool.map(lambda row: drop(str(row[0]), str(row[1])), kept))
        with session_scope(self._factory) as s:
            rollout = s.get_one(Rollout, rollout_id)
            rollout.status = action.status
            rollout.error = None if action.status == "succeeded" else action.reason
            if action.status == "failed":
                rollout.error = (rollout.progress or {}).get("reason") or action.reason
            rollout.control = None
            # the reason it ended, not the last one it waited on ("approve to start wave 2")
            rollout.progress = {**(rollout.progress or {}), "reason": action.reason}
            rollout.finished_at = datetime.now(UTC)
            if rollout.started_at is not None:
                self._metrics.duration.observe(
                    (rollout.finished_at - rollout.started_at).total_seconds()
                )
        self._metrics.results.labels(result=action.status).inc()
        log.info("rollout finished rollout=%s status=%s", rollout_id, action.status)
        self._notify(rollout_id)
        return action.status

    # --- lease ------------------------------------------------------------------------------
    def _acquire(self, rollout_id: int) -> None:
        now = datetime.now(UTC)
        dead = self._dead_now()
        with session_scope(self._factory) as s:
            result = s.execute(
                update(Rollout)
                .where(
                    Rollout.id == rollout_id,
                    or_(
                        Rollout.owner.is_(None),
                        Rollout.owner == self.owner,
                        Rollout.lease_until.is_(None),
                        Rollout.lease_until < now,
                        Rollout.owner.in_(dead),
                    ),
                )
                .values(owner=self.owner, lease_until=now + timedelta(seconds=self._lease))
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                r = s.get(Rollout, rollout_id)
                if r is None:
                    from orchestrator.errors import NotFoundError

                    raise NotFoundError(f"no rollout {rollout_id}")
                raise ConflictError(
                    f"rollout {rollout_id} is being run by {r.owner} (lease until "
                    f"{r.lease_until:%H:%M:%S}); use pause/resume/abort to steer it"
                )

    def _renew(self, rollout_id: int) -> bool:
        """Extend the lease; False when this process no longer owns the rollout."""
        with session_scope(self._factory) as s:
            result = s.execute(
                update(Rollout)
                .where(Rollout.id == rollout_id, Rollout.owner == self.owner)
                .values(lease_until=datetime.now(UTC) + timedelta(seconds=self._lease))
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def _keep_lease(self, rollout_id: int) -> None:
        """``_renew``, or stop this runner (ConflictError) when the lease was lost."""
        if not self._renew(rollout_id):
            raise ConflictError(
                f"rollout {rollout_id}: the lease was lost (another process took "
                "the rollout over); this runner stops"
            )

    def _release(self, rollout_id: int) -> None:
        with session_scope(self._factory) as s:
            s.execute(
                update(Rollout)
                .where(Rollout.id == rollout_id, Rollout.owner == self.owner)
                .values(owner=None, lease_until=None)
            )

    # --- crash recovery ----------------------------------------------------------------------
    def reconcile(self, rollout_id: int) -> None:
        """Bring every instance a dead process left mid-step to a known state (see instance.py)."""
        with self._factory() as s:
            r = s.get_one(Rollout, rollout_id)
            everyone = [i.id for i in r.instances]
            jobs = [
                InstanceJob.from_rows(r, i)
                for i in r.instances
                if i.state in (decide.UPDATING, decide.REVERTING)
            ]
        # the steps a dead runner left ``started`` say so (before anything is done again)
        self._worker.close_dangling(everyone)
        for job in jobs:
            try:
                self._worker.reconcile(job)
            except (HostUnreachable, PortHeld) as exc:  # reconciled when its update runs again
                log.warning(
                    "reconcile deferred rollout=%s tenant=%s host=%s: %s",
                    rollout_id,
                    job.tenant,
                    job.host,
                    exc,
                )
                self._worker.mark_unreached(job, str(exc))

    def resumable(self) -> list[int]:
        """Rollouts that should be running but whose runner's lease has lapsed, or whose
        runner was a replica that is gone (``dead_owners``)."""
        now = datetime.now(UTC)
        with self._factory() as s:
            if self.dead_owners is not None:
                held = list(
                    s.scalars(
                        select(Rollout.owner)
                        .where(Rollout.status.in_(decide.ACTIVE), Rollout.owner.is_not(None))
                        .distinct()
                    )
                )
                self._observe_owners([o for o in held if o and o != self.owner])
            return list(
                s.scalars(
                    select(Rollout.id).where(
                        Rollout.status.in_(decide.ACTIVE),
                        or_(
                            Rollout.lease_until.is_(None),
                            Rollout.lease_until < now,
                            Rollout.owner.in_(self._dead_now()),
                        ),
                    )
                )
            )

    def _observe_owners(self, owners: list[str]) -> None:
        assert self.dead_owners is not None
        dead = self.dead_owners(owners)
        mono = time.monotonic()
        self._absent_since = {o: self._absent_since.get(o, mono) for o in dead}

    def _dead_now(self) -> list[str]:
        """Owners seen gone for at least ``dead_grace_s``."""
        mono = time.monotonic()
        return sorted(o for o, t in self._absent_since.items() if mono - t >= self.dead_grace_s)

    # --- hooks --------------------------------------------------------------------------------
    def _crashpoint(self, name: str) -> None:
        if self._crash_at == name:
            log.warning("test crash point reached: %s: SIGKILL", name)
            os.kill(os.getpid(), signal.SIGKILL)

    def _hold(self, job: InstanceJob, active: bool) -> None:
        if self.on_instance is None:
            return
        try:
            self.on_instance(job.tenant, job.host, active)
        except Exception:
            log.exception("instance hook failed tenant=%s host=%s", job.tenant, job.host)

    def _notify(self, rollout_id: int) -> None:
        if self.on_progress is not None:
            self.on_progress(rollout_id)

    def _report(self, failure: RolloutFailure) -> None:
        if self._on_failure is None:
            return
        try:
            self._on_failure(failure)
        except Exception:
            log.exception("failure hook failed rollout=%s", failure.rollout_id)

    def _report_rollout(self, rollout_id: int, image: str, reason: str) -> None:
        self._report(
            RolloutFailure(rollout_id, image, "", "", f"rolling back: {reason}", {"step": "budget"})
        )


Progress = Callable[[dict[str, Any]], dict[str, Any]]


def _with_wave_done(wave: int, now: float) -> Progress:
    def apply(progress: dict[str, Any]) -> dict[str, Any]:
        done = dict(progress.get("wave_done_at") or {})
        done.setdefault(str(wave), now)
        return {**progress, "wave_done_at": done}

    return apply


def _with_verified(progress: dict[str, Any]) -> dict[str, Any]:
    return {**progress, "verified": True}


def _with_approved(wave: int) -> Progress:
    def apply(progress: dict[str, Any]) -> dict[str, Any]:
        return {**progress, "approved": sorted({*progress.get("approved", []), wave})}

    return apply


def _approve_now(rollout: Rollout) -> None:
    """Record an approval at once (not when the runner next looks): the wave that waits for
    it is approved and the rollout is ``running`` from this answer on — the API's reply and
    every list show it so; the runner starts the wave at its next decision."""
    waiting = [i.wave for i in rollout.instances if i.state in (decide.PENDING, *decide.BUSY)]
    if rollout.status != "awaiting_approval" or not waiting:
        return  # the runner applies the request (decide.Approve)
    wave = min(waiting)
    progress = _with_approved(wave)(dict(rollout.progress or {}))
    rollout.progress = {**progress, "reason": f"approved: wave {wave + 1} starts"}
    rollout.status, rollout.control = "running", None


def _tenant_window_open(tenant: Tenant | None, now: float) -> bool:
    if tenant is None or not tenant.maintenance_window:
        return False
    w = tenant.maintenance_window
    return window_open(str(w["cron"]), w["duration"], tenant.timezone, now)
