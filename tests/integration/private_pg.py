"""A private PostgreSQL server for tests that stop and start it (the shared one on 5432 must
never be restarted: other tests use it).

``private_postgres(tmp_path)`` runs ``initdb`` (as the ``postgres`` user when run as root) in a
temporary directory, starts the server on a free port of 127.0.0.1 (trust authentication,
its socket in the same directory) and yields a :class:`PrivatePostgres`; ``stop()`` and
``start()`` take it down and up again on the same port and data. The server is always stopped
at the end (``-m immediate``), whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def stable_port() -> int:
    """A free port below the ephemeral range. While the server is down its clients keep
    connecting to the port; were it ephemeral, one of them could be given it as its own local
    port (a TCP self-connect) and hold it, so that the server could not start again."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has ``initdb`` (Debian layout)."""
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    versions = sorted(
        (p for p in root.iterdir() if (p / "bin" / "initdb").exists()),
        key=lambda p: int(p.name) if p.name.isdigit() else 0,
    )
    return versions[-1] / "bin" if versions else None


def _as_postgres(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@dataclass
class PrivatePostgres:
    bin: Path
    data: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``cpdops`` database (made by :func:`private_postgres`)."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/cpdops"

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        cmd = _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log)])
        done = subprocess.run([*cmd, *args], timeout=timeout, capture_output=True, text=True)
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"pg_ctl {' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}"
                f"\n{tail}"
            )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._ctl("-o", options, "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        cmd = _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "status"])
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        cmd = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        out = subprocess.run(
            [*cmd, "-d", database, "-qtAc", sql],
            check=True,
            timeout=30,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()


@contextlib.contextmanager
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    binaries = postgres_bin()
    if binaries is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        if os.environ.get("CPDOPS_REQUIRE_POSTGRES") == "1":
            pytest.fail("no PostgreSQL server binaries (apt-get install postgresql)")
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
    # Not in pytest's tmp tree: every pytest session that starts makes /tmp/pytest-of-root
    # 0700 again, so the postgres user could lose its way to a directory there mid-test.
    base = Path(tempfile.mkdtemp(prefix="cpdops-private-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    initdb = _as_postgres(
        [str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
    )
    subprocess.run(initdb, check=True, timeout=120, capture_output=True)
    pg = PrivatePostgres(binaries, data, stable_port(), base / "server.log")
    try:
        pg.start()
        pg.psql("CREATE DATABASE cpdops")
        yield pg
    finally:
        if pg.running():
            with contextlib.suppress(subprocess.SubprocessError):
                pg.stop("immediate")
        # a server that would not stop: wait a little for its postmaster.pid to go
        deadline = time.monotonic() + 10
        while (data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(OSError):  # the server's log stays with the test
            shutil.copy(base / "server.log", tmp_path / "private-pg-server.log")
        shutil.rmtree(base, ignore_errors=True)
