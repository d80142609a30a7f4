"""``postgres`` probe: deep health of a PostgreSQL server (SPEC §5, §3.5 metric names).

The target is a libpq DSN (``postgresql://user:pw@host:5432/db`` or ``host=… dbname=…``; a
SQLAlchemy ``postgresql+psycopg2://`` URL is accepted too). Each check opens one connection,
runs a handful of catalog queries (pg_settings, pg_stat_activity, pg_locks, pg_database,
pg_stat_database, pg_stat_database_conflicts, pg_stat_bgwriter, the replay timestamp) and closes
it; the numbers become ``samples`` (``pg_up``, ``pg_stat_activity_count{datname,state}``, …,
each labelled ``server``; the statistics views' columns under postgres_exporter's default names,
labels and types: :func:`stat_samples`) and the pure :func:`judge` decides the check::

    event loop ──submit──▶ worker thread (bounded pool owned by the probe)
                            libpq non-blocking API polled against one deadline
                            ◀── cancel event (check cancelled / probe closing)

psycopg2 is synchronous, so the work runs in the probe's own thread pool. Connecting and every
query are polled with libpq's non-blocking API against a deadline slightly inside
``spec.timeout_s`` (finer than libpq's ``connect_timeout``, which has a 2 s floor and is ignored
by the non-blocking API), and the session sets ``statement_timeout`` so the server gives up
too. A server that accepts TCP and never answers therefore frees its worker at the deadline; a
cancelled check frees it within :data:`POLL_SLICE_S`.

Non-superuser roles see other roles' sessions only partly: grant ``pg_monitor`` to the
monitoring role for full numbers. The password never appears in reasons, details or labels.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import select
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import psycopg2  # type: ignore[import-untyped]
import psycopg2.extensions  # type: ignore[import-untyped]

from monitors.probe import MetricSample, MonitorSpec, ProbeResult, timeout_reason

POLL_SLICE_S = 0.05
"""How often a worker waiting on the server looks at its cancel event."""
APPLICATION_NAME = "cpdops-monitor"
ACTIVITY_STATES = (
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "fastpath function call",
    "disabled",
)
"""States every database reports (0 when none), as postgres_exporter does."""
LOCK_MODES = (
    "accesssharelock",
    "rowsharelock",
    "rowexclusivelock",
    "shareupdateexclusivelock",
    "sharelock",
    "sharerowexclusivelock",
    "exclusivelock",
    "accessexclusivelock",
    "sireadlock",
)


# postgres_exporter's default pg_stat_database / pg_stat_database_conflicts / pg_stat_bgwriter
# series (its version in Debian 12, 0.11): names, labels and types, so that stock dashboards
# (transactions/s, tuples, temp files, bgwriter) work on cpdops's /metrics. Columns of
# pg_stat_database the exporter does not know (PostgreSQL 12+: checksum_*, 14+: session_*)
# are ``untyped``, as it exports them. Every other column is a counter but numbackends.
STAT_DATABASE_COUNTERS = frozenset(
    {
        "xact_commit", "xact_rollback", "blks_read", "blks_hit", "tup_returned", "tup_fetched",
        "tup_inserted", "tup_updated", "tup_deleted", "conflicts", "temp_files", "temp_bytes",
        "deadlocks", "blk_read_time", "blk_write_time", "stats_reset",
    }
)  # fmt: skip
STAT_DATABASE_GAUGES = frozenset({"numbackends"})
STAT_LABELS = ("datid", "datname")
BGWRITER_COLUMNS = (
    "checkpoints_timed", "checkpoints_req", "checkpoint_write_time", "checkpoint_sync_time",
    "buffers_checkpoint", "buffers_clean", "maxwritten_clean", "buffers_backend",
    "buffers_backend_fsync", "buffers_alloc", "stats_reset",
)  # fmt: skip
# PostgreSQL 17 moved the checkpoint columns to pg_stat_checkpointer: their old names
CHECKPOINTER_AS_BGWRITER = {
    "num_timed": "checkpoints_timed",
    "num_requested": "checkpoints_req",
    "write_time": "checkpoint_write_time",
    "sync_time": "checkpoint_sync_time",
    "buffers_written": "buffers_checkpoint",
}


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class PgOptions:
    """``spec.options`` of a postgres monitor; unknown keys are errors."""

    server: str | None = None
    max_connections_ratio: float = 0.9
    max_tx_seconds: float = 300.0
    max_waiting: int = 5
    max_lag_seconds: float = 60.0
    max_wraparound_age: int = 1_500_000_000

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PgOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for key, value in options.items():
            if key == "server":
                if not isinstance(value, str) or not value:
                    raise ValueError("option 'server' must be a non-empty string")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"option {key!r} must be a number >= 0, got {value!r}")
            values[key] = value
        opts = cls(**values)
        if not 0 < opts.max_connections_ratio <= 1:
            raise ValueError("option 'max_connections_ratio' must be in (0, 1]")
        return opts


def connection_params(target: str) -> dict[str, str]:
    """libpq keywords of a DSN or URI (``postgresql+psycopg2://`` is read as ``postgresql://``)."""
    dsn = target.strip()
    scheme, sep, rest = dsn.partition("://")
    if sep and scheme.startswith(("postgresql+", "postgres+")):
        dsn = f"postgresql://{rest}"
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        raise ValueError("target is not a valid libpq connection string") from None
    return {str(k): str(v) for k, v in params.items()}


def validate(spec: MonitorSpec) -> None:
    """Raise ``ValueError`` saying what is wrong with ``spec``'s target or options. A target
    holding ``${VAR}`` references is read with the references in place (they are resolved when
    the monitor is configured)."""
    PgOptions.from_options(spec.options)
    connection_params(spec.target)


def server_label(params: Mapping[str, str]) -> str:
    """``host:port`` of a DSN without credentials (``[::1]:5432``; ``local:5432`` for a socket)."""
    host = params.get("host") or params.get("hostaddr") or "local"
    port = params.get("port") or "5432"
    if ":" in host and "," not in host and not host.startswith("/"):
        host = f"[{host}]"
    return f"{host}:{port}"


# ------------------------------------------------------------------ observations and judgement


@dataclass(frozen=True)
class Session:
    """One backend of interest: the oldest transaction, or a session waiting on a lock."""

    pid: int
    datname: str
    state: str
    seconds: float
    blocked_by: tuple[int, ...] = ()


@dataclass(frozen=True)
class Database:
    name: str
    wraparound_age: int
    size_bytes: int | None = None
    deadlocks: int | None = None
    blks_hit: int | None = None
    blks_read: int | None = None


@dataclass(frozen=True)
class PgSnapshot:
    """What one check saw on the server."""

    max_connections: int
    is_replica: bool = False
    lag_seconds: float | None = 0.0
    activity: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (db, state)
    max_tx_by_db: Mapping[str, float] = field(default_factory=dict)
    max_tx: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (db, state)
    waiting_by_db: Mapping[str, int] = field(default_factory=dict)
    locks: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (db, mode)
    databases: tuple[Database, ...] = ()
    oldest_tx: Session | None = None
    waiters: tuple[Session, ...] = ()
    # rows of pg_stat_database and pg_stat_database_conflicts, pg_stat_bgwriter's one row (with
    # pg_stat_checkpointer's columns under their old names): column -> value as the server
    # gave it (timestamps as datetimes); empty when the check did not read them
    stat_database: tuple[Mapping[str, Any], ...] = ()
    stat_conflicts: tuple[Mapping[str, Any], ...] = ()
    bgwriter: Mapping[str, Any] = field(default_factory=dict)

    @property
    def connections(self) -> int:
        return sum(self.activity.values())

    @property
    def waiting(self) -> int:
        return sum(self.waiting_by_db.values())

    @property
    def oldest_frozen(self) -> Database | None:
        return max(self.databases, key=lambda d: d.wraparound_age, default=None)


def judge(snap: PgSnapshot, opts: PgOptions) -> list[str]:
    """The problems ``snap`` shows under ``opts``' thresholds; empty when the server is healthy."""
    problems: list[str] = []
    if snap.max_connections > 0:
        ratio = snap.connections / snap.max_connections
        if ratio >= opts.max_connections_ratio:
            problems.append(
                f"connections {snap.connections}/{snap.max_connections} "
                f"({ratio:.0%} >= {opts.max_connections_ratio:.0%} of max_connections)"
            )
    tx = snap.oldest_tx
    if tx is not None and tx.seconds > opts.max_tx_seconds:
        problems.append(
            f"transaction open {tx.seconds:.0f}s > max_tx_seconds {opts.max_tx_seconds:g} "
            f"(pid {tx.pid}, database {tx.datname}, {tx.state})"
        )
    if snap.waiting >= opts.max_waiting:
        sessions = "session" if snap.waiting == 1 else "sessions"
        problems.append(
            f"{snap.waiting} {sessions} waiting on locks (max_waiting {opts.max_waiting})"
        )
    lag = snap.lag_seconds
    if snap.is_replica and lag is not None and lag > opts.max_lag_seconds:
        problems.append(f"replication lag {lag:.0f}s > max_lag_seconds {opts.max_lag_seconds:g}")
    oldest = snap.oldest_frozen
    if oldest is not None and oldest.wraparound_age > opts.max_wraparound_age:
        problems.append(
            f"database {oldest.name} transaction ID age {oldest.wraparound_age} > "
            f"max_wraparound_age {opts.max_wraparound_age}"
        )
    return problems


def summary(snap: PgSnapshot) -> str:
    """The reason of a passing check: ``ok: 12/100 connections, primary``."""
    role = "replica" if snap.is_replica else "primary"
    return f"ok: {snap.connections}/{snap.max_connections} connections, {role}"


def details(snap: PgSnapshot, server: str, opts: PgOptions) -> dict[str, Any]:
    oldest = snap.oldest_frozen
    return {
        "server": server,
        "connections": snap.connections,
        "max_connections": snap.max_connections,
        "oldest_transaction": _session_dict(snap.oldest_tx) if snap.oldest_tx else None,
        "waiting": snap.waiting,
        "waiters": [_session_dict(w) for w in snap.waiters],
        "is_replica": snap.is_replica,
        "replication_lag_seconds": snap.lag_seconds,
        "max_wraparound_age": oldest.wraparound_age if oldest else None,
        "thresholds": {f.name: getattr(opts, f.name) for f in fields(opts) if f.name != "server"},
    }


def _session_dict(s: Session) -> dict[str, Any]:
    return {
        "pid": s.pid,
        "datname": s.datname,
        "state": s.state,
        "seconds": round(s.seconds, 3),
        "blocked_by": list(s.blocked_by),
    }


def samples(snap: PgSnapshot, server: str) -> tuple[MetricSample, ...]:
    """The §3.5 series of one check, every one labelled ``server``."""
    out: list[MetricSample] = []

    def add(name: str, value: float, help: str, **labels: str) -> None:
        out.append(MetricSample(name, float(value), {"server": server, **labels}, help))

    add("pg_up", 1, "1 if the server could be reached and queried")
    add("pg_settings_max_connections", snap.max_connections, "max_connections setting")
    add("pg_replication_is_replica", snap.is_replica, "1 if the server is in recovery")
    if snap.lag_seconds is not None:
        add("pg_replication_lag_seconds", snap.lag_seconds, "Replay lag (0 on a primary)")
    names = [d.name for d in snap.databases]
    names += sorted({db for db, _ in snap.activity} - set(names))
    for db in names:
        states = list(ACTIVITY_STATES)
        states += sorted({s for d, s in snap.activity if d == db} - set(states))
        for state in states:
            count = snap.activity.get((db, state), 0)
            add("pg_stat_activity_count", count, "Connections by state", datname=db, state=state)
            add(
                "pg_stat_activity_max_tx_duration",
                snap.max_tx.get((db, state), 0.0),
                "Age of the oldest open transaction by state, seconds",
                datname=db,
                state=state,
            )
        add(
            "pg_stat_activity_waiting_count",
            snap.waiting_by_db.get(db, 0),
            "Sessions waiting on a lock (wait_event_type Lock)",
            datname=db,
        )
        modes = list(LOCK_MODES) + sorted({m for d, m in snap.locks if d == db} - set(LOCK_MODES))
        for mode in modes:
            count = snap.locks.get((db, mode), 0)
            add("pg_locks_count", count, "Locks held or awaited, by mode", datname=db, mode=mode)
    for d in snap.databases:
        add("pg_database_wraparound_age", d.wraparound_age, "age(datfrozenxid)", datname=d.name)
        if d.size_bytes is not None:
            add("pg_database_size_bytes", d.size_bytes, "Database size", datname=d.name)
        if d.blks_hit is not None and d.blks_read is not None and d.blks_hit + d.blks_read > 0:
            ratio = d.blks_hit / (d.blks_hit + d.blks_read)
            add("pg_stat_database_blks_hit_ratio", ratio, "Cache hit ratio", datname=d.name)
    out.extend(stat_samples(snap, server))
    return tuple(out)


def stat_samples(snap: PgSnapshot, server: str) -> list[MetricSample]:
    """postgres_exporter's ``pg_stat_database_*``, ``pg_stat_database_conflicts_*`` and
    ``pg_stat_bgwriter_*_total`` series of the snapshot (its names, labels and types)."""
    out: list[MetricSample] = []
    for view, rows in (
        ("pg_stat_database", snap.stat_database),
        ("pg_stat_database_conflicts", snap.stat_conflicts),
    ):
        for row in rows:
            labels = {"server": server, "datid": str(row.get("datid") or 0)}
            labels["datname"] = str(row.get("datname") or "")
            for column, value in row.items():
                if column in STAT_LABELS:
                    continue
                if view == "pg_stat_database_conflicts" or column in STAT_DATABASE_COUNTERS:
                    kind, help = "counter", f"{column} of {view}"
                elif column in STAT_DATABASE_GAUGES:
                    kind, help = "gauge", f"{column} of {view}"
                else:
                    kind, help = "untyped", f"Unknown metric from {view}"
                out.append(MetricSample(f"{view}_{column}", _stat_value(value), labels, help, kind))
    for column in BGWRITER_COLUMNS:
        if column in snap.bgwriter:
            out.append(
                MetricSample(
                    f"pg_stat_bgwriter_{column}_total",
                    _stat_value(snap.bgwriter[column]),
                    {"server": server},
                    f"{column} of pg_stat_bgwriter",
                    "counter",
                )
            )
    return out


def _stat_value(value: Any) -> float:
    """A statistics column as postgres_exporter exports it: timestamps as whole Unix seconds,
    NULL as NaN."""
    if value is None:
        return math.nan
    if isinstance(value, datetime):
        return float(math.floor(value.timestamp()))
    return float(value)


# ------------------------------------------------------------------ the probe


class PostgresProbe:
    """Checks PostgreSQL servers from a bounded thread pool; never raises for a failing target."""

    def __init__(self, *, max_workers: int = 32) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self._max_workers = max_workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight: dict[concurrent.futures.Future[PgSnapshot], threading.Event] = {}

    async def check(self, spec: MonitorSpec) -> ProbeResult:
        at = datetime.now(UTC)
        started = time.perf_counter()

        def fail(reason: str, sample: list[MetricSample] | None = None) -> ProbeResult:
            return ProbeResult(
                ok=False,
                duration_s=time.perf_counter() - started,
                reason=reason,
                at=at,
                samples=tuple(sample or ()),
            )

        try:
            opts = PgOptions.from_options(spec.options)
            params = connection_params(spec.target)
        except ValueError as exc:
            return fail(f"invalid configuration: {exc}")
        server = opts.server or server_label(params)
        redact = _redactor(params.get("password", ""))
        down = [MetricSample("pg_up", 0.0, {"server": server}, "1 if reachable")]
        cancel = threading.Event()
        deadline = time.monotonic() + _budget(spec.timeout_s)
        future = self._executor().submit(_collect, params, deadline, cancel)
        self._inflight[future] = cancel
        try:
            snap = await asyncio.wrap_future(future)
        except _Timeout:
            return fail(timeout_reason(spec.timeout_s), down)
        except _ConnectFailed as exc:
            return fail(redact(f"cannot connect to {server}: {exc}"), down)
        except _QueryFailed as exc:
            up = [MetricSample("pg_up", 1.0, {"server": server}, "1 if reachable")]
            return fail(redact(f"query failed: {exc}"), up)
        finally:
            cancel.set()  # stops the worker if this check was cancelled; harmless otherwise
            future.cancel()
            self._inflight.pop(future, None)
        problems = judge(snap, opts)
        return ProbeResult(
            ok=not problems,
            duration_s=time.perf_counter() - started,
            reason="; ".join(problems) or summary(snap),
            at=at,
            details=details(snap, server, opts),
            samples=samples(snap, server),
        )

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for cancel in self._inflight.values():
            cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        running = [asyncio.wrap_future(f) for f in self._inflight]
        if running:
            await asyncio.wait(running, timeout=5.0)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._max_workers, thread_name_prefix="cpdops-pg-probe"
            )
        return self._pool


