"""``cpdops apply -f`` against hostile fleet files, through the real CLI on SQLite and a real
PostgreSQL: a host URL that smuggles a shell command, 100,000 levels of nesting, ``/dev/zero``,
a FIFO nobody writes to, DSNs that are no URI. Each is exit 2 with one short line naming the
key and line, and the fleet applied before stays exactly as it was (every table compared).

The API has no route that writes hosts or tenants (``GET /api/v1/hosts``, ``/tenants`` only):
they come from the fleet file alone, so the CLI is the one way in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, select

from tests.integration.test_cli import GOOD as PLAIN
from tests.integration.test_cli import run

DSN = "postgresql://app:acme-s3cret@db.internal:5432/acme"
GOOD = f"{PLAIN}    db_dsn: {DSN}\nincidents:\n  recovery_hold: 1m\n"


def with_host_url(url: str) -> str:
    return GOOD.replace("unix:///var/run/docker.sock", f'"{url}"')


def with_dsn(dsn: str) -> str:
    return GOOD.replace(DSN, f'"{dsn}"')


ATTACKS: list[tuple[str, str | None, str]] = [
    # name, file text (None: a special file), what the one line says
    ("shell in a unix URL", with_host_url("unix:///tmp/x;touch /tmp/pwned"), ":4: hosts[0].url: "),
    ("shell without spaces", with_host_url("unix:///tmp/x;touch${IFS}/tmp/pwned"), ":4: hosts"),
    ("ssh option as host", with_host_url("ssh://-oProxyCommand=touch%20/tmp/pwned"), ":4: hosts"),
    ("tcp port out of range", with_host_url("tcp://h:99999"), ":4: hosts[0].url: "),
    ("deep flow nesting", GOOD + "x-deep: " + "[" * 100_000 + "]" * 100_000 + "\n", "nest deeper"),
    ("dsn port", with_dsn("postgresql://u:p-s3cret@h:99999/db"), ":9: tenants[0].db_dsn: "),
    ("dsn not a uri", with_dsn("not a dsn"), ":9: tenants[0].db_dsn: not a PostgreSQL URI"),
    ("/dev/zero", None, "larger than 4194304 bytes"),
    ("fifo without writer", None, "did not end within"),
]


def snapshot(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in key order."""
    engine = create_engine(db_url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return {
                name: sorted(
                    (tuple(row) for row in conn.execute(select(table))), key=lambda r: repr(r)
                )
                for name, table in sorted(meta.tables.items())
            }
    finally:
        engine.dispose()


@pytest.mark.parametrize(("name", "text", "says"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_apply_refuses_and_keeps_the_fleet(
    db_url: str, tmp_path: Path, name: str, text: str | None, says: str
) -> None:
    env = {**os.environ, "CPDOPS_DATABASE_URL": db_url}
    good = tmp_path / "fleet.yaml"
    good.write_text(GOOD)
    first = run(env, "apply", "-f", str(good))
    assert first.returncode == 0, first.stderr
    before = snapshot(db_url)
    assert before["hosts"] and before["tenants"]

    if name == "/dev/zero":
        path = "/dev/zero"
    elif name == "fifo without writer":
        path = str(tmp_path / "fleet.fifo")
        os.mkfifo(path)
    else:
        assert text is not None
        path = str(tmp_path / "attack.yaml")
        Path(path).write_text(text)
    res = run(env, "apply", "-f", path)

    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.endswith("\n"), res.stderr[-2000:]
    line = res.stderr.rstrip("\n")
    assert line.startswith(f"error: {path}"), line
    assert says in line, line
    assert len(line) < 400, len(line)
    assert "Traceback" not in res.stderr and "s3cret" not in res.stderr
    assert snapshot(db_url) == before, "nothing of the refused file may be stored"
    assert not Path("/tmp/pwned").exists()
