"""APScheduler 3: a persistent job store for scheduled rollouts, an in-memory one for loops.

Scheduled rollouts are date jobs in the SQLAlchemy job store (table ``apscheduler_jobs`` of
the cpdops database), so they survive a restart; a job names its function by module path,
so ``run_scheduled_rollout`` finds the running process's context through ``bind`` — the one
process-level binding in cpdops, made by ``make_scheduler``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from datetime import UTC, datetime

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select

from orchestrator import monitor_changes
from orchestrator.context import AppContext, apply_maintenance, sync_monitors
from orchestrator.db.models import Rollout, Tenant
from orchestrator.db.session import session_scope
from orchestrator.errors import ConflictError, CpdopsError, InputError
from orchestrator.incidents import outbox
from orchestrator.monitor_history import flush
from rollouts.windows import next_window_start, window_open

log = logging.getLogger(__name__)

_bound: dict[str, AppContext] = {}
# A scheduled rollout whose time passed while cpdops was down starts late within this; past
# it the job is missed and the rollout ends aborted (``drop_missed_rollout``).
MISFIRE_GRACE_S = 24 * 3600


def bind(ctx: AppContext) -> None:
    _bound["ctx"] = ctx


def make_scheduler(ctx: AppContext, *, with_loops: bool = True) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(
        jobstores={
            "default": SQLAlchemyJobStore(engine=ctx.engine, tablename="apscheduler_jobs"),
            "internal": MemoryJobStore(),
        },
        executors={"default": ThreadPoolExecutor(16)},
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": MISFIRE_GRACE_S,
        },
        timezone=UTC,
    )
    bind(ctx)
    scheduler.add_listener(lambda event: drop_missed_rollout(ctx, event), EVENT_JOB_MISSED)
    if not with_loops:
        return scheduler
    if ctx.monitors is not None:
        scheduler.add_job(
            sync_monitors,
            "interval",
            args=[ctx],
            seconds=ctx.settings.discovery_interval_s,
            next_run_time=datetime.now(UTC),
            id="sync-monitors",
            jobstore="internal",
            replace_existing=True,
        )
    if ctx.monitors is not None and ctx.history is not None:
        scheduler.add_job(
            flush,
            "interval",
            args=[ctx.factory, ctx.history],
            seconds=10,
            id="flush-history",
            jobstore="internal",
            replace_existing=True,
        )
        scheduler.add_job(
            apply_maintenance,
            "interval",
            args=[ctx],
            seconds=5,
            id="maintenance",
            jobstore="internal",
            replace_existing=True,
        )
    if ctx.monitors is not None:
        # Verified recovery: tickets whose monitors stayed UP for the hold → solution_provided.
        scheduler.add_job(
            ctx.incidents.check_recovery,
            "interval",
            seconds=ctx.settings.recovery_check_interval_s,
            id="check-recovery",
            jobstore="internal",
            replace_existing=True,
        )
        # DOWNs held by a rollout or a host fault (and its settle window): still DOWN once
        # nothing holds them, they open the tenant's incident (never hidden by the hold).
        scheduler.add_job(
            ctx.incidents.recheck_held,
            "interval",
            seconds=ctx.settings.recovery_check_interval_s,
            id="recheck-held",
            jobstore="internal",
            replace_existing=True,
        )
    if ctx.host_checker is not None:
        # Host health: every host pinged at once, each on its own thread (host_checks.py).
        scheduler.add_job(
            ctx.host_checker.check_all,
            "interval",
            seconds=ctx.settings.host_check_s,
            next_run_time=datetime.now(UTC),
            id="check-hosts",
            jobstore="internal",
            replace_existing=True,
        )
    scheduler.add_job(
        prune_monitor_changes,
        "interval",
        args=[ctx],
        seconds=monitor_changes.PRUNE_INTERVAL_S,
        next_run_time=datetime.now(UTC),
        id="prune-monitor-changes",
        jobstore="internal",
        replace_existing=True,
    )
    scheduler.add_job(
        deliver_outbox,
        "interval",
        args=[ctx],
        seconds=ctx.settings.outbox_interval_s,
        id="deliver-outbox",
        jobstore="internal",
        replace_existing=True,
    )
    scheduler.add_job(
        resume_rollouts,
        "interval",
        args=[scheduler, ctx],
        # a third of the lease, at most 2 s: a dead replica's rollout is taken over soon after
        # it is seen gone (RolloutExecutor.dead_owners)
        seconds=max(1.0, min(ctx.settings.rollout_lease_s / 3, 2.0)),
        next_run_time=datetime.now(UTC),
        id="resume-rollouts",
        jobstore="internal",
        replace_existing=True,
    )
    return scheduler


_OWNER = f"{socket.gethostname()}:{os.getpid()}"

# Jobs run at once when a replica becomes the leader: take over rollouts, probe.
_ON_ELECTION = ("resume-rollouts", "sync-monitors", "check-hosts")


def lead(scheduler: BackgroundScheduler, ctx: AppContext, leading: bool) -> None:
    """Leadership changed (orchestrator/leader.py): run or stop the once-only work."""
    if leading:
        scheduler.resume()
        now = datetime.now(UTC)
        for job_id in _ON_ELECTION:
            job = scheduler.get_job(job_id, jobstore="internal")
            if job is not None:
                job.modify(next_run_time=now)
        return
    # Stepped down: the once-only jobs stop. The monitors keep probing — stepping down mostly
    # means the database connection failed (a restart), when nobody else can lead either, and
    # their state changes wait in the change writer's queue — until another replica is known
    # to lead (``follow``). Re-elected, ``sync-monitors`` runs at once and keeps their state.
    scheduler.pause()


def follow(ctx: AppContext) -> None:
    """Another replica leads (orchestrator/leader.py): it probes the monitors and checks the
    hosts, this one stops (its host holds are released: the leader holds from its own view)."""
    if ctx.host_checker is not None:
        ctx.host_checker.reset()
    if ctx.monitors is not None:
        with ctx.monitor_lock:
            ctx.generated = []
        ctx.monitors.set_monitors([])


def prune_monitor_changes(ctx: AppContext) -> int:
    """Delete the ``monitor_changes`` rows older than the retention (bounded batches)."""
    deleted = monitor_changes.prune(ctx.factory, ctx.settings.monitor_changes_retention_days)
    if deleted:
        log.info(
            "monitor changes pruned rows=%d older_than_days=%s",
            deleted,
            ctx.settings.monitor_changes_retention_days,
        )
    return deleted


def deliver_outbox(ctx: AppContext) -> outbox.DeliveryReport:
    """Send the due notifications of the outbox (retries included)."""
    settings = ctx.settings
    return outbox.deliver_due(
        ctx.factory,
        datetime.now(UTC),
        owner=_OWNER,
        max_attempts=settings.outbox_max_attempts,
        retry_for_s=settings.outbox_retry_for_s,
        backoff_cap_s=settings.outbox_backoff_cap_s,
    )


def run_rollout_now(scheduler: BackgroundScheduler, ctx: AppContext, rollout_id: int) -> None:
    """Run a rollout in the scheduler's pool (unless this process already runs it)."""
    with contextlib.suppress(ConflictingIdError):
        scheduler.add_job(
            _run,
            args=[ctx, rollout_id],
            id=f"run-rollout-{rollout_id}",
            jobstore="internal",
            next_run_time=datetime.now(UTC),
            misfire_grace_time=None,
        )


