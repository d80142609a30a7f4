"""The stand-in server (orchestrator/demo/standin/server.py) without Docker."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

import orchestrator.demo
from orchestrator.fleet import images

SERVER_PATH = Path(orchestrator.demo.__file__).parent / "standin" / "server.py"


def _load_server() -> ModuleType:
    spec = importlib.util.spec_from_file_location("smartcpd_standin_server", SERVER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


server = _load_server()


def _config(**overrides: str) -> Any:
    return server.load_config({"SMARTCPD_VERSION": "7", **overrides})


def test_server_is_what_the_image_ships() -> None:
    assert images.standin_server_source() == SERVER_PATH.read_bytes()
    compile(SERVER_PATH.read_bytes(), str(SERVER_PATH), "exec")


def test_fail_modes_agree_with_the_image_builder() -> None:
    assert tuple(server.FAIL_MODES) == images.FAIL_MODES


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("health", "health"),
        ("crash", "crash"),
        ("slow-start", "slow-start"),
        ("migration", "migration"),
        (" Health ", "health"),
    ],
)
def test_parse_fail_mode(value: str | None, expected: str | None) -> None:
    assert server.parse_fail_mode(value) == expected


@pytest.mark.parametrize("value", ["bogus", "slow_start", "healthy"])
def test_parse_fail_mode_rejects_unknown_modes_and_lists_the_known(value: str) -> None:
    with pytest.raises(server.ConfigError, match="health, crash, slow-start, migration"):
        server.parse_fail_mode(value)


def test_load_config_defaults() -> None:
    config = server.load_config({})

    assert (config.version, config.tenant, config.host, config.port) == (
        "unknown",
        "",
        "0.0.0.0",
        8080,
    )
    assert config.fail is None
    assert config.slow_start_seconds == 20


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SMARTCPD_PORT": "http"}, "not an integer"),
        ({"SMARTCPD_PORT": "70000"}, "out of range"),
        ({"SMARTCPD_SLOW_START_SECONDS": "soon"}, "not a number"),
        ({"SMARTCPD_SLOW_START_SECONDS": "-1"}, "negative"),
        ({"SMARTCPD_FAIL": "everything"}, "not a known failure mode"),
    ],
)
def test_load_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(server.ConfigError, match=message):
        server.load_config(env)


@pytest.mark.parametrize(
    ("env", "path", "status", "body"),
    [
        (
            {"SMARTCPD_TENANT": "acme"},
            "/health",
            200,
            {"version": "7", "tenant": "acme", "status": "ok"},
        ),
        ({}, "/health?probe=1", 200, {"version": "7", "tenant": "", "status": "ok"}),
        ({"SMARTCPD_FAIL": "health"}, "/health", 500, {"version": "7", "status": "failing"}),
        ({}, "/nope", 404, {"error": "not found", "path": "/nope"}),
    ],
)
def test_route(env: dict[str, str], path: str, status: int, body: dict[str, str]) -> None:
    assert server.route(_config(**env), path) == (status, body)


def test_route_root_is_info() -> None:
    status, body = server.route(_config(SMARTCPD_TENANT="acme"), "/")

    assert status == 200
    assert body["version"] == "7"
    assert body["tenant"] == "acme"


@pytest.fixture
def in_process_server() -> Iterator[str]:
    httpd = server.make_server(_config(SMARTCPD_HOST="127.0.0.1", SMARTCPD_PORT="0"))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_http_server_answers_and_logs_each_request(
    in_process_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    health = httpx.get(in_process_server + "/health", trust_env=False)
    missing = httpx.get(in_process_server + "/missing", trust_env=False)

    assert health.status_code == 200
    assert health.headers["content-type"] == "application/json"
    assert health.json()["version"] == "7"
    assert missing.status_code == 404
    logged = capsys.readouterr().out
    assert '"GET /health HTTP/1.1" 200' in logged
    assert '"GET /missing HTTP/1.1" 404' in logged


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SERVER_PATH), *args],
        env={"PATH": os.environ.get("PATH", ""), "SMARTCPD_VERSION": "3", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "code", "out", "err"),
    [
        (("migrate",), {}, 0, "migrated to 3", ""),
        (("migrate",), {"SMARTCPD_FAIL": "migration"}, 1, "", "migration to 3 failed"),
        (("serve",), {"SMARTCPD_FAIL": "crash"}, 1, "", "crashing at start"),
        ((), {"SMARTCPD_FAIL": "nonsense"}, 2, "", "not a known failure mode"),
        (("migrate",), {"SMARTCPD_FAIL": "nonsense"}, 2, "", "not a known failure mode"),
        (("upgrade",), {}, 2, "", "usage:"),
    ],
)
def test_commands_and_exit_codes(
    args: tuple[str, ...], env: dict[str, str], code: int, out: str, err: str
) -> None:
    result = _run(*args, **env)

    assert result.returncode == code
    assert out in result.stdout
    assert err in result.stderr


def _start_serving(**env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SERVER_PATH), "serve"],
        env={
            "PATH": os.environ.get("PATH", ""),
            "SMARTCPD_VERSION": "5",
            "SMARTCPD_HOST": "127.0.0.1",
            "SMARTCPD_PORT": "0",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        out, _err = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, out


def test_sigterm_stops_a_serving_process_with_status_0() -> None:
    process = _start_serving()
    assert process.stdout is not None
    first_line = process.stdout.readline()  # "... listening on 127.0.0.1:PORT fail=None"
    port = int(first_line.split("listening on 127.0.0.1:")[1].split()[0])

    response = httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False)
    code, out = _stop(process)

    assert response.json() == {"version": "5", "tenant": "", "status": "ok"}
    assert code == 0
    assert "signal 15: shutting down" in out


def test_sigterm_during_slow_start_exits_0() -> None:
    process = _start_serving(SMARTCPD_FAIL="slow-start", SMARTCPD_SLOW_START_SECONDS="60")
    assert process.stdout is not None
    assert "slow start: sleeping 60s" in process.stdout.readline()

    code, out = _stop(process)

    assert code == 0
    assert "listening" not in out


def test_info_body_is_json_serialisable() -> None:
    _status, body = server.route(_config(), "/")
    assert json.loads(json.dumps(body)) == body


# --- the tenant database ----------------------------------------------------------------------


def test_load_config_reads_the_db_dsn() -> None:
    assert _config().db_dsn is None
    assert _config(SMARTCPD_DB_DSN="  ").db_dsn is None
    assert _config(SMARTCPD_DB_DSN="postgresql://u:p@h/db").db_dsn == "postgresql://u:p@h/db"


@pytest.mark.parametrize(
    ("dsn", "bare", "password"),
    [
        ("postgresql://u:p%40ss@10.213.1.1:5432/t1", "postgresql://u@10.213.1.1:5432/t1", "p@ss"),
        ("postgres://u@h/db", "postgres://u@h/db", None),
        ("postgresql://h/db?sslmode=off&password=x", "postgresql://h/db?sslmode=off", "x"),
        ("postgresql://u:@h/db", "postgresql://u@h/db", ""),
        ("host=h dbname=x password=y", "host=h dbname=x password=y", None),
    ],
)
def test_split_password(dsn: str, bare: str, password: str | None) -> None:
    assert server.split_password(dsn) == (bare, password)


def test_redact_hides_the_password() -> None:
    assert server.redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert server.redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert "secret" not in server.redact("postgresql://h/db?password=secret")


def test_psql_gets_the_password_in_its_environment_not_argv() -> None:
    argv, env = server.psql_invocation(
        "postgresql://u:secret@h/db", "SELECT 1", {"PATH": "/usr/bin", "PGPASSWORD": "old"}
    )

    assert argv[0] == "psql"
    assert "secret" not in " ".join(argv)
    assert argv[argv.index("-d") + 1] == "postgresql://u@h/db"
    assert argv[-2:] == ["-c", "SELECT 1"]
    assert argv[argv.index("-v") : argv.index("-v") + 2] == ["-v", "ON_ERROR_STOP=1"]
    assert "-w" in argv  # never prompts
    assert env["PGPASSWORD"] == "secret"
    assert env["PATH"] == "/usr/bin"


@pytest.mark.parametrize(
    ("version", "number"), [("1", 1), ("2", 2), ("10.4-rc1", 10), ("unknown", 0), ("", 0)]
)
def test_version_number(version: str, number: int) -> None:
    assert server.version_number(version) == number


def test_migration_of_v1_has_no_steps_and_v2_four() -> None:
    assert server.migration_steps("1") == []
    steps = server.migration_steps("2")

    assert [s.description for s in steps] == [
        "add column calls.duration_s",
        "back-fill calls.duration_s",
        "create table schema_version",
        "record schema version 2",
    ]
    assert "ALTER TABLE calls ADD COLUMN IF NOT EXISTS duration_s" in steps[0].sql
    assert steps[3].sql.endswith("VALUES ('2')")


def test_migration_quotes_the_version() -> None:
    assert server.migration_steps("3'x")[3].sql.endswith("VALUES ('3''x')")


class FakeDatabase:
    """Records the SQL it is given; fails on the injected statement like PostgreSQL would."""

    def __init__(self, *, fail_on: str | None = None) -> None:
        self.dsn = "postgresql://u:p@h/db"
        self.statements: list[str] = []
        self.fail_on = fail_on

    def ensure_schema(self) -> None:
        self.statements.append("<v1 schema>")

    def run(self, sql: str) -> str:
        if "RAISE EXCEPTION" in sql or (self.fail_on and self.fail_on in sql):
            raise server.DbError("ERROR:  boom")
        self.statements.append(sql)
        return ""

    def problem(self) -> str | None:
        return None


def test_migrate_runs_each_step_on_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    database = FakeDatabase()

    code = server.migrate(_config(SMARTCPD_VERSION="2"), database)

    assert code == 0
    steps = server.migration_steps("2")
    assert database.statements == ["<v1 schema>", *[s.sql for s in steps]]
    out = capsys.readouterr().out
    assert "step 1 of 4 committed: add column calls.duration_s" in out
    assert "migrated to 2 (4 steps)" in out


def test_failing_migration_commits_the_first_half_then_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    database = FakeDatabase()

    code = server.migrate(_config(SMARTCPD_VERSION="2", SMARTCPD_FAIL="migration"), database)

    assert code == 1
    steps = server.migration_steps("2")
    assert database.statements == ["<v1 schema>", steps[0].sql, steps[1].sql]
    err = capsys.readouterr().err
    assert "migration to 2 failed: step 3 of 4 (injected failure): ERROR:  boom" in err


def test_migration_stops_at_the_first_failing_step(capsys: pytest.CaptureFixture[str]) -> None:
    database = FakeDatabase(fail_on="CREATE TABLE IF NOT EXISTS schema_version")

    code = server.migrate(_config(SMARTCPD_VERSION="2"), database)

    assert code == 1
    assert len(database.statements) == 3  # schema, step 1, step 2
    assert "step 3 of 4 (create table schema_version)" in capsys.readouterr().err


def test_injected_failure_is_raised_by_the_database() -> None:
    sql = server.injected_failure_sql(2, 4)
    assert sql.startswith("DO $$ BEGIN RAISE EXCEPTION 'injected failure after step 2 of 4")


@pytest.mark.parametrize(
    ("problem", "status", "body"),
    [
        (None, 200, {"version": "7", "tenant": "acme", "status": "ok", "db": "ok"}),
        (
            "connection refused",
            500,
            {"version": "7", "tenant": "acme", "status": "failing", "db": "connection refused"},
        ),
    ],
)
def test_health_with_a_database(problem: str | None, status: int, body: dict[str, str]) -> None:
    config = _config(SMARTCPD_TENANT="acme", SMARTCPD_DB_DSN="postgresql://h/db")
    assert server.route(config, "/health", lambda: problem) == (status, body)


def test_fail_health_wins_over_the_database_check() -> None:
    def unreachable() -> str | None:
        raise AssertionError("the database must not be asked")

    status, _body = server.route(_config(SMARTCPD_FAIL="health"), "/health", unreachable)
    assert status == 500


def test_database_without_psql_reports_it() -> None:
    database = server.Database("postgresql://u:secret@h/db", environ={"PATH": "/nonexistent"})

    problem = database.problem()

    assert problem is not None and "psql is not installed" in problem


def test_http_health_checks_the_database_per_request() -> None:
    database = FakeDatabase()
    checks: list[int] = []

    def problem() -> str | None:
        checks.append(1)
        return "db down" if len(checks) > 1 else None

    database.problem = problem
    config = _config(SMARTCPD_HOST="127.0.0.1", SMARTCPD_PORT="0", SMARTCPD_DB_DSN="x")
    httpd = server.make_server(config, database)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/health"
        first = httpx.get(url, trust_env=False)
        second = httpx.get(url, trust_env=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()

    assert (first.status_code, first.json()["db"]) == (200, "ok")
    assert (second.status_code, second.json()["db"]) == (500, "db down")
