"""Tenant database safety: a backup before a migration, a restore when the rollout goes back.

Runs on the orchestrator's machine with Debian's PostgreSQL client programs (``pg_dump``,
``pg_restore``, ``psql`` of the newest ``/usr/lib/postgresql/<major>/bin``; as root,
``postgresql-client`` is installed with apt when they are missing). The DSN is a libpq URI or
``key=value`` string; its password is given to the programs in ``PGPASSWORD``, never in argv,
and never logged (``redact_dsn``).

* ``backup`` — ``pg_dump --format=custom`` into a private temporary file in ``dest_dir``,
  fsync, atomic rename to ``<label>-<UTC time>-<random>.dump``. Refused with
  ``NotEnoughSpace`` before it starts when ``dest_dir`` has less free space than the database
  size × ``space_factor`` + a reserve (``check_space``).
* ``restore`` — one transaction (``psql --single-transaction``): drop the schemas the DSN's
  role owns (``public`` is re-created with its owner, privileges and comment), so that tables
  and columns made after the backup go too, then the script ``pg_restore --clean --if-exists
  --no-owner`` makes of the backup. Any failure or timeout rolls the whole transaction back:
  the database is then as it was before the restore.
* ``db_fingerprint`` — a hash of the schema (``information_schema.columns``) and of every
  table's rows: equal fingerprints, equal content.

Errors: ``BackupError`` / ``NotEnoughSpace`` / ``RestoreError``, all ``OperationFailed``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO
from urllib.parse import parse_qsl, unquote, urlencode

from orchestrator.errors import OperationFailed

log = logging.getLogger(__name__)

CLIENT_ROOT = Path("/usr/lib/postgresql")
CLIENT_PACKAGE = "postgresql-client"
# A custom-format dump is compressed and holds no index pages or dead rows, so it is almost
# always well under pg_database_size; 1.0 × the size (+ the reserve) leaves a good margin.
DEFAULT_SPACE_FACTOR = 1.0
SPACE_RESERVE_BYTES = 64 * 1024 * 1024  # never fill the backup disk to the last byte
QUERY_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10
APP_NAME = "cpdops-dbsafety"
_SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema')"
_USER_SCHEMA = f"NOT IN {_SYSTEM_SCHEMAS} AND {{col}} NOT LIKE 'pg\\_%'"


class BackupError(OperationFailed):
    """A database backup could not be made (nothing was written to the backup directory)."""


class NotEnoughSpace(BackupError):
    """The backup directory has too little free space for a backup of this database."""


class RestoreError(OperationFailed):
    """A restore failed; it ran in one transaction, so the database was left as it was."""


@dataclass(frozen=True)
class Backup:
    path: Path
    size_bytes: int
    seconds: float
    sha256: str


# --- DSNs (pure) --------------------------------------------------------------------------------

_URI = re.compile(r"postgres(?:ql)?(?:\+\w+)?://([^/?#]*)(.*)$", re.DOTALL)
_KV_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def split_dsn(dsn: str) -> tuple[str, str | None]:
    """The DSN without its password (for argv) and the password (for ``PGPASSWORD``).

    Takes libpq URIs (``postgresql://u:p@h:5432/db?sslmode=require``, also ``postgres://``
    and SQLAlchemy's ``postgresql+psycopg2://``, which becomes ``postgresql://``; a
    ``password`` query parameter counts too) and ``key=value`` strings."""
    match = _URI.match(dsn.strip())
    if match is None:
        kv = _KV_PASSWORD.search(dsn)
        if kv is None:
            return dsn, None
        value = kv.group(1)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        return (dsn[: kv.start()] + dsn[kv.end() :]).strip(), value
    netloc, rest = match.groups()
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
            password = [value for key, value in pairs if key == "password"][-1]
            query = urlencode(kept)
        rest = f"{path}?{query}" if query else path
    return f"postgresql://{netloc}{rest}", password


def redact_dsn(dsn: str) -> str:
    """The DSN for logs and messages: any password replaced by ``***``."""
    bare, password = split_dsn(dsn)
    if password is None:
        return bare
    if not bare.startswith("postgresql://"):  # key=value
        return f"{bare} password=***"
    match = re.match(r"postgresql://([^/?#@]*)@(.*)$", bare, re.DOTALL)
    if match is None:  # the password was a query parameter
        return f"{bare}{'&' if '?' in bare else '?'}password=***"
    return f"postgresql://{match.group(1)}:***@{match.group(2)}"


def scrub(text: str, password: str | None) -> str:
    """``text`` (e.g. a client's stderr) with the password, should it appear, replaced."""
    return text.replace(password, "***") if password else text


# --- free space (pure) --------------------------------------------------------------------------


@dataclass(frozen=True)
class SpaceCheck:
    needed_bytes: int
    free_bytes: int

    @property
    def ok(self) -> bool:
        return self.free_bytes >= self.needed_bytes

    def message(self, dest_dir: Path) -> str:
        return (
            f"not enough free space for the backup: need ~{_mb(self.needed_bytes)} MB, "
            f"have {_mb(self.free_bytes)} MB in {dest_dir}"
        )


def check_space(
    db_size_bytes: int,
    free_bytes: int,
    *,
    factor: float = DEFAULT_SPACE_FACTOR,
    reserve_bytes: int = SPACE_RESERVE_BYTES,
) -> SpaceCheck:
    """Whether a backup of a database of ``db_size_bytes`` fits in ``free_bytes``."""
    if not factor > 0 or math.isinf(factor):
        raise ValueError(f"space factor must be a positive number, not {factor!r}")
    needed = math.ceil(max(db_size_bytes, 0) * factor) + max(reserve_bytes, 0)
    return SpaceCheck(needed_bytes=needed, free_bytes=max(free_bytes, 0))


def _mb(size: int) -> str:
    return f"{size / 1e6:,.0f}" if size >= 10e6 else f"{size / 1e6:.1f}"


# --- command lines (pure) -----------------------------------------------------------------------


def pg_dump_argv(pg_dump: str, dsn: str, out: Path) -> list[str]:
    """``pg_dump`` of the whole database in custom format into ``out`` (``dsn`` without
    password)."""
    return [pg_dump, "--format=custom", "--no-password", f"--file={out}", f"--dbname={dsn}"]


def pg_restore_argv(pg_restore: str, backup: Path) -> list[str]:
    """``pg_restore`` writing the restore script to stdout (psql runs it in one transaction)."""
    return [pg_restore, "--clean", "--if-exists", "--no-owner", "--file=-", str(backup)]


def psql_argv(psql: str, dsn: str, *args: str) -> list[str]:
    """``psql`` that stops at the first error, without reading ``~/.psqlrc`` or prompting."""
    return [
        psql,
        "--no-psqlrc",
        "--no-password",
        "--quiet",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        dsn,
        *args,
    ]


def restore_prelude(lock_timeout_s: float) -> str:
    """SQL run first in the restore transaction: drop what the restoring role owns.

    Every schema owned by the current role (directly or through membership, e.g. ``public``,
    owned by ``pg_database_owner`` in PostgreSQL 15) and not belonging to an extension is
    dropped with everything in it; ``public`` is then re-created with its previous owner,
    privileges and comment, since dumps assume it exists. Schemas of other roles are left to
    ``pg_restore --clean``."""
    return f"""\
SET client_min_messages = warning;
SET lock_timeout = '{max(1, math.ceil(lock_timeout_s))}s';
DO $cpdops$
DECLARE
    public_owner text;
    public_acl aclitem[];
    public_comment text;
    grant_row record;
    schema_name text;
BEGIN
    SELECT nspowner::regrole::text, nspacl, obj_description(oid, 'pg_namespace')
      INTO public_owner, public_acl, public_comment
      FROM pg_namespace WHERE nspname = 'public' AND pg_has_role(nspowner, 'USAGE');
    FOR schema_name IN
        SELECT n.nspname FROM pg_namespace n
         WHERE n.nspname {_USER_SCHEMA.format(col="n.nspname")}
           AND pg_has_role(n.nspowner, 'USAGE')
           AND NOT EXISTS (SELECT 1 FROM pg_depend d
                            WHERE d.classid = 'pg_namespace'::regclass
                              AND d.objid = n.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('DROP SCHEMA %I CASCADE', schema_name);
    END LOOP;
    IF public_owner IS NOT NULL THEN
        EXECUTE format('CREATE SCHEMA public AUTHORIZATION %s', public_owner);
        IF public_acl IS NOT NULL THEN
            EXECUTE 'REVOKE ALL ON SCHEMA public FROM ' || public_owner;
            FOR grant_row IN SELECT * FROM aclexplode(public_acl) LOOP
                EXECUTE format(
                    'GRANT %s ON SCHEMA public TO %s%s',
                    grant_row.privilege_type,
                    CASE WHEN grant_row.grantee = 0 THEN 'PUBLIC'
                         ELSE grant_row.grantee::regrole::text END,
                    CASE WHEN grant_row.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
            END LOOP;
        END IF;
        IF public_comment IS NOT NULL THEN
            EXECUTE format('COMMENT ON SCHEMA public IS %L', public_comment);
        END IF;
    END IF;
END
$cpdops$;
"""


# --- client programs ----------------------------------------------------------------------------


def _major(path: Path) -> float:
    """The PostgreSQL major version in ``/usr/lib/postgresql/<major>/bin/<tool>``."""
    try:
        return float(path.parent.parent.name)
    except ValueError:
        return -1.0


def newest_client(candidates: Sequence[Path]) -> Path | None:
    """Pure: the candidate of the highest major version (pg_dump must be ≥ the server's)."""
    return max(candidates, key=_major, default=None)


def client_bin_dir() -> Path:
    """The bin directory of the newest installed PostgreSQL client (installed if missing)."""
    found = newest_client(list(CLIENT_ROOT.glob("*/bin/pg_dump")))
    if found is None:
        _install_client()
        found = newest_client(list(CLIENT_ROOT.glob("*/bin/pg_dump")))
    if found is None:
        raise BackupError(f"no PostgreSQL client programs under {CLIENT_ROOT} after installing")
    return found.parent


def _install_client() -> None:
    if os.geteuid() != 0:
        raise BackupError(
            "pg_dump is not installed and we are not root to install it; "
            f"run `apt-get install {CLIENT_PACKAGE}` as root"
        )
    log.info("installing %s with apt-get", CLIENT_PACKAGE)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", CLIENT_PACKAGE]
    result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:  # the package lists may be missing: update and try once more
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-10:])
        raise BackupError(f"`apt-get install {CLIENT_PACKAGE}` failed:\n{tail}")