def _run(ctx: AppContext, rollout_id: int) -> None:
    try:
        ctx.executor.run(rollout_id)
    except ConflictError as exc:
        log.info("rollout not taken rollout=%s: %s", rollout_id, exc)
    except CpdopsError as exc:
        log.error("rollout stopped rollout=%s error=%s", rollout_id, exc)


def resume_rollouts(scheduler: BackgroundScheduler, ctx: AppContext) -> list[int]:
    """Take over rollouts whose runner died (lease lapsed) and start unowned pending ones."""
    ids = ctx.executor.resumable()
    with ctx.factory() as s:
        ids += list(
            s.scalars(
                select(Rollout.id).where(Rollout.status == "pending", Rollout.owner.is_(None))
            )
        )
    for rollout_id in ids:
        run_rollout_now(scheduler, ctx, rollout_id)
    return ids


def schedule_rollout(scheduler: BackgroundScheduler, rollout_id: int, at: datetime) -> None:
    """A persistent date job: survives restarts; fires late (coalesced) if cpdops was down."""
    scheduler.add_job(
        run_scheduled_rollout,
        "date",
        run_date=at,
        args=[rollout_id],
        id=f"rollout-{rollout_id}",
        jobstore="default",
        replace_existing=True,
    )
    log.info("rollout scheduled rollout=%s at=%s", rollout_id, at.isoformat())


