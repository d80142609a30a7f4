"""What the state database holds, for the tests that prove a secret never reaches it."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import text

from orchestrator.db.session import make_engine


def assert_not_stored(db_url: str, tables: Iterable[str], secrets: Iterable[str]) -> None:
    """Each of ``tables`` has rows, and none of its columns holds any of ``secrets``."""
    wanted = tuple(secrets)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            for table in tables:
                stored = repr(conn.execute(text(f"SELECT * FROM {table}")).all())
                assert stored != "[]", table
                for secret in wanted:
                    assert secret not in stored, (table, secret, stored)
    finally:
        engine.dispose()
