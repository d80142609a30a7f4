"""The postgres probe against the real PostgreSQL (CPDOPS_TEST_PG_URL).

Each test works in a throwaway database and closes every connection it opened. The server is
shared with other tests, so assertions are about what this test caused (its database's series,
its own sessions), never that the whole server is quiet. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import psycopg2  # type: ignore[import-untyped]
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from monitors.engine import MonitorEngine, MonitorView
from monitors.probe import MonitorSpec, ProbeResult, timeout_reason
from monitors.probes.postgres import PostgresProbe
from tests.conftest import PG_ENV, _pg_admin_url
from tests.pgdb import drop_database

pytestmark = pytest.mark.postgres
DEADLINE_S = 30.0
_T = TypeVar("_T")


# ------------------------------------------------------------------ helpers


def libpq_url(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


@pytest.fixture
def pg_db() -> Iterator[tuple[str, str]]:
    """``(dsn, database name)`` of a fresh database, dropped (with its sessions) afterwards."""
    admin = _pg_admin_url()
    if admin is None:
        pytest.skip(f"PostgreSQL not configured ({PG_ENV})")
    name = f"cpdops_pgprobe_{uuid.uuid4().hex[:10]}"
    with closing(psycopg2.connect(libpq_url(admin))) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield libpq_url(admin, name), name
    finally:
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        drop_database(engine, name)
        engine.dispose()


def spec_for(dsn: str, monitor: str = "pg", **options: Any) -> MonitorSpec:
    return MonitorSpec(
        id=monitor,
        name=monitor,
        tenant="acme",
        host="d1",
        kind="postgres",
        target=dsn,
        options=options,
        interval_s=0.2,
    )


def check(spec: MonitorSpec) -> ProbeResult:
    async def run() -> ProbeResult:
        probe = PostgresProbe()
        try:
            return await probe.check(spec)
        finally:
            await probe.aclose()

    return asyncio.run(run())


def poll(fetch: Callable[[], _T], done: Callable[[_T], bool], what: str) -> _T:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; last: {value!r}")
        time.sleep(0.2)


def sample(result: ProbeResult, name: str, **labels: str) -> float | None:
    for s in result.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def connect(dsn: str) -> Any:
    # lock_timeout: a test that goes wrong must not leave a session waiting forever
    return psycopg2.connect(dsn, application_name="cpdops-test", options="-c lock_timeout=60s")


# ------------------------------------------------------------------ deep health


def test_healthy_server_reports_the_spec_series(pg_db: tuple[str, str]) -> None:
    dsn, db = pg_db
    result = check(spec_for(dsn))
    server = "127.0.0.1:5432"
    assert result.details["server"] == server
    assert sample(result, "pg_up", server=server) == 1.0
    assert (sample(result, "pg_settings_max_connections") or 0) > 0
    assert sample(result, "pg_replication_lag_seconds") == 0.0  # a primary
    assert sample(result, "pg_stat_activity_count", datname=db, state="idle") == 0.0
    assert (sample(result, "pg_database_size_bytes", datname=db) or 0) > 0
    assert sample(result, "pg_stat_database_deadlocks", datname=db) == 0.0
    assert (sample(result, "pg_database_wraparound_age", datname=db) or -1) >= 0
    assert sample(result, "pg_locks_count", datname=db, mode="accessexclusivelock") == 0.0
    assert all(s.labels["server"] == server for s in result.samples)


def test_long_transaction_shows_up_and_fails_the_check(pg_db: tuple[str, str]) -> None:
    dsn, db = pg_db
    with closing(connect(dsn)) as holder:
        with holder.cursor() as cur:
            cur.execute("SELECT txid_current()")  # BEGIN (implicit) and take an xid
        try:
            result = poll(
                lambda: check(spec_for(dsn, max_tx_seconds=1)),
                lambda r: (
                    (
                        sample(
                            r,
                            "pg_stat_activity_max_tx_duration",
                            datname=db,
                            state="idle in transaction",
                        )
                        or 0
                    )
                    > 1
                ),
                "the open transaction to pass 1s",
            )
            assert not result.ok
            assert "transaction open" in result.reason
            assert "> max_tx_seconds 1" in result.reason
            oldest = result.details["oldest_transaction"]
            assert oldest["seconds"] > 1
            if oldest["pid"] == holder.get_backend_pid():  # else another session is older
                assert f"(pid {oldest['pid']}, database {db}, idle in transaction)" in (
                    result.reason
                )
            state = sample(
                result, "pg_stat_activity_count", datname=db, state="idle in transaction"
            )
            assert state == 1.0
        finally:
            holder.rollback()


def test_blocked_lock_waiter_shows_up_and_fails_with_max_waiting_1(
    pg_db: tuple[str, str],
) -> None:
    dsn, db = pg_db
    with closing(connect(dsn)) as setup:
        setup.autocommit = True
        with setup.cursor() as cur:
            cur.execute("CREATE TABLE t (id int)")
    with ExitStack() as stack:
        holder = stack.enter_context(closing(connect(dsn)))
        waiter = stack.enter_context(closing(connect(dsn)))
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        errors: list[BaseException] = []

        def wait_for_lock() -> None:
            try:
                with waiter.cursor() as cur:
                    cur.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
                waiter.rollback()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        thread = threading.Thread(target=wait_for_lock, name="lock-waiter", daemon=True)
        thread.start()
        try:
            result = poll(
                lambda: check(spec_for(dsn, max_waiting=1)),
                lambda r: sample(r, "pg_stat_activity_waiting_count", datname=db) == 1.0,
                "the waiter to block",
            )
            assert not result.ok
            assert re.search(r"\d+ sessions? waiting on locks \(max_waiting 1\)", result.reason)
            held_and_awaited = sample(
                result, "pg_locks_count", datname=db, mode="accessexclusivelock"
            )
            assert held_and_awaited is not None and held_and_awaited >= 2
            waiters = {w["pid"]: w for w in result.details["waiters"]}
            mine = waiters[waiter.get_backend_pid()]
            assert mine["blocked_by"] == [holder.get_backend_pid()]
            assert mine["datname"] == db
        finally:
            holder.rollback()  # lets the waiter through
            thread.join(timeout=DEADLINE_S)
        assert not thread.is_alive()
        assert not errors


def test_connections_near_the_limit_fail_the_check(pg_db: tuple[str, str]) -> None:
    dsn, db = pg_db
    baseline = check(spec_for(dsn))
    max_connections = int(baseline.details["max_connections"])
    extra = 10
    threshold = (int(baseline.details["connections"]) + extra // 2) / max_connections
    with ExitStack() as stack:
        for _ in range(extra):
            stack.enter_context(closing(connect(dsn)))
        result = poll(
            lambda: check(spec_for(dsn, max_connections_ratio=threshold)),
            lambda r: "of max_connections" in r.reason,
            "the connection ratio to cross the threshold",
        )
        assert not result.ok
        match = re.search(
            r"connections (\d+)/(\d+) \(\d+% >= \d+% of max_connections\)", result.reason
        )
        assert match is not None, result.reason
        assert int(match.group(2)) == max_connections
        assert int(match.group(1)) >= int(baseline.details["connections"]) + extra // 2
        ours = sum(
            s.value
            for s in result.samples
            if s.name == "pg_stat_activity_count" and s.labels["datname"] == db
        )
        assert ours >= extra


# ------------------------------------------------------------------ a server that never answers


class SilentServer:
    """Accepts TCP connections and never sends a byte (a hung PostgreSQL)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-pg", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self._held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self._sock.close()


