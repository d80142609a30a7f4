"""Shared fixtures: a store on SQLite and on a real PostgreSQL (CPDOPS_TEST_PG_URL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.pgdb import drop_database

PG_ENV = "CPDOPS_TEST_PG_URL"

# No registry is reachable here and tests must not send traffic off this machine: never let an
# engine try to pull (this also reaches the `cpdops` subprocesses the tests start).
os.environ["CPDOPS_PULL_POLICY"] = "never"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the test daemons (``docker_hosts``, directly or through another
    fixture) is marked ``docker``, so ``-m docker`` / ``-m "not docker"`` split the suite
    exactly (scripts/test.sh runs the two halves side by side)."""
    for item in items:
        if "docker_hosts" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)


def _pg_admin_url() -> str | None:
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CPDOPS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{PG_ENV} is not set but CPDOPS_REQUIRE_POSTGRES=1")
        return None
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new database on the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cpdops.db'}"
        return
    admin = _pg_admin_url()
    if admin is None:
        pytest.skip(f"PostgreSQL not configured ({PG_ENV})")
    name = f"cpdops_t_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        drop_database(engine, name)
        engine.dispose()
