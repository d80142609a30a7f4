"""The postgres probe's pure parts: options, DSN handling, judgement (table-driven), samples."""

from __future__ import annotations

import asyncio
import math
import socket
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from monitors.probe import MonitorSpec, ProbeResult
from monitors.probes.postgres import (
    ACTIVITY_STATES,
    LOCK_MODES,
    Database,
    PgOptions,
    PgSnapshot,
    PostgresProbe,
    Session,
    connection_params,
    judge,
    samples,
    server_label,
    summary,
)

HEALTHY = PgSnapshot(
    max_connections=100,
    activity={("app", "active"): 3, ("app", "idle"): 7},
    max_tx_by_db={"app": 2.0},
    max_tx={("app", "active"): 2.0, ("app", "idle"): 0.0},
    waiting_by_db={"app": 0},
    databases=(Database("app", wraparound_age=1_000, size_bytes=8_000_000, deadlocks=0),),
    oldest_tx=Session(pid=42, datname="app", state="active", seconds=2.0),
)
DEFAULTS = PgOptions()


def conns(n: int) -> dict[tuple[str, str], int]:
    return {("app", "idle"): n}


# (case, snapshot, options, expected problem fragments (empty: healthy))
JUDGE_CASES: list[tuple[str, PgSnapshot, PgOptions, list[str]]] = [
    ("healthy", HEALTHY, DEFAULTS, []),
    ("89 of 100 connections", replace(HEALTHY, activity=conns(89)), DEFAULTS, []),
    (
        "90 of 100 connections",
        replace(HEALTHY, activity=conns(90)),
        DEFAULTS,
        ["connections 90/100 (90% >= 90% of max_connections)"],
    ),
    (
        "ratio option",
        replace(HEALTHY, activity=conns(20)),
        PgOptions(max_connections_ratio=0.2),
        ["connections 20/100 (20% >= 20% of max_connections)"],
    ),
    (
        "transaction at the limit",
        replace(HEALTHY, oldest_tx=Session(7, "app", "idle in transaction", 300.0)),
        DEFAULTS,
        [],
    ),
    (
        "transaction over the limit",
        replace(HEALTHY, oldest_tx=Session(7, "app", "idle in transaction", 301.0)),
        DEFAULTS,
        ["transaction open 301s > max_tx_seconds 300 (pid 7, database app, idle in transaction)"],
    ),
    (
        "max_tx_seconds option",
        HEALTHY,
        PgOptions(max_tx_seconds=1),
        ["transaction open 2s > max_tx_seconds 1"],
    ),
    ("4 waiters", replace(HEALTHY, waiting_by_db={"app": 4}), DEFAULTS, []),
    (
        "5 waiters over two databases",
        replace(HEALTHY, waiting_by_db={"app": 3, "other": 2}),
        DEFAULTS,
        ["5 sessions waiting on locks (max_waiting 5)"],
    ),
    (
        "one waiter, max_waiting 1",
        replace(HEALTHY, waiting_by_db={"app": 1}),
        PgOptions(max_waiting=1),
        ["1 session waiting on locks (max_waiting 1)"],
    ),
    (
        "lag on a primary is ignored",
        replace(HEALTHY, is_replica=False, lag_seconds=999.0),
        DEFAULTS,
        [],
    ),
    ("replica within lag", replace(HEALTHY, is_replica=True, lag_seconds=60.0), DEFAULTS, []),
    (
        "replica lagging",
        replace(HEALTHY, is_replica=True, lag_seconds=61.0),
        DEFAULTS,
        ["replication lag 61s > max_lag_seconds 60"],
    ),
    (
        "replica, lag unknown",
        replace(HEALTHY, is_replica=True, lag_seconds=None),
        DEFAULTS,
        [],
    ),
    (
        "wraparound",
        replace(HEALTHY, databases=(Database("old", 1_600_000_000), Database("app", 10))),
        DEFAULTS,
        ["database old transaction ID age 1600000000 > max_wraparound_age 1500000000"],
    ),
    (
        "no max_connections reported",
        replace(HEALTHY, max_connections=0, activity=conns(5)),
        DEFAULTS,
        [],
    ),
    (
        "several problems at once, in a fixed order",
        replace(
            HEALTHY,
            activity=conns(95),
            waiting_by_db={"app": 6},
            oldest_tx=Session(9, "app", "active", 400.0),
        ),
        DEFAULTS,
        ["connections 95/100", "transaction open 400s", "6 sessions waiting on locks"],
    ),
]


