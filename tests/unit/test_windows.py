from datetime import UTC, datetime

import pytest

from rollouts.windows import crontab_dow, next_window_start, window_open


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("*", "*"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon-fri"),
        ("1,3,5", "mon,wed,fri"),
        ("*/2", "*/2"),
        ("sat", "sat"),
        ("6-7", "sat-sun"),
    ],
)
def test_crontab_dow(field: str, expected: str) -> None:
    assert crontab_dow(field) == expected


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize(
    ("cron", "duration", "zone", "at", "is_open"),
    [
        ("0 2 * * *", "2h", "UTC", "2026-11-25T02:00:00+00:00", True),
        ("0 2 * * *", "2h", "UTC", "2026-11-25T03:59:59+00:00", True),
        ("0 2 * * *", "2h", "UTC", "2026-11-25T04:00:01+00:00", False),
        ("0 2 * * *", "2h", "UTC", "2026-11-25T01:59:00+00:00", False),
        # 02:00 Moscow is 23:00 UTC the day before
        ("0 2 * * *", "1h", "Europe/Moscow", "2026-11-24T23:30:00+00:00", True),
        ("0 2 * * *", "1h", "Europe/Moscow", "2026-11-25T02:30:00+00:00", False),
        # 2026-11-29 is a Sunday: crontab 0 = Sunday
        ("0 1 * * 0", "3h", "UTC", "2026-11-29T02:00:00+00:00", True),
        ("0 1 * * 0", "3h", "UTC", "2026-11-30T02:00:00+00:00", False),
        ("0 1 * * 1-5", "3h", "UTC", "2026-11-30T02:00:00+00:00", True),  # Monday
        ("50 23 * * *", "20m", "UTC", "2026-11-26T00:05:00+00:00", True),  # spans midnight
    ],
)
def test_window_open(cron: str, duration: str, zone: str, at: str, is_open: bool) -> None:
    assert window_open(cron, duration, zone, ts(at)) is is_open


def test_next_window_start() -> None:
    start = next_window_start("0 2 * * *", "Europe/Moscow", datetime(2026, 11, 25, 12, tzinfo=UTC))
    assert start is not None
    assert start.astimezone(UTC) == datetime(2026, 11, 25, 23, 0, tzinfo=UTC)