def _client_env(password: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S),
        "PGAPPNAME": APP_NAME,
    }
    env.pop("PGPASSWORD", None)
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def query(dsn: str, sql: str, *, timeout_s: float = QUERY_TIMEOUT_S) -> str:
    """Run ``sql`` with psql (unaligned, tuples only, NUL between rows); its output.

    Raises ``OperationFailed`` (the error without the password)."""
    bare, password = split_dsn(dsn)
    psql = str(client_bin_dir() / "psql")
    argv = psql_argv(psql, bare, "--no-align", "--tuples-only", "--record-separator-zero")
    try:
        result = subprocess.run(
            [*argv, "-c", sql],
            env=_client_env(password),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OperationFailed(
            f"query on {redact_dsn(dsn)} did not finish in {timeout_s:g}s"
        ) from None
    if result.returncode != 0:
        raise OperationFailed(
            f"query on {redact_dsn(dsn)} failed: {_tail(scrub(result.stderr, password))}"
        )
    return result.stdout


def _rows(output: str) -> list[str]:
    return [row.rstrip("\n") for row in output.split("\0") if row.strip()]


def database_size(dsn: str) -> int:
    """``pg_database_size`` of the DSN's database, in bytes."""
    return int(_rows(query(dsn, "SELECT pg_database_size(current_database())"))[0])


# --- backup -------------------------------------------------------------------------------------


def ensure_space(
    dsn: str,
    dest_dir: Path,
    *,
    space_factor: float = DEFAULT_SPACE_FACTOR,
    reserve_bytes: int = SPACE_RESERVE_BYTES,
) -> int:
    """The database's size when a backup of it fits in ``dest_dir`` (made if missing);
    NotEnoughSpace (``SpaceCheck.message``) when it does not, BackupError when the directory
    or the database cannot be read. Writes nothing but the directory: a rollout asks this
    before an instance's step touches anything, and ``backup`` asks it again."""
    try:
        dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        free = shutil.disk_usage(dest_dir).free
    except OSError as exc:
        raise BackupError(f"backup directory {dest_dir}: {exc}") from exc
    try:
        size = database_size(dsn)
    except OperationFailed as exc:
        raise BackupError(f"cannot back up {redact_dsn(dsn)}: {exc}") from exc
    space = check_space(size, free, factor=space_factor, reserve_bytes=reserve_bytes)
    if not space.ok:
        raise NotEnoughSpace(space.message(dest_dir))
    return size


def backup(
    dsn: str,
    dest_dir: Path,
    *,
    label: str,
    timeout_s: float = 600,
    space_factor: float = DEFAULT_SPACE_FACTOR,
    reserve_bytes: int = SPACE_RESERVE_BYTES,
) -> Backup:
    """``pg_dump -Fc`` the database into ``dest_dir``; the finished file, or BackupError."""
    started = time.monotonic()
    bare, password = split_dsn(dsn)
    where = redact_dsn(dsn)
    bindir = client_bin_dir()
    size = ensure_space(dsn, dest_dir, space_factor=space_factor, reserve_bytes=reserve_bytes)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    safe_label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._") or "db"
    final = dest_dir / f"{safe_label}-{stamp}-{uuid.uuid4().hex[:6]}.dump"
    fd, partial_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=dest_dir)
    os.close(fd)  # mkstemp made it 0600: the dump is private from its first byte
    partial = Path(partial_name)
    log.info("backup starting label=%s db=%s db_bytes=%d file=%s", label, where, size, final)
    try:
        remaining = max(1.0, timeout_s - (time.monotonic() - started))
        try:
            result = subprocess.run(
                pg_dump_argv(str(bindir / "pg_dump"), bare, partial),
                env=_client_env(password),
                capture_output=True,
                text=True,
                timeout=remaining,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BackupError(
                f"pg_dump of {where} did not finish in {timeout_s:g}s; killed"
            ) from None
        if result.returncode != 0:
            raise BackupError(
                f"pg_dump of {where} failed (exit {result.returncode}): "
                f"{_tail(scrub(result.stderr, password))}"
            )
        digest = _sha256_and_sync(partial)
        os.replace(partial, final)
        _fsync_dir(dest_dir)
    except OSError as exc:
        raise BackupError(f"backup of {where} into {dest_dir}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    done = Backup(
        path=final,
        size_bytes=final.stat().st_size,
        seconds=time.monotonic() - started,
        sha256=digest,
    )
    log.info(
        "backup done label=%s file=%s bytes=%d seconds=%.2f",
        label,
        done.path,
        done.size_bytes,
        done.seconds,
    )
    return done


def _sha256_and_sync(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb+") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
        os.fsync(handle.fileno())
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- restore ------------------------------------------------------------------------------------


def restore(dsn: str, backup: Path, *, timeout_s: float = 600) -> float:
    """Make the database's content that of ``backup``, in one transaction; the seconds taken.

    Nothing may use the database meanwhile (stop the application first): the restore takes
    exclusive locks on everything it drops and gives up after ``timeout_s``, rolled back."""
    started = time.monotonic()
    bare, password = split_dsn(dsn)
    where = redact_dsn(dsn)
    if not backup.is_file():
        raise RestoreError(f"cannot restore {where}: no backup file {backup}")
    bindir = client_bin_dir()
    restore_cmd = pg_restore_argv(str(bindir / "pg_restore"), backup)
    psql_cmd = psql_argv(
        str(bindir / "psql"),
        bare,
        "--single-transaction",
        "-c",
        restore_prelude(timeout_s),
        "-f",
        "-",
    )
    env = _client_env(password)
    log.info("restore starting db=%s file=%s", where, backup)
    with _temp_log() as restore_err, _temp_log() as psql_err:
        psql = subprocess.Popen(
            psql_cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=psql_err
        )
        dump = subprocess.Popen(
            restore_cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=restore_err,
        )
        timed_out = threading.Event()

        def kill_both() -> None:
            timed_out.set()
            for process in (dump, psql):
                with contextlib.suppress(ProcessLookupError):
                    process.kill()

        watchdog = threading.Timer(timeout_s, kill_both)
        watchdog.start()
        try:
            assert dump.stdout is not None and psql.stdin is not None
            try:
                shutil.copyfileobj(dump.stdout, psql.stdin, 1 << 20)
            except BrokenPipeError:  # psql stopped at an error (or was killed): see below
                dump.kill()
            dump_code = dump.wait()
            if dump_code != 0 or timed_out.is_set():
                # psql must not see the end of its input: it would COMMIT what it got so far.
                psql.kill()
            with contextlib.suppress(BrokenPipeError):
                psql.stdin.close()
            psql_code = psql.wait()
        finally:
            watchdog.cancel()
            for process in (dump, psql):
                if process.poll() is None:
                    process.kill()
                    process.wait()
            if dump.stdout is not None:
                dump.stdout.close()
        errors = scrub(_read(psql_err) + _read(restore_err), password)
    if psql_code != 0:
        if timed_out.is_set():
            reason = f"did not finish in {timeout_s:g}s"
        elif dump_code != 0:
            reason = f"pg_restore failed (exit {dump_code}) reading {backup}"
        else:
            reason = f"psql failed (exit {psql_code})"
        raise RestoreError(
            f"restore of {where} from {backup} {reason}; rolled back, the database is "
            f"unchanged: {_tail(errors)}"
        )
    seconds = time.monotonic() - started
    log.info("restore done db=%s file=%s seconds=%.2f", where, backup, seconds)
    return seconds


@contextlib.contextmanager
def _temp_log() -> Iterator[IO[bytes]]:
    with tempfile.TemporaryFile() as handle:
        yield handle


def _read(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode("utf-8", "replace")


def _tail(text: str, lines: int = 8) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(kept[-lines:]) or "(no error output)"


# --- fingerprint --------------------------------------------------------------------------------

_COLUMNS_SQL = f"""\
SELECT concat_ws('|', table_schema, table_name, column_name, data_type, is_nullable,
                 coalesce(column_default, ''))
  FROM information_schema.columns
 WHERE table_schema {_USER_SCHEMA.format(col="table_schema")}
 ORDER BY table_schema, table_name, ordinal_position"""

_TABLES_SQL = f"""\
SELECT format('%I.%I', table_schema, table_name)
  FROM information_schema.tables
 WHERE table_type = 'BASE TABLE' AND table_schema {_USER_SCHEMA.format(col="table_schema")}
 ORDER BY table_schema, table_name"""


def table_contents_sql(tables: Sequence[str]) -> str:
    """Pure: one query giving, per (already quoted) table, its row count and a hash of its rows
    in a stable order."""
    parts = [
        f"SELECT {_literal(table)}, count(*), "
        f"md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {table} t"
        for table in tables
    ]
    return "\nUNION ALL\n".join(parts)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def db_fingerprint(dsn: str) -> str:
    """A sha256 of the database's columns and of every table's rows (stable, order-free)."""
    digest = hashlib.sha256()
    for row in _rows(query(dsn, _COLUMNS_SQL)):
        digest.update(f"column {row}\n".encode())
    tables = _rows(query(dsn, _TABLES_SQL))
    if tables:
        for row in sorted(_rows(query(dsn, table_contents_sql(tables)))):
            digest.update(f"rows {row}\n".encode())
    return digest.hexdigest()