@pytest.mark.parametrize(
    ("snapshot", "options", "expected"),
    [case[1:] for case in JUDGE_CASES],
    ids=[case[0] for case in JUDGE_CASES],
)
def test_judge(snapshot: PgSnapshot, options: PgOptions, expected: list[str]) -> None:
    problems = judge(snapshot, options)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert problem.startswith(fragment), (problem, fragment)


def test_summary_of_a_healthy_server() -> None:
    assert summary(HEALTHY) == "ok: 10/100 connections, primary"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, PgOptions()),
        (
            {"server": "pg-main", "max_tx_seconds": 5, "max_waiting": 1},
            PgOptions(server="pg-main", max_tx_seconds=5, max_waiting=1),
        ),
        ({"max_connections_ratio": 0.5}, PgOptions(max_connections_ratio=0.5)),
    ],
)
def test_options_are_read(options: dict[str, Any], expected: PgOptions) -> None:
    assert PgOptions.from_options(options) == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_tx": 5}, "unknown option"),
        ({"max_waiting": -1}, "max_waiting"),
        ({"max_waiting": True}, "max_waiting"),
        ({"max_lag_seconds": "60"}, "max_lag_seconds"),
        ({"max_connections_ratio": 0}, "max_connections_ratio"),
        ({"max_connections_ratio": 1.5}, "max_connections_ratio"),
        ({"server": ""}, "server"),
    ],
)
def test_bad_options_are_errors_that_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PgOptions.from_options(options)


@pytest.mark.parametrize(
    ("target", "params", "server"),
    [
        (
            "postgresql://mon:s3cret@db.example:5433/app?sslmode=disable",
            {"user": "mon", "password": "s3cret", "host": "db.example", "port": "5433"},
            "db.example:5433",
        ),
        (
            "postgresql+psycopg2://mon:s3cret@127.0.0.1/app",
            {"user": "mon", "host": "127.0.0.1", "dbname": "app"},
            "127.0.0.1:5432",
        ),
        ("host=10.0.0.5 port=6432 dbname=app", {"host": "10.0.0.5"}, "10.0.0.5:6432"),
        ("postgresql://mon@[::1]:5432/app", {"host": "::1"}, "[::1]:5432"),
        ("dbname=app", {"dbname": "app"}, "local:5432"),
    ],
)
def test_dsn_and_server_label(target: str, params: dict[str, str], server: str) -> None:
    parsed = connection_params(target)
    assert params.items() <= parsed.items()
    assert server_label(parsed) == server
    assert "s3cret" not in server_label(parsed)


def test_a_malformed_dsn_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a valid libpq connection string"):
        connection_params("this is not = = a dsn")


