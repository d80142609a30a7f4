"""Maintenance windows: ``cron`` (crontab syntax, in the tenant's zone) + ``duration`` (pure)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from orchestrator.fleet.fleetfile import parse_duration

_DOW = {0: "sun", 1: "mon", 2: "tue", 3: "wed", 4: "thu", 5: "fri", 6: "sat", 7: "sun"}


def crontab_dow(field: str) -> str:
    """crontab counts days of week from Sunday = 0 (and 7); APScheduler from Monday = 0:
    translate the numbers to names, which both read the same way. Steps stay numbers."""
    return re.sub(r"(?<![/\d])(\d)(?!\d)", lambda m: _DOW[int(m.group(1))], field)


def cron_trigger(cron: str, timezone: str) -> CronTrigger:
    minute, hour, day, month, dow = cron.split()
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=crontab_dow(dow),
        timezone=ZoneInfo(timezone),
    )


def _seconds(duration: str | float) -> float:
    return parse_duration(duration) if isinstance(duration, str) else float(duration)


def window_open(cron: str, duration: str | float, timezone: str, now: float) -> bool:
    """Is a window that starts on ``cron`` and lasts ``duration`` open at epoch ``now``?"""
    zone = ZoneInfo(timezone)
    at = datetime.fromtimestamp(now, zone)
    start = cron_trigger(cron, timezone).get_next_fire_time(
        None, at - timedelta(seconds=_seconds(duration))
    )
    return start is not None and start <= at


def next_window_start(cron: str, timezone: str, after: datetime) -> datetime | None:
    fire: datetime | None = cron_trigger(cron, timezone).get_next_fire_time(None, after)
    return fire