def run_scheduled_rollout(rollout_id: int) -> None:
    ctx = _bound.get("ctx")
    if ctx is None:  # pragma: no cover - a job store read by a process without a context
        log.error("scheduled rollout %s fired with no context bound", rollout_id)
        return
    _run(ctx, rollout_id)


def drop_missed_rollout(ctx: AppContext, event: JobExecutionEvent) -> int | None:
    """A scheduled rollout's date job was missed (cpdops was down past the misfire grace,
    24 h): APScheduler drops the job, so the rollout would stay ``scheduled`` forever,
    holding its instances against every later rollout. It is ended ``aborted`` instead
    (nothing was touched), with the reason; returns its id."""
    prefix = "rollout-"
    if not event.job_id.startswith(prefix) or not event.job_id[len(prefix) :].isdigit():
        return None
    rollout_id = int(event.job_id[len(prefix) :])
    with session_scope(ctx.factory) as s:
        r = s.get(Rollout, rollout_id)
        if r is None or r.status != "scheduled":
            return None
        when = event.scheduled_run_time
        r.status = "aborted"
        r.error = (
            f"its scheduled start ({when.isoformat()}) was missed by more than "
            f"{MISFIRE_GRACE_S // 3600} h (cpdops was not running): nothing was changed; "
            "start it again"
        )
        r.progress = {**(r.progress or {}), "reason": "scheduled start missed"}
        r.finished_at = datetime.now(UTC)
    log.warning("scheduled rollout missed rollout=%s at=%s", rollout_id, when.isoformat())
    return rollout_id


def first_start(ctx: AppContext, rollout_id: int) -> datetime:
    """When a scheduled rollout should first run: its ``at``, or the earliest opening of a
    selected tenant's maintenance window (now, if one is open)."""
    now = datetime.now(UTC)
    with ctx.factory() as s:
        r = s.get_one(Rollout, rollout_id)
        if r.scheduled_for is not None:
            return r.scheduled_for
        slugs = {i.tenant for i in r.instances}
        tenants = list(s.scalars(select(Tenant).where(Tenant.slug.in_(slugs))))
    starts = []
    for t in tenants:
        w = t.maintenance_window
        if not w:
            continue
        if window_open(str(w["cron"]), w["duration"], t.timezone, now.timestamp()):
            return now
        nxt = next_window_start(str(w["cron"]), t.timezone, now)
        if nxt is not None:
            starts.append(nxt)
    if not starts:
        raise InputError("--window: none of the selected tenants has a maintenance window")
    return min(starts)


def store_schedule(ctx: AppContext, rollout_id: int, at: datetime) -> None:
    """Write the date job from a process that runs no scheduler (the CLI)."""
    scheduler = make_scheduler(ctx, with_loops=False)
    scheduler.start(paused=True)
    try:
        schedule_rollout(scheduler, rollout_id, at)
    finally:
        scheduler.shutdown(wait=False)