def _budget(timeout_s: float) -> float:
    """The worker's deadline: inside the engine's timeout so the probe reports it (with pg_up 0)."""
    return max(timeout_s - min(0.25, timeout_s / 10), timeout_s / 2)


def _redactor(password: str) -> Callable[[str], str]:
    # libpq does not echo passwords; this is a second line of defence. Very short passwords are
    # left alone (replacing "a" everywhere would garble the message and hide nothing).
    if len(password) < 4:
        return lambda text: text
    return lambda text: text.replace(password, "***")


# ------------------------------------------------------------------ worker-thread side


class _Timeout(Exception):
    pass


class _ConnectFailed(Exception):
    pass


class _QueryFailed(Exception):
    pass


_SETTINGS_SQL = """
SELECT current_setting('max_connections')::int, pg_is_in_recovery(),
       CASE WHEN NOT pg_is_in_recovery() THEN 0
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE GREATEST(0, EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()))
       END::float8
"""
_CLIENTS = "datname IS NOT NULL AND COALESCE(backend_type, 'client backend') = 'client backend'"
_ACTIVITY_SQL = f"""
SELECT datname, COALESCE(state, 'unknown'), count(*),
       COALESCE(max(EXTRACT(EPOCH FROM now() - xact_start)), 0)::float8,
       count(*) FILTER (WHERE wait_event_type = 'Lock')
FROM pg_stat_activity WHERE {_CLIENTS} GROUP BY 1, 2
"""
_OLDEST_TX_SQL = f"""
SELECT pid, datname, COALESCE(state, 'unknown'),
       EXTRACT(EPOCH FROM now() - xact_start)::float8
FROM pg_stat_activity
WHERE {_CLIENTS} AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
ORDER BY xact_start LIMIT 1
"""
_WAITERS_SQL = f"""
SELECT pid, datname, COALESCE(state, 'unknown'),
       COALESCE(EXTRACT(EPOCH FROM now() - state_change), 0)::float8, pg_blocking_pids(pid)
FROM pg_stat_activity WHERE {_CLIENTS} AND wait_event_type = 'Lock'
ORDER BY state_change LIMIT 10
"""
_LOCKS_SQL = """
SELECT d.datname, lower(l.mode), count(*)
FROM pg_locks l JOIN pg_database d ON d.oid = l.database
WHERE l.pid IS DISTINCT FROM pg_backend_pid() GROUP BY 1, 2
"""
_DATABASES_SQL = """
SELECT d.datname, age(d.datfrozenxid),
       CASE WHEN has_database_privilege(d.oid, 'CONNECT') THEN pg_database_size(d.oid) END,
       s.deadlocks, s.blks_hit, s.blks_read
FROM pg_database d LEFT JOIN pg_stat_database s ON s.datid = d.oid ORDER BY 1
"""


