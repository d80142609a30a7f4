"""A stand-in for SmartCPD: a tiny HTTP service that reports its version and can be told to fail.

It runs inside the ``smartcpd-fake`` image with Debian's ``python3`` and the standard library
only (see ``orchestrator/fleet/images.py``, which builds the image)::

    python3 /app/server.py serve      # default CMD: HTTP on $SMARTCPD_PORT (8080)
    python3 /app/server.py migrate    # the database migration of this version

Environment:

    SMARTCPD_VERSION              the version it reports (baked into the image)
    SMARTCPD_TENANT               the tenant it reports (may be empty)
    SMARTCPD_HOST / SMARTCPD_PORT where to listen (default 0.0.0.0:8080)
    SMARTCPD_DB_DSN               the tenant database, a libpq URI (optional, see below)
    SMARTCPD_FAIL                 a failure mode, one of FAIL_MODES:
        health      GET /health answers 500 {"version": V, "status": "failing"}
        crash       print an error and exit 1 at start
        slow-start  sleep $SMARTCPD_SLOW_START_SECONDS (default 20) before listening
        migration   ``migrate`` fails half-way: it commits the first half of its statements,
                    then a statement that fails in the database, and exits 1
    SMARTCPD_SLOW_START_SECONDS   see slow-start
    SMARTCPD_LOG_LINE             a line ``serve`` prints to its log at start (e.g. a fake
                                  secret, for the tests of the evidence's redaction)

The tenant database (only when SMARTCPD_DB_DSN is set) is reached with ``psql`` (Debian's
postgresql-client in the base image; the password goes to psql in PGPASSWORD, not argv):

* ``serve`` makes sure the v1 schema exists before it listens (table ``calls`` with three seed
  rows; idempotent, under an advisory lock so that several instances may start at once), and
  ``/health`` queries the database on every request: ``"db": "ok"``, or 500 with the error.
* ``migrate`` applies the migration of the image's version (MIGRATIONS; versions >= 2: a
  column ``calls.duration_s``, back-filled, and a table ``schema_version`` holding the
  version), one statement per transaction like many real migration tools, so a failure
  half-way really leaves the database half-migrated. Without SMARTCPD_DB_DSN it only reports.

SIGTERM (and SIGINT) stop the server at once with exit status 0, even during a slow start:
as PID 1 in a container the process would otherwise ignore SIGTERM until Docker kills it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

FAIL_MODES = ("health", "crash", "slow-start", "migration")
DEFAULT_PORT = 8080
DEFAULT_SLOW_START_SECONDS = 20.0
EXIT_FAILED = 1
EXIT_USAGE = 2
USAGE = "usage: server.py [serve|migrate]"
PSQL_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5

# The v1 schema: one transaction (psql -c sends it as one query string); the advisory lock
# lets several instances of one tenant start at once.
V1_SCHEMA_SQL = """\
SELECT pg_advisory_xact_lock(7262001);
CREATE TABLE IF NOT EXISTS calls (
    id serial PRIMARY KEY,
    caller text NOT NULL,
    started_at timestamptz NOT NULL
);
INSERT INTO calls (caller, started_at)
SELECT seed.caller, seed.started_at::timestamptz
FROM (VALUES
    ('+74950000001', '2026-01-15 09:00:00+00'),
    ('+74950000002', '2026-01-15 09:05:30+00'),
    ('+78120000003', '2026-01-15 10:12:00+00')
) AS seed (caller, started_at)
WHERE NOT EXISTS (SELECT 1 FROM calls)
"""
HEALTH_SQL = "SELECT count(*) FROM calls"


class ConfigError(Exception):
    """The environment does not describe a valid configuration."""


@dataclass(frozen=True)
class Config:
    version: str
    tenant: str
    host: str
    port: int
    fail: str | None
    slow_start_seconds: float
    db_dsn: str | None = None
    log_line: str | None = None


def parse_fail_mode(value: str | None) -> str | None:
    """``SMARTCPD_FAIL`` → a member of FAIL_MODES, or None when unset or blank."""
    if value is None or not value.strip():
        return None
    mode = value.strip().lower()
    if mode not in FAIL_MODES:
        raise ConfigError(
            f"SMARTCPD_FAIL={value!r} is not a known failure mode; "
            f"use one of: {', '.join(FAIL_MODES)} (or leave it empty)"
        )
    return mode


def load_config(environ: Mapping[str, str]) -> Config:
    """Read the configuration from an environment mapping; raises ConfigError."""
    port_text = environ.get("SMARTCPD_PORT", "").strip() or str(DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"SMARTCPD_PORT={port_text!r} is not an integer") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"SMARTCPD_PORT={port} is out of range 0-65535")
    slow_text = environ.get("SMARTCPD_SLOW_START_SECONDS", "").strip()
    try:
        slow = float(slow_text) if slow_text else DEFAULT_SLOW_START_SECONDS
    except ValueError:
        raise ConfigError(f"SMARTCPD_SLOW_START_SECONDS={slow_text!r} is not a number") from None
    if slow < 0:
        raise ConfigError(f"SMARTCPD_SLOW_START_SECONDS={slow} is negative")
    return Config(
        version=environ.get("SMARTCPD_VERSION", "").strip() or "unknown",
        tenant=environ.get("SMARTCPD_TENANT", "").strip(),
        host=environ.get("SMARTCPD_HOST", "").strip() or "0.0.0.0",
        port=port,
        fail=parse_fail_mode(environ.get("SMARTCPD_FAIL")),
        slow_start_seconds=slow,
        db_dsn=environ.get("SMARTCPD_DB_DSN", "").strip() or None,
        log_line=environ.get("SMARTCPD_LOG_LINE", "").strip() or None,
    )


# --- the tenant database ----------------------------------------------------------------------


class DbError(Exception):
    """psql could not do what was asked (message: psql's error, without the password)."""


@dataclass(frozen=True)
class MigrationStep:
    description: str
    sql: str


def version_number(version: str) -> int:
    """The leading number of a version (``"2"`` → 2, ``"2.1-rc"`` → 2, ``"unknown"`` → 0)."""
    match = re.match(r"\d+", version)
    return int(match.group()) if match else 0


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def migration_steps(version: str) -> list[MigrationStep]:
    """The migration to ``version`` from v1: statements, each committed on its own."""
    if version_number(version) < 2:
        return []
    return [
        MigrationStep(
            "add column calls.duration_s",
            "ALTER TABLE calls ADD COLUMN IF NOT EXISTS duration_s integer",
        ),
        MigrationStep(
            "back-fill calls.duration_s", "UPDATE calls SET duration_s = 0 WHERE duration_s IS NULL"
        ),
        MigrationStep(
            "create table schema_version",
            "CREATE TABLE IF NOT EXISTS schema_version (v text NOT NULL)",
        ),
        MigrationStep(
            f"record schema version {version}",
            f"DELETE FROM schema_version; INSERT INTO schema_version (v) "
            f"VALUES ({sql_literal(version)})",
        ),
    ]


def injected_failure_sql(done: int, total: int) -> str:
    """A statement that fails in the database itself (SMARTCPD_FAIL=migration)."""
    message = f"injected failure after step {done} of {total} (SMARTCPD_FAIL=migration)"
    return f"DO $$ BEGIN RAISE EXCEPTION {sql_literal(message)}; END $$"


def split_password(dsn: str) -> tuple[str, str | None]:
    """A libpq URI without its password, and the password (None if it has none).

    Other DSN forms (``host=... password=...``) are returned unchanged."""
    match = re.match(r"(postgres(?:ql)?)://([^/?#]*)(.*)$", dsn, re.DOTALL)
    if match is None:
        return dsn, None
    scheme, netloc, rest = match.groups()
    password: str | None = None
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, secret = userinfo.partition(":")
        if colon:
            password = unquote(secret)
        netloc = f"{user}@{hosts}" if user else hosts
    path, question, query = rest.partition("?")
    if question:
        pairs = parse_qsl(query, keep_blank_values=True)
        kept = [(key, value) for key, value in pairs if key != "password"]
        if len(kept) != len(pairs):
            password = next(value for key, value in pairs if key == "password")
            query = urlencode(kept)
        rest = f"{path}?{query}" if query else path
    return f"{scheme}://{netloc}{rest}", password


def redact(dsn: str) -> str:
    """The DSN as it may appear in a log: the password replaced by ``***``."""
    bare, password = split_password(dsn)
    match = re.match(r"(postgres(?:ql)?://)([^/?#@]*)@(.*)$", bare, re.DOTALL)
    if password is None or match is None:  # no password, or it was a query parameter
        return bare
    return f"{match.group(1)}{match.group(2)}:***@{match.group(3)}"


def psql_invocation(
    dsn: str, sql: str, environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """argv and environment to run one SQL string with psql (the password in PGPASSWORD)."""
    bare, password = split_password(dsn)
    argv = ["psql", "-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1", "-d", bare, "-c", sql]
    env = {
        **environ,
        "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S),
        "PGAPPNAME": "smartcpd-fake",
    }
    if password is not None:
        env["PGPASSWORD"] = password
    return argv, env


class Database:
    """The tenant database, reached with psql."""

    def __init__(self, dsn: str, environ: Mapping[str, str] | None = None) -> None:
        self.dsn = dsn
        self._environ = dict(os.environ if environ is None else environ)
        self._lock = threading.Lock()
        self._schema_ready = False

    def run(self, sql: str) -> str:
        """Run ``sql`` in one transaction; its output, or DbError."""
        argv, env = psql_invocation(self.dsn, sql, self._environ)
        if shutil.which(argv[0], path=env.get("PATH")) is None:
            raise DbError("psql is not installed (Debian package postgresql-client)")
        try:
            result = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=PSQL_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise DbError(f"psql did not finish in {PSQL_TIMEOUT_S:g}s") from None
        if result.returncode != 0:
            raise DbError(_psql_error(result.stderr, result.returncode))
        return result.stdout.strip()

    def ensure_schema(self) -> None:
        """Create the v1 schema (with seed rows) unless it exists; DbError."""
        with self._lock:
            if not self._schema_ready:
                self.run(V1_SCHEMA_SQL)
                self._schema_ready = True

    def problem(self) -> str | None:
        """None when the database answers the health query, else what is wrong."""
        try:
            self.ensure_schema()
            self.run(HEALTH_SQL)
        except DbError as exc:
            return str(exc)
        return None


def _psql_error(stderr: str, code: int) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return " / ".join(lines[-3:]) if lines else f"psql exited with status {code}"


def route(
    config: Config, path: str, db_problem: Callable[[], str | None] | None = None
) -> tuple[int, dict[str, Any]]:
    """The answer (status, JSON body) to ``GET path``; ``db_problem`` checks the database."""
    path = path.split("?", 1)[0]
    if path == "/health":
        if config.fail == "health":
            return 500, {"version": config.version, "status": "failing"}
        body: dict[str, Any] = {"version": config.version, "tenant": config.tenant}
        if db_problem is not None:
            problem = db_problem()
            if problem is not None:
                return 500, {**body, "status": "failing", "db": problem}
            return 200, {**body, "status": "ok", "db": "ok"}
        return 200, {**body, "status": "ok"}
    if path == "/":
        return 200, {
            "service": "smartcpd-fake",
            "version": config.version,
            "tenant": config.tenant,
            "endpoints": ["/health"],
        }
    return 404, {"error": "not found", "path": path}


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())} {message}", flush=True)


