"""The fleet file against hostile input: host URLs that smuggle shell or options, nesting deep
enough to break PyYAML's recursive composer, files without end, DSNs that are no URI. Each is
refused with one short line naming the key and line; nothing is echoed at length."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from orchestrator.errors import FleetFileError
from orchestrator.fleet.fleetfile import MAX_DEPTH, load_fleet_file, parse_fleet_text
from orchestrator.fleet.readfile import read_limited


def host_file(url: str) -> str:
    quoted = url.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'version: 1\nhosts:\n  - name: h\n    url: "{quoted}"\n'


def refusal(text: str, *, one_line: bool = True) -> FleetFileError:
    with pytest.raises(FleetFileError) as caught:
        parse_fleet_text(text, path="fleet.yaml")
    message = str(caught.value)
    if one_line:
        assert "\n" not in message and "\r" not in message, message
        assert len(message) < 400, len(message)
    return caught.value


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("unix:///tmp/x;touch /tmp/pwned", "spaces or control characters"),
        ("unix:///tmp/x;touch${IFS}/tmp/pwned", "a socket path may hold only"),
        ("unix:///tmp/$(id).sock", "a socket path may hold only"),
        ("unix:///tmp/`id`", "a socket path may hold only"),
        ("unix:///run/../etc/docker.sock", "no '..'"),
        ("unix://relative/docker.sock", "absolute socket path"),
        ("tcp://h:2376;id", "invalid port"),
        ("tcp://h\n:2376", "control characters"),
        ("tcp://h\r\nX-Injected: 1:2376", "control characters"),
        ("tcp://h:0", "invalid port"),
        ("tcp://h:99999", "invalid port"),
        ("tcp://h:+2376", "invalid port"),
        ("tcp://h_x:2376", "invalid host name"),
        ("tcp://-h:2376", "invalid host name"),
        ("tcp://[::1:2376", "no host name"),
        ("tcp://[zz::1]:2376", "invalid IPv6 address"),
        ("tcp://h:2376/path", "no path, query or fragment"),
        ("tcp://h:2376?x=1", "no path, query or fragment"),
        ("tcp://u@h:2376", "a tcp:// URL has no user"),
        ("ssh://-oProxyCommand=touch%20x", "invalid host name"),
        ("ssh://-oProxyCommand=id@h", "invalid user name"),
        ("ssh://u;id@h", "invalid user name"),
        ("ssh://u:pw@h", "do not put a password"),
        ("ssh://h:22:22", "no host name"),
        ("ssh://" + "a" * 300, "invalid host name"),
    ],
)
def test_host_urls_refused(url: str, reason: str) -> None:
    error = refusal(host_file(url))
    assert error.line == 4
    assert str(error).startswith("fleet.yaml:4: hosts[0].url: ")
    assert reason in str(error)
    if ":pw@" in url:
        assert "pw" not in str(error)


@pytest.mark.parametrize(
    "url",
    [
        "unix:///var/run/docker.sock",
        "unix:///run/cpdops-test/d1/docker.sock",
        "unix:///tmp/pytest-of-root/pytest-3/test_x0/no-docker.sock",
        "tcp://127.0.0.1:2376",
        "tcp://msk-1.internal:2376/",
        "tcp://[::1]:2376",
        "ssh://b.internal",
        "ssh://cpdops@a.internal:2222",
        "ssh://root@127.0.0.1:2222",
        "ssh://deploy_user.x@[::1]",
    ],
)
def test_host_urls_accepted(url: str) -> None:
    (host,) = parse_fleet_text(host_file(url)).hosts
    assert host.url == url


def nested(depth: int, flow: bool) -> str:
    if flow:
        return "version: 1\nx-deep: " + "[" * depth + "]" * depth + "\n"
    lines = ["version: 1"] + [f"{'  ' * i}k{i}:" for i in range(depth)]
    return "\n".join(lines) + " 1\n"


@pytest.mark.parametrize("flow", [True, False], ids=["flow", "block"])
def test_deep_nesting_is_one_line_not_a_traceback(flow: bool) -> None:
    error = refusal(nested(100_000 if flow else 5_000, flow))
    assert f"nest deeper than {MAX_DEPTH} levels" in str(error)
    assert error.line is not None and error.line >= 1
    # Up to the limit is fine (the root mapping is the first level).
    parse_fleet_text(nested(MAX_DEPTH - 2, flow=True))
    refusal(nested(MAX_DEPTH, flow=True))


def test_deep_nesting_through_aliases_is_refused() -> None:
    """Each anchor is shallow enough for the composer; the aliases stack them deeper."""
    rows = ["version: 1", "x-a0: &a0 " + "[" * 40 + "]" * 40]
    for i in range(1, 5):
        rows.append(f"x-a{i}: &a{i} " + "[" * 30 + f"*a{i - 1}" + "]" * 30)
    error = refusal("\n".join(rows) + "\n")
    assert "nest deeper than" in str(error)


def test_long_values_are_echoed_short() -> None:
    error = refusal(f"version: 1\ntenants:\n  - slug: {'x' * 200_000}\n    name: X\n")
    assert "tenants[0].slug: invalid name 'xxxx" in str(error)
    assert "(200000 characters)" in str(error)
    error = refusal(
        "version: 1\n" + "".join(f"k{i}{'y' * 900}: 1\n" for i in range(500)), one_line=False
    )
    assert len(error.errors) == 500
    shown = str(error).splitlines()
    assert len(shown) == 22 and shown[-1] == "  … and 480 more", shown[-1]
    assert all(len(row) < 400 for row in shown)


# the variables the DSNs below may name (after the tenant, so the DSN stays on line 5)
DSN_ENV = (
    "environment: [PW, PORT, ACME_DB_DSN, ROMASHKA_DB_PASSWORD, DB_USER, DB_PW, DB_HOST, DB_PORT]\n"
)


@pytest.mark.parametrize(
    ("dsn", "reason"),
    [
        ("postgresql://u:dsn-s3cret@h:99999/db", "the DSN's port 99999 is not in 1-65535"),
        ("postgresql://u:dsn-s3cret@h:0/db", "port 0 is not in 1-65535"),
        ("postgresql://u:dsn-s3cret@h:5x/db", "port is not in 1-65535"),
        ("postgresql://h1:5432,h2:70000/db", "port 70000"),
        ("not a dsn", "not a PostgreSQL URI"),
        ("dsn-s3cret", "not a PostgreSQL URI"),
        ("host=db user=app password=dsn-s3cret", "not a PostgreSQL URI"),
        ("mysql://u:dsn-s3cret@h/db", "not a PostgreSQL URI"),
        ("postgresql://u:dsn s3cret@h/db", "no spaces or control characters"),
        ("postgresql://u:dsn-s3cret@h/db\nX: y", "no spaces or control characters"),
        ("postgresql://u:dsn-s3cret@h;id/db", "invalid host"),
        ("postgresql://u:${PW}@h:${PORT}x/db", "port is not in 1-65535"),
        ("$${NOT_A_REF}", "not a PostgreSQL URI"),
    ],
)
def test_tenant_dsn_refused_without_echo(dsn: str, reason: str) -> None:
    quoted = dsn.replace("\n", "\\n")
    error = refusal(
        f'version: 1\ntenants:\n  - slug: a\n    name: A\n    db_dsn: "{quoted}"\n' + DSN_ENV
    )
    assert str(error).startswith("fleet.yaml:5: tenants[0].db_dsn: "), str(error)
    assert reason in str(error)
    assert "s3cret" not in str(error) and "s3cret" not in repr(error.errors)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:p@h:5432/db",
        "postgres://h/db",
        "postgresql://h",
        "postgresql:///db?host=/var/run/postgresql",
        "postgresql://u@[::1]:5432/db?sslmode=require",
        "postgresql://h1:5432,h2:5433/db",
        "postgresql://u:p%20w@h/db",
        "${ACME_DB_DSN}",
        "postgresql://smartcpd:${ROMASHKA_DB_PASSWORD}@spb-pg-1:5432/romashka",
        "postgresql://${DB_USER}:${DB_PW}@${DB_HOST}:${DB_PORT}/acme",
    ],
)
def test_tenant_dsn_accepted(dsn: str) -> None:
    fleet = parse_fleet_text(
        f'version: 1\ntenants:\n  - slug: a\n    name: A\n    db_dsn: "{dsn}"\n' + DSN_ENV
    )
    assert fleet.tenants[0].db_dsn == dsn


# --------------------------------------------------------------------------- reading files


def test_files_over_the_limit_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"version: 1\n" + b"#" * (4 * 1024 * 1024))
    with pytest.raises(FleetFileError, match="larger than 4194304 bytes"):
        load_fleet_file(big)
    assert read_limited(str(big), limit=5 * 1024 * 1024).startswith(b"version: 1\n")
    with pytest.raises(FleetFileError, match="larger than 4194304 bytes"):
        load_fleet_file("/dev/zero")
    with pytest.raises(FleetFileError, match="is a directory"):
        load_fleet_file(tmp_path)


def test_a_fifo_is_read_while_written_and_one_without_writer_ends(tmp_path: Path) -> None:
    fifo = tmp_path / "fleet.fifo"
    os.mkfifo(fifo)
    with pytest.raises(FleetFileError, match=r"did not end within 0\.5 s"):
        read_limited(str(fifo), deadline_s=0.5)

    def write() -> None:
        with open(fifo, "wb") as f:  # opens once the reader has
            f.write(b"version: 1\n")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert read_limited(str(fifo), deadline_s=60) == b"version: 1\n"
    finally:
        writer.join(timeout=60)