class OkServer:
    """/health answers 200."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/health"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def test_hung_server_times_out_without_delaying_other_monitors(pg_db: tuple[str, str]) -> None:
    dsn, _ = pg_db
    with ExitStack() as stack:
        silent = SilentServer()
        stack.callback(silent.close)
        http = OkServer()
        stack.callback(http.close)
        hung = [
            MonitorSpec(
                id=f"hung{i}",
                name=f"hung{i}",
                tenant="acme",
                host="d1",
                kind="postgres",
                target=f"postgresql://mon:pw@127.0.0.1:{silent.port}/app?sslmode=disable",
                interval_s=0.5,
                timeout_s=1.0,
            )
            for i in range(3)
        ]
        good_pg = spec_for(dsn, monitor="good-pg")
        good_http = MonitorSpec(
            id="good-http",
            name="good-http",
            tenant="acme",
            host="d1",
            kind="http",
            target=http.url,
            interval_s=0.2,
        )
        engine = MonitorEngine(lambda change: None, jitter=False)
        engine.start()
        stack.callback(engine.stop)
        engine.set_monitors([*hung, good_pg, good_http])

        def views() -> dict[str, MonitorView]:
            return {v.spec.id: v for v in engine.snapshot()}

        def hung_timed_out(vs: dict[str, MonitorView], times: int) -> bool:
            return all(
                vs[s.id].probe_count >= times
                and vs[s.id].last_result is not None
                and not vs[s.id].last_result.ok  # type: ignore[union-attr]
                for s in hung
            )

        first = poll(views, lambda vs: hung_timed_out(vs, 1), "the hung monitors to time out")
        before = {k: first[k].probe_count for k in ("good-pg", "good-http")}
        later = poll(
            views,
            lambda vs: (
                hung_timed_out(vs, 3) and all(vs[k].probe_count >= before[k] + 5 for k in before)
            ),
            "the other monitors to keep being probed",
        )
        for spec in hung:
            result = later[spec.id].last_result
            assert result is not None
            assert result.reason == timeout_reason(1.0)
            # the probe's own deadline (inside timeout_s) fired, not the engine's cut-off
            assert sample(result, "pg_up", server=f"127.0.0.1:{silent.port}") == 0.0
        good = later["good-pg"].last_result
        assert good is not None and sample(good, "pg_up") == 1.0, good
        web = later["good-http"].last_result
        assert web is not None and web.ok, web