class Handler(BaseHTTPRequestHandler):
    server_version = "smartcpd-fake"
    config: Config  # set on a subclass by make_server
    database: Database | None = None  # idem, when SMARTCPD_DB_DSN is set

    def do_GET(self) -> None:
        db_problem = self.database.problem if self.database is not None else None
        status, body = route(self.config, self.path, db_problem)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        _log(f"{self.address_string()} {format % args}")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


def make_server(config: Config, database: Database | None = None) -> Server:
    """A bound (not yet serving) HTTP server for this configuration."""
    handler = type("ConfiguredHandler", (Handler,), {"config": config, "database": database})
    return Server((config.host, config.port), handler)


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM/SIGINT handler."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def serve(config: Config) -> int:
    if config.fail == "crash":
        print(
            f"smartcpd-fake {config.version}: crashing at start (SMARTCPD_FAIL=crash)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if config.log_line:
        _log(config.log_line)
    try:
        if config.fail == "slow-start":
            _log(f"slow start: sleeping {config.slow_start_seconds:g}s before listening")
            time.sleep(config.slow_start_seconds)
        database = Database(config.db_dsn) if config.db_dsn else None
        if database is not None:
            try:
                database.ensure_schema()
                _log(f"tenant database ready (schema v1): {redact(database.dsn)}")
            except DbError as exc:  # /health reports it until the database answers
                _log(f"tenant database not ready: {exc}")
        server = make_server(config, database)
        try:
            _log(
                f"smartcpd-fake {config.version} listening on {config.host}:{server.server_port}"
                f" fail={config.fail}"
            )
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()
    except Terminated as exc:
        _log(f"signal {exc.args[0]}: shutting down")
    return 0


def migrate(config: Config, database: Database | None = None) -> int:
    """Apply the migration of ``config.version`` to the tenant database (if there is one)."""
    if database is None and config.db_dsn:
        database = Database(config.db_dsn)
    if database is None:
        if config.fail == "migration":
            print(
                f"migration to {config.version} failed (SMARTCPD_FAIL=migration)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        print(f"migrated to {config.version} (no tenant database)", flush=True)
        return 0
    steps = migration_steps(config.version)
    # With SMARTCPD_FAIL=migration, the first half is committed, then the database fails.
    stop_after = (len(steps) + 1) // 2 if config.fail == "migration" else len(steps)
    try:
        database.ensure_schema()
        for number, step in enumerate(steps[:stop_after], start=1):
            _run_step(database, step, number, len(steps), config.version)
        if config.fail == "migration":
            failure = MigrationStep(
                "injected failure", injected_failure_sql(stop_after, len(steps))
            )
            _run_step(database, failure, stop_after + 1, len(steps), config.version)
    except DbError as exc:
        print(f"migration to {config.version} failed: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    print(f"migrated to {config.version} ({len(steps)} steps)", flush=True)
    return 0


def _run_step(database: Database, step: MigrationStep, number: int, total: int, to: str) -> None:
    try:
        database.run(step.sql)
    except DbError as exc:
        raise DbError(f"step {number} of {total} ({step.description}): {exc}") from None
    print(f"migration to {to}: step {number} of {total} committed: {step.description}", flush=True)


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    command = argv[0] if argv else "serve"
    if command not in ("serve", "migrate") or len(argv) > 1:
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(environ)
    except ConfigError as exc:
        print(f"smartcpd-fake: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if command == "migrate":
        return migrate(config)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return serve(config)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