def test_every_sample_carries_server_and_zero_filled_states_and_modes() -> None:
    snap = replace(
        HEALTHY,
        activity={("app", "active"): 2, ("app", "unknown"): 1},
        locks={("app", "accesssharelock"): 4},
        databases=(
            Database("app", 1_000, 8_000_000, 1, blks_hit=90, blks_read=10),
            Database("template0", 2_000),
        ),
        stat_database=(
            {"datid": 16384, "datname": "app", "numbackends": 3, "deadlocks": 1, "x_new": 5},
            {"datid": 0, "datname": None, "numbackends": 0, "deadlocks": 0, "x_new": None},
        ),
        stat_conflicts=({"datid": 16384, "datname": "app", "confl_lock": 0},),
        bgwriter={"buffers_alloc": 7, "stats_reset": datetime(2026, 1, 1, tzinfo=UTC)},
    )
    found = samples(snap, "db1:5432")
    assert all(s.labels["server"] == "db1:5432" for s in found)
    assert all(s.name.startswith("pg_") for s in found)
    by_key = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in found}
    assert len(by_key) == len(found), "a series is reported twice"

    def value(name: str, **labels: str) -> float:
        return by_key[(name, tuple(sorted({"server": "db1:5432", **labels}.items())))]

    assert value("pg_up") == 1.0
    assert value("pg_settings_max_connections") == 100.0
    assert value("pg_replication_lag_seconds") == 0.0
    assert value("pg_stat_activity_count", datname="app", state="active") == 2.0
    assert value("pg_stat_activity_count", datname="app", state="unknown") == 1.0
    assert value("pg_stat_activity_count", datname="template0", state="idle") == 0.0
    assert value("pg_locks_count", datname="app", mode="accesssharelock") == 4.0
    assert value("pg_locks_count", datname="template0", mode="exclusivelock") == 0.0
    assert value("pg_stat_activity_max_tx_duration", datname="app", state="active") == 2.0
    assert value("pg_stat_activity_max_tx_duration", datname="app", state="idle") == 0.0
    assert value("pg_stat_activity_waiting_count", datname="app") == 0.0
    assert value("pg_database_size_bytes", datname="app") == 8_000_000.0
    assert value("pg_database_wraparound_age", datname="template0") == 2_000.0
    # postgres_exporter's names, labels (datid, datname) and types
    assert value("pg_stat_database_deadlocks", datid="16384", datname="app") == 1.0
    assert value("pg_stat_database_numbackends", datid="0", datname="") == 0.0
    assert math.isnan(value("pg_stat_database_x_new", datid="0", datname=""))
    assert value("pg_stat_database_conflicts_confl_lock", datid="16384", datname="app") == 0.0
    assert value("pg_stat_bgwriter_buffers_alloc_total") == 7.0
    reset = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert value("pg_stat_bgwriter_stats_reset_total") == reset
    types = {s.name: s.type for s in found}
    assert types["pg_stat_database_deadlocks"] == "counter"
    assert types["pg_stat_database_numbackends"] == "gauge"
    assert types["pg_stat_database_x_new"] == "untyped"
    assert types["pg_stat_database_conflicts_confl_lock"] == "counter"
    assert types["pg_stat_bgwriter_buffers_alloc_total"] == "counter"
    assert value("pg_stat_database_blks_hit_ratio", datname="app") == pytest.approx(0.9)
    counts = Counter(s.name for s in found)
    assert counts["pg_stat_activity_count"] == 2 * len(ACTIVITY_STATES) + 1
    assert counts["pg_locks_count"] == 2 * len(LOCK_MODES)
    assert counts["pg_database_size_bytes"] == 1  # template0's size was not readable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check(spec: MonitorSpec) -> ProbeResult:
    async def run() -> ProbeResult:
        probe = PostgresProbe()
        try:
            return await probe.check(spec)
        finally:
            await probe.aclose()

    return asyncio.run(run())


def test_unreachable_server_fails_with_pg_up_0_and_no_password() -> None:
    port = _free_port()
    spec = MonitorSpec(
        id="pg",
        name="pg",
        tenant="t",
        host="h",
        kind="postgres",
        target=f"postgresql://mon:Sup3rSecret@127.0.0.1:{port}/app",
    )
    result = _check(spec)
    assert not result.ok
    assert result.reason.startswith(f"cannot connect to 127.0.0.1:{port}")
    assert "Sup3rSecret" not in repr(result)
    assert [(s.name, s.value, dict(s.labels)) for s in result.samples] == [
        ("pg_up", 0.0, {"server": f"127.0.0.1:{port}"})
    ]


def test_bad_options_fail_the_check_without_connecting() -> None:
    spec = MonitorSpec(
        id="pg",
        name="pg",
        tenant="t",
        host="h",
        kind="postgres",
        target="postgresql://mon:pw@127.0.0.1:1/app",
        options={"max_waiters": 3},
    )
    result = _check(spec)
    assert not result.ok
    assert result.reason.startswith("invalid configuration: unknown option(s) ['max_waiters']")
