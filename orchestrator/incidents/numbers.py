"""Ticket numbers in the OTRS/Znuny "DateChecksum" form (pure).

``YYYYMMDD`` + 2-digit system id + 5-digit daily counter + 1 check digit, e.g.
``2026112501000017``. The check digit weighs the digits 1, 2, 1, 2, …; it is
``10 - (sum mod 10)``, and 10 becomes 1.
"""

from __future__ import annotations

import re
from datetime import date

NUMBER_RE = re.compile(r"^\d{8}\d{2}\d{5}\d$")
MAX_COUNTER = 99_999


def check_digit(digits: str) -> int:
    total = 0
    for i, ch in enumerate(digits):
        total += (1 if i % 2 == 0 else 2) * int(ch)
    digit = 10 - (total % 10)
    return 1 if digit == 10 else digit


def format_number(day: date, system_id: str, counter: int) -> str:
    if not (len(system_id) == 2 and system_id.isdigit()):
        raise ValueError(f"system id must be two digits, got {system_id!r}")
    if not 1 <= counter <= MAX_COUNTER:
        raise ValueError(f"daily ticket counter out of range: {counter}")
    body = f"{day:%Y%m%d}{system_id}{counter:05d}"
    return body + str(check_digit(body))


def is_valid_number(number: str) -> bool:
    return bool(NUMBER_RE.match(number)) and check_digit(number[:-1]) == int(number[-1])
