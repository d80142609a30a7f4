"""Dropping a test database on the test PostgreSQL."""

from __future__ import annotations

import time

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError


def drop_database(engine: Engine, name: str, *, attempts: int = 10) -> None:
    """``DROP DATABASE … WITH (FORCE)``, retried for a few seconds.

    FORCE terminates the database's other sessions, and PostgreSQL 15 refuses when one of them is
    an autovacuum worker and the role lacks ``pg_signal_backend`` (which ``start_postgres``
    grants); the worker is gone a moment later, so retrying also covers a server set up without
    the grant. The last failure is raised."""
    for attempt in range(attempts):
        try:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
