"""APScheduler 3: a persistent job store for scheduled work, an in-memory one for loops."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from orchestrator.context import AppContext, sync_monitors

log = logging.getLogger(__name__)


def make_scheduler(ctx: AppContext) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(
        jobstores={
            "default": SQLAlchemyJobStore(engine=ctx.engine, tablename="apscheduler_jobs"),
            "internal": MemoryJobStore(),
        },
        executors={"default": ThreadPoolExecutor(8)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
        timezone=UTC,
    )
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
    return scheduler


def run_rollout_now(scheduler: BackgroundScheduler, ctx: AppContext, rollout_id: int) -> None:
    """Queue a created rollout for immediate execution in the scheduler's pool."""
    scheduler.add_job(
        ctx.executor.run,
        args=[rollout_id],
        id=f"rollout-{rollout_id}",
        jobstore="internal",
        next_run_time=datetime.now(UTC),
        misfire_grace_time=None,
    )
