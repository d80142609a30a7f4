"""Fixtures for tests against real Docker engines (several dockerd on this machine, see dockerd.py).

* ``docker_hosts`` (session): ``list[DockerdHandle]``, one per daemon (``d1``, ``d2``, ``d3``).
* ``standin_images`` (session): ``{"1": "smartcpd-fake:1", "2": "smartcpd-fake:2",
  "2-fail-health": "smartcpd-fake:2-fail-health", "2-fail-migration": ...}`` (keyed by tag),
  built on ``d1``, copied to the others.
* ``remove_test_containers_after`` (function): removes ``cpdops.test=1`` containers on every
  daemon after the test, also when it fails.
* ``tenant_db`` (function): a fresh, empty tenant database on the test PostgreSQL
  (``CPDOPS_TEST_PG_URL``), dropped afterwards; a ``TenantDb`` with the DSN the orchestrator
  uses (``host_dsn``, 127.0.0.1) and, per daemon, the one its containers use
  (``container_dsn(host)``: the gateway of the daemon's bridge, 10.213.N.1 — PostgreSQL must
  listen there and let 10.213.0.0/16 in, which ``start_postgres`` in scripts/setup.sh sets up).

Without root or dockerd the Docker tests are skipped, unless ``CPDOPS_REQUIRE_DOCKER=1`` (CI),
which makes that an error.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from orchestrator.fleet.images import build_standin, copy_image
from tests.integration.dockerd import (
    DockerdFleet,
    DockerdHandle,
    docker_unavailable_reason,
    remove_test_containers,
)
from tests.pgdb import drop_database


@pytest.fixture(scope="session")
def docker_fleet(docker_hosts: list[DockerdHandle]) -> DockerdFleet:
    """The fleet behind ``docker_hosts``: for tests that stop and start a daemon
    (``docker_fleet.daemon_down("d2")``)."""
    return _FLEET[0]


_FLEET: list[DockerdFleet] = []


@pytest.fixture(scope="session")
def docker_hosts() -> Iterator[list[DockerdHandle]]:
    reason = docker_unavailable_reason()
    if reason is not None:
        if os.environ.get("CPDOPS_REQUIRE_DOCKER") == "1":
            pytest.fail(f"CPDOPS_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    docker0 = Path("/sys/class/net/docker0")
    had_docker0 = docker0.exists()
    fleet = DockerdFleet()
    handles = fleet.start()
    _FLEET[:] = [fleet]
    try:
        yield handles
    finally:
        _FLEET.clear()
        fleet.stop()
    # The machine's own engine must be left as it was (a test daemon once deleted docker0).
    assert docker0.exists() == had_docker0, "the test daemons removed the host's docker0 bridge"


@pytest.fixture(scope="session")
def standin_images(docker_hosts: list[DockerdHandle]) -> dict[str, str]:
    first, *others = docker_hosts
    tags = {
        "1": build_standin(first.client, "1"),
        "2": build_standin(first.client, "2"),
        "2-fail-health": build_standin(first.client, "2", fail="health"),
        "2-fail-migration": build_standin(first.client, "2", fail="migration"),
    }
    for host in others:
        for tag in tags.values():
            copy_image(first.client, host.client, tag)
    return tags


@pytest.fixture
def remove_test_containers_after(docker_hosts: list[DockerdHandle]) -> Iterator[None]:
    yield
    for host in docker_hosts:
        remove_test_containers(host.client)


@dataclass(frozen=True)
class TenantDb:
    """A throwaway tenant database: ``host_dsn`` for this machine, ``container_dsn`` for a
    container on a test daemon (libpq URIs, password included)."""

    name: str
    url: URL  # the admin URL of CPDOPS_TEST_PG_URL

    def dsn_via(self, address: str) -> str:
        user = quote(self.url.username or "", safe="")
        password = quote(self.url.password or "", safe="")
        return f"postgresql://{user}:{password}@{address}:{self.url.port or 5432}/{self.name}"

    @property
    def host_dsn(self) -> str:
        return self.dsn_via(self.url.host or "127.0.0.1")

    def container_dsn(self, host: DockerdHandle) -> str:
        """The DSN for containers on ``host``'s default bridge: its gateway is this machine."""
        network = host.client.api.inspect_network("bridge")
        gateway = next(c["Gateway"] for c in network["IPAM"]["Config"] if c.get("Gateway"))
        return self.dsn_via(str(gateway))


def _listens_beyond_localhost(url: URL) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            value = str(conn.execute(text("SHOW listen_addresses")).scalar_one())
    finally:
        engine.dispose()
    return value.strip() not in ("localhost", "127.0.0.1", "")


@pytest.fixture
def tenant_db() -> Iterator[TenantDb]:
    admin = os.environ.get("CPDOPS_TEST_PG_URL")
    if not admin:
        if os.environ.get("CPDOPS_REQUIRE_POSTGRES") == "1":
            pytest.fail("CPDOPS_TEST_PG_URL is not set but CPDOPS_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL not configured (CPDOPS_TEST_PG_URL)")
    url = make_url(admin)
    if not _listens_beyond_localhost(url):
        pytest.fail(
            "the test PostgreSQL listens on localhost only, so containers cannot reach it: "
            "run start_postgres from scripts/setup.sh (scripts/test.sh does)",
            pytrace=False,
        )
    name = f"cpdops_tenant_{uuid.uuid4().hex[:10]}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield TenantDb(name=name, url=url)
    finally:
        drop_database(engine, name)
        engine.dispose()
