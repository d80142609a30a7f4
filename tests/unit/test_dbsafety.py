"""rollouts.dbsafety without a database: DSNs, the free-space decision, command lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import OperationFailed
from rollouts import dbsafety

MB = 1_000_000


@pytest.mark.parametrize(
    ("dsn", "bare", "password"),
    [
        (
            "postgresql://cpdops:s3cret@127.0.0.1:5432/t1",
            "postgresql://cpdops@127.0.0.1:5432/t1",
            "s3cret",
        ),
        ("postgresql://u:p%40ss%3A@h/db", "postgresql://u@h/db", "p@ss:"),
        ("postgres://u@h/db", "postgresql://u@h/db", None),
        ("postgresql+psycopg2://u:p@h:5433/db", "postgresql://u@h:5433/db", "p"),
        (
            "postgresql://u@h/db?sslmode=require&password=q",
            "postgresql://u@h/db?sslmode=require",
            "q",
        ),
        ("postgresql://h1:5432,h2:5432/db", "postgresql://h1:5432,h2:5432/db", None),
        ("host=h port=5432 dbname=x password=pw user=u", "host=h port=5432 dbname=x user=u", "pw"),
        ("host=h password='a b\\'c' dbname=x", "host=h dbname=x", "a b'c"),
        ("host=h dbname=x", "host=h dbname=x", None),
    ],
)
def test_split_dsn(dsn: str, bare: str, password: str | None) -> None:
    assert dbsafety.split_dsn(dsn) == (bare, password)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?password=s3cret", "postgresql://h/db?password=***"),
        ("postgresql://h/db?a=1&password=s3cret", "postgresql://h/db?a=1&password=***"),
        ("host=h password=s3cret", "host=h password=***"),
    ],
)
def test_redact_dsn(dsn: str, shown: str) -> None:
    assert dbsafety.redact_dsn(dsn) == shown


def test_scrub_replaces_a_leaked_password() -> None:
    assert dbsafety.scrub("auth failed for s3cret", "s3cret") == "auth failed for ***"
    assert dbsafety.scrub("nothing", None) == "nothing"
    assert dbsafety.scrub("nothing", "") == "nothing"


# --- free space ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("db_size", "free", "factor", "reserve", "needed", "ok"),
    [
        (100 * MB, 200 * MB, 1.0, 64 * MB, 164 * MB, True),
        (100 * MB, 164 * MB, 1.0, 64 * MB, 164 * MB, True),  # exactly enough
        (100 * MB, 164 * MB - 1, 1.0, 64 * MB, 164 * MB, False),
        (100 * MB, 200 * MB, 2.0, 0, 200 * MB, True),
        (100 * MB, 200 * MB, 2.5, 0, 250 * MB, False),
        (0, 64 * MB, 1.0, 64 * MB, 64 * MB, True),  # the reserve alone
        (3, 10, 0.5, 0, 2, True),  # rounded up
    ],
)
def test_check_space(
    db_size: int, free: int, factor: float, reserve: int, needed: int, ok: bool
) -> None:
    check = dbsafety.check_space(db_size, free, factor=factor, reserve_bytes=reserve)

    assert check.needed_bytes == needed
    assert check.ok is ok


def test_check_space_defaults_keep_a_reserve() -> None:
    check = dbsafety.check_space(10 * MB, 10**12)
    assert check.needed_bytes == 10 * MB + dbsafety.SPACE_RESERVE_BYTES


@pytest.mark.parametrize("factor", [0, -1, float("nan"), float("inf")])
def test_check_space_rejects_a_meaningless_factor(factor: float) -> None:
    with pytest.raises(ValueError, match="space factor"):
        dbsafety.check_space(1, 1, factor=factor)


def test_space_message_names_sizes_and_directory() -> None:
    check = dbsafety.SpaceCheck(needed_bytes=1_500 * MB, free_bytes=int(2.5 * MB))

    assert check.message(Path("/var/lib/cpdops/backups")) == (
        "not enough free space for the backup: need ~1,500 MB, have 2.5 MB "
        "in /var/lib/cpdops/backups"
    )


def test_backup_errors_are_operation_failures() -> None:
    assert issubclass(dbsafety.NotEnoughSpace, dbsafety.BackupError)
    assert issubclass(dbsafety.BackupError, OperationFailed)
    assert issubclass(dbsafety.RestoreError, OperationFailed)


# --- command lines ------------------------------------------------------------------------------


def test_pg_dump_argv_is_custom_format_without_password() -> None:
    argv = dbsafety.pg_dump_argv(
        "/usr/lib/postgresql/15/bin/pg_dump", "postgresql://u@h/db", Path("/b/x.partial")
    )

    assert argv == [
        "/usr/lib/postgresql/15/bin/pg_dump",
        "--format=custom",
        "--no-password",
        "--file=/b/x.partial",
        "--dbname=postgresql://u@h/db",
    ]


def test_pg_restore_argv_writes_a_clean_script_to_stdout() -> None:
    argv = dbsafety.pg_restore_argv("pg_restore", Path("/b/x.dump"))

    assert argv[0] == "pg_restore"
    assert {"--clean", "--if-exists", "--no-owner", "--file=-"} <= set(argv)
    assert "--single-transaction" not in argv  # psql wraps the whole restore in one
    assert argv[-1] == "/b/x.dump"


def test_psql_argv_stops_at_the_first_error_and_never_prompts() -> None:
    argv = dbsafety.psql_argv("psql", "postgresql://u@h/db", "--single-transaction", "-f", "-")

    assert argv[:2] == ["psql", "--no-psqlrc"]
    assert "--no-password" in argv
    assert argv[argv.index("-v") + 1] == "ON_ERROR_STOP=1"
    assert argv[argv.index("-d") + 1] == "postgresql://u@h/db"
    assert argv[-3:] == ["--single-transaction", "-f", "-"]


def test_restore_prelude_drops_owned_schemas_and_recreates_public() -> None:
    sql = dbsafety.restore_prelude(12.2)

    assert "SET lock_timeout = '13s'" in sql
    assert "pg_has_role(n.nspowner, 'USAGE')" in sql  # only what the role owns
    assert "d.deptype = 'e'" in sql  # not extensions' schemas
    assert "DROP SCHEMA %I CASCADE" in sql
    assert "CREATE SCHEMA public AUTHORIZATION" in sql


def test_newest_client_prefers_the_highest_major_version() -> None:
    found = dbsafety.newest_client(
        [
            Path("/usr/lib/postgresql/9.6/bin/pg_dump"),
            Path("/usr/lib/postgresql/16/bin/pg_dump"),
            Path("/usr/lib/postgresql/15/bin/pg_dump"),
        ]
    )

    assert found == Path("/usr/lib/postgresql/16/bin/pg_dump")
    assert dbsafety.newest_client([]) is None


def test_table_contents_sql_hashes_rows_in_a_stable_order() -> None:
    sql = dbsafety.table_contents_sql(["public.calls", '"we""ird".t'])

    assert sql.count("UNION ALL") == 1
    assert "FROM public.calls t" in sql
    assert 'SELECT \'"we""ird".t\', count(*)' in sql
    assert "ORDER BY t::text" in sql