_STAT_DATABASE_SQL = "SELECT * FROM pg_stat_database"
_STAT_CONFLICTS_SQL = "SELECT * FROM pg_stat_database_conflicts"
_BGWRITER_SQL = "SELECT * FROM pg_stat_bgwriter"
_CHECKPOINTER_SQL = "SELECT * FROM pg_stat_checkpointer"  # PostgreSQL 17+


def _collect(params: Mapping[str, str], deadline: float, cancel: threading.Event) -> PgSnapshot:
    """Connect, query, close: runs in a worker thread; raises only the three errors above."""
    budget_ms = max(1, math.floor((deadline - time.monotonic()) * 1000))
    extra = f"-c statement_timeout={budget_ms} -c default_transaction_read_only=on"
    kwargs = {"application_name": APPLICATION_NAME, **params}
    kwargs["options"] = f"{params['options']} {extra}" if params.get("options") else extra
    if time.monotonic() >= deadline:
        raise _Timeout
    try:
        conn = psycopg2.connect(async_=True, **kwargs)
    except psycopg2.Error as exc:
        raise _ConnectFailed(_first_line(exc)) from None
    try:
        try:
            _wait(conn, deadline, cancel)
        except psycopg2.Error as exc:
            raise _ConnectFailed(_first_line(exc)) from None

        def query(sql: str) -> list[tuple[Any, ...]]:
            return query_rows(sql)[1]

        def query_rows(sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
            cur = conn.cursor()
            try:
                cur.execute(sql)
                _wait(conn, deadline, cancel)
                return [c.name for c in cur.description or ()], list(cur.fetchall())
            except psycopg2.Error as exc:
                raise _QueryFailed(_first_line(exc)) from None
            finally:
                cur.close()

        snap = _snapshot(query)
        version = int(query("SELECT current_setting('server_version_num')")[0][0])
        return _with_stats(snap, query_rows, version)
    finally:
        conn.close()


def _snapshot(query: Callable[[str], list[tuple[Any, ...]]]) -> PgSnapshot:
    ((max_conn, in_recovery, lag),) = query(_SETTINGS_SQL)
    activity: dict[tuple[str, str], int] = {}
    max_tx: dict[tuple[str, str], float] = {}
    max_tx_by_db: dict[str, float] = {}
    waiting: dict[str, int] = {}
    for db, state, count, tx_age, waits in query(_ACTIVITY_SQL):
        activity[(db, state)] = int(count)
        max_tx[(db, state)] = float(tx_age)
        max_tx_by_db[db] = max(max_tx_by_db.get(db, 0.0), float(tx_age))
        waiting[db] = waiting.get(db, 0) + int(waits)
    oldest = [Session(int(p), d, s, float(sec)) for p, d, s, sec in query(_OLDEST_TX_SQL)]
    waiters = tuple(
        Session(int(p), d, s, float(sec), tuple(int(b) for b in blockers or ()))
        for p, d, s, sec, blockers in query(_WAITERS_SQL)
    )
    locks = {(db, mode): int(count) for db, mode, count in query(_LOCKS_SQL)}
    databases = tuple(
        Database(name, int(age), _int(size), _int(dl), _int(hit), _int(read))
        for name, age, size, dl, hit, read in query(_DATABASES_SQL)
    )
    return PgSnapshot(
        max_connections=int(max_conn),
        is_replica=bool(in_recovery),
        lag_seconds=None if lag is None else float(lag),
        activity=activity,
        max_tx_by_db=max_tx_by_db,
        max_tx=max_tx,
        waiting_by_db=waiting,
        locks=locks,
        databases=databases,
        oldest_tx=oldest[0] if oldest else None,
        waiters=waiters,
    )


def _with_stats(
    snap: PgSnapshot,
    query_rows: Callable[[str], tuple[list[str], list[tuple[Any, ...]]]],
    version: int,
) -> PgSnapshot:
    """``snap`` with the rows of the statistics views (every column, as the server has them)."""

    def rows(sql: str) -> tuple[dict[str, Any], ...]:
        names, found = query_rows(sql)
        return tuple(dict(zip(names, row, strict=True)) for row in found)

    bgwriter = dict(rows(_BGWRITER_SQL)[0])
    if version >= 170000:
        checkpointer = rows(_CHECKPOINTER_SQL)[0]
        for column, old in CHECKPOINTER_AS_BGWRITER.items():
            if column in checkpointer:
                bgwriter[old] = checkpointer[column]
    return dataclasses.replace(
        snap,
        stat_database=rows(_STAT_DATABASE_SQL),
        stat_conflicts=rows(_STAT_CONFLICTS_SQL),
        bgwriter=bgwriter,
    )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _wait(conn: Any, deadline: float, cancel: threading.Event) -> None:
    """Drive a non-blocking libpq operation to completion, or raise ``_Timeout``."""
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        if state == psycopg2.extensions.POLL_READ:
            events = select.POLLIN
        elif state == psycopg2.extensions.POLL_WRITE:
            events = select.POLLOUT
        else:
            raise psycopg2.OperationalError(f"unexpected poll state {state}")
        poller = select.poll()
        poller.register(conn.fileno(), events | select.POLLERR | select.POLLHUP)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or cancel.is_set():
                raise _Timeout
            if poller.poll(math.ceil(min(remaining, POLL_SLICE_S) * 1000)):
                break


def _first_line(exc: BaseException) -> str:
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
