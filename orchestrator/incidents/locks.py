"""One writer at a time per database for the parts that read, decide and write: correlation,
the recovery check and the Alertmanager intake. Across threads and replicas alike, until the
transaction ends."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

# pg_advisory_xact_lock key ("cpdc").
LOCK_KEY = 0x63706463


def one_writer(s: Session) -> None:
    """PostgreSQL: a transaction-level advisory lock; SQLite: take the database's write lock
    now (an UPDATE that matches nothing), so the reads that follow already see the last
    writer's commit."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    else:
        s.execute(text("UPDATE ticket_counters SET value = value WHERE 0 = 1"))
