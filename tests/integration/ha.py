"""Helpers for HA tests: ``cpdops serve`` replicas as real subprocesses, a PostgreSQL database."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.integration.fleet import free_port
from tests.pgdb import drop_database

CPDOPS = str(Path(sys.executable).parent / "cpdops")


@contextlib.contextmanager
def pg_database(prefix: str = "cpdops_ha") -> Iterator[str]:
    """A fresh database on the test PostgreSQL (CPDOPS_TEST_PG_URL), dropped afterwards."""
    admin = os.environ.get("CPDOPS_TEST_PG_URL")
    if not admin:
        if os.environ.get("CPDOPS_REQUIRE_POSTGRES") == "1":
            pytest.fail("CPDOPS_TEST_PG_URL is not set but CPDOPS_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL not configured (CPDOPS_TEST_PG_URL)")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        drop_database(engine, name)
        engine.dispose()


@dataclass
class Replica:
    """One ``cpdops serve`` process."""

    name: str
    process: subprocess.Popen[bytes]
    base: str
    log_path: Path
    log: IO[bytes]
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base, timeout=10)

    def health(self) -> dict[str, Any]:
        data: dict[str, Any] = self.client.get("/healthz").json()
        return data

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; idempotent."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.client.close()
        self.log.close()

    def log_tail(self, lines: int = 40) -> str:
        text_ = self.log_path.read_text(errors="replace")
        return "\n".join(text_.splitlines()[-lines:])


class Replicas:
    """Starts replicas; every one is stopped at the end (also the ones killed)."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self._tmp = tmp_path
        self._env = env
        self.all: list[Replica] = []

    def start(self, name: str) -> Replica:
        port = free_port()
        log_path = self._tmp / f"serve-{name}.log"
        log = log_path.open("wb")
        process = subprocess.Popen(
            [CPDOPS, "serve", "--port", str(port)],
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        replica = Replica(name, process, f"http://127.0.0.1:{port}", log_path, log)
        self.all.append(replica)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not replica.alive():
                raise AssertionError(f"serve {name} exited:\n{replica.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if replica.client.get("/healthz").status_code == 200:
                    return replica
            time.sleep(0.2)
        raise AssertionError(f"serve {name} did not answer within 60s:\n{replica.log_tail()}")

    def stop(self) -> None:
        for replica in self.all:
            replica.stop()
