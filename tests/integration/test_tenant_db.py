"""Tenant databases: the stand-in's schema and migrations, backup and restore (rollouts.dbsafety)
and migrations in one-off containers, against the real PostgreSQL and real Docker daemons.

Containers reach the PostgreSQL of this machine at their bridge's gateway (see ``tenant_db``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import orchestrator.demo
from orchestrator.fleet.runtime import DockerHost
from rollouts import dbsafety
from tests.integration.conftest import TenantDb
from tests.integration.dockerd import DockerdHandle, published_port, run_test_container
from tests.pgdb import drop_database

SERVER_PATH = Path(orchestrator.demo.__file__).parent / "standin" / "server.py"
MIGRATE = ["python3", "/app/server.py", "migrate"]
ONEOFF_LABELS = {"cpdops.test": "1", "cpdops.oneoff": "1"}
PORTS = {"8080/tcp": ("127.0.0.1", None)}
STARTUP_TIMEOUT_S = 30.0

docker_test = pytest.mark.usefixtures("remove_test_containers_after")
pytestmark = pytest.mark.postgres


def rows(dsn: str, sql: str) -> list[str]:
    return [r for r in dbsafety.query(dsn, sql).split("\0") if r]


def columns(dsn: str, table: str) -> list[str]:
    return rows(
        dsn,
        "SELECT column_name FROM information_schema.columns "
        f"WHERE table_schema = 'public' AND table_name = '{table}' ORDER BY ordinal_position",
    )


def table_exists(dsn: str, table: str) -> bool:
    return rows(dsn, f"SELECT to_regclass('public.{table}') IS NOT NULL") == ["t"]


def calls(dsn: str) -> list[str]:
    return rows(dsn, "SELECT id, caller, started_at FROM calls ORDER BY id")


def wait_health(url: str, *, want_status: int, timeout_s: float = STARTUP_TIMEOUT_S) -> Any:
    """The JSON of GET ``url`` once it answers ``want_status``."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5.0, trust_env=False)
        except httpx.TransportError as exc:
            last = exc
        else:
            if response.status_code == want_status:
                return response.json()
            last = (response.status_code, response.text)
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer {want_status} in {timeout_s}s; last: {last}")


@pytest.fixture
def d1(docker_hosts: list[DockerdHandle]) -> Iterator[DockerHost]:
    host = DockerHost(docker_hosts[0].name, docker_hosts[0].url, pull=False)
    yield host
    host.close()


def start_instance(
    handle: DockerdHandle, image: str, db: TenantDb, **kwargs: Any
) -> tuple[Any, str]:
    """A stand-in instance of tenant acme using ``db``; the container and its health URL."""
    container = run_test_container(
        handle.client,
        image,
        name=f"acme-{uuid.uuid4().hex[:6]}",
        ports=PORTS,
        environment={"SMARTCPD_TENANT": "acme", "SMARTCPD_DB_DSN": db.container_dsn(handle)},
        labels={"smartcpd.tenant": "acme", "smartcpd.health-url": "http://{ip}:8080/health"},
        **kwargs,
    )
    return container, f"http://127.0.0.1:{published_port(container)}/health"


# --- the stand-in and dbsafety on this machine (PostgreSQL only) --------------------------------


def run_standin(*args: str, dsn: str, version: str, **env: str) -> Any:
    import subprocess

    return subprocess.run(
        [sys.executable, str(SERVER_PATH), *args],
        env={
            "PATH": os.environ.get("PATH", ""),
            "SMARTCPD_VERSION": version,
            "SMARTCPD_DB_DSN": dsn,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_standin_migration_is_idempotent_and_restore_undoes_it(
    tenant_db: TenantDb, tmp_path: Path
) -> None:
    dsn = tenant_db.host_dsn
    assert run_standin("migrate", dsn=dsn, version="1").returncode == 0  # the v1 schema
    v1 = dbsafety.db_fingerprint(dsn)
    backup = dbsafety.backup(dsn, tmp_path, label="acme")

    first = run_standin("migrate", dsn=dsn, version="2")
    migrated = dbsafety.db_fingerprint(dsn)
    again = run_standin("migrate", dsn=dsn, version="2")

    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert "migrated to 2 (4 steps)" in first.stdout
    assert migrated != v1
    assert dbsafety.db_fingerprint(dsn) == migrated  # a second run changes nothing
    assert rows(dsn, "SELECT v FROM schema_version") == ["2"]
    dbsafety.restore(dsn, backup.path)
    assert dbsafety.db_fingerprint(dsn) == v1


def test_backup_is_refused_without_enough_free_space(tenant_db: TenantDb, tmp_path: Path) -> None:
    run_standin("migrate", dsn=tenant_db.host_dsn, version="1")

    with pytest.raises(dbsafety.NotEnoughSpace) as caught:
        dbsafety.backup(tenant_db.host_dsn, tmp_path / "b", label="acme", space_factor=1e9)

    message = str(caught.value)
    assert message.startswith("not enough free space for the backup: need ~")
    assert f"MB in {tmp_path / 'b'}" in message
    assert list((tmp_path / "b").iterdir()) == []


def test_backup_file_is_private_complete_and_named_by_label(
    tenant_db: TenantDb, tmp_path: Path
) -> None:
    import hashlib

    run_standin("migrate", dsn=tenant_db.host_dsn, version="1")

    backup = dbsafety.backup(tenant_db.host_dsn, tmp_path, label="acme/prod")

    assert backup.path.parent == tmp_path
    assert backup.path.name.startswith("acme_prod-") and backup.path.suffix == ".dump"
    assert list(tmp_path.iterdir()) == [backup.path]  # no partial file left
    assert backup.path.stat().st_mode & 0o777 == 0o600
    assert backup.size_bytes == backup.path.stat().st_size > 0
    assert backup.sha256 == hashlib.sha256(backup.path.read_bytes()).hexdigest()
    assert backup.path.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format


def test_restore_from_a_damaged_backup_changes_nothing(tenant_db: TenantDb, tmp_path: Path) -> None:
    dsn = tenant_db.host_dsn
    run_standin("migrate", dsn=dsn, version="1")
    backup = dbsafety.backup(dsn, tmp_path, label="acme")
    run_standin("migrate", dsn=dsn, version="2")
    migrated = dbsafety.db_fingerprint(dsn)
    damaged = tmp_path / "damaged.dump"
    damaged.write_bytes(backup.path.read_bytes()[:-100])

    with pytest.raises(dbsafety.RestoreError, match="rolled back, the database is unchanged"):
        dbsafety.restore(dsn, damaged)

    assert dbsafety.db_fingerprint(dsn) == migrated


def test_errors_never_show_the_password(tenant_db: TenantDb, tmp_path: Path) -> None:
    wrong = tenant_db.host_dsn.replace(":cpdops@", ":s3cr3t-pw@")

    with pytest.raises(dbsafety.BackupError) as caught:
        dbsafety.backup(wrong, tmp_path, label="acme")

    assert "password authentication failed" in str(caught.value)
    assert "s3cr3t-pw" not in str(caught.value)
    assert ":***@" in str(caught.value)


# --- instances on the test daemons ---------------------------------------------------------------


@pytest.mark.docker
@docker_test
def test_instance_creates_the_v1_schema_and_reports_db_ok(
    docker_hosts: list[DockerdHandle], standin_images: dict[str, str], tenant_db: TenantDb
) -> None:
    _container, url = start_instance(docker_hosts[1], standin_images["1"], tenant_db)

    body = wait_health(url, want_status=200)

    assert body == {"version": "1", "tenant": "acme", "status": "ok", "db": "ok"}
    assert columns(tenant_db.host_dsn, "calls") == ["id", "caller", "started_at"]
    assert len(calls(tenant_db.host_dsn)) == 3


@pytest.mark.docker
@docker_test
def test_health_fails_when_the_database_goes_away(
    docker_hosts: list[DockerdHandle], standin_images: dict[str, str], tenant_db: TenantDb
) -> None:
    from sqlalchemy import create_engine

    _container, url = start_instance(docker_hosts[2], standin_images["1"], tenant_db)
    wait_health(url, want_status=200)
    engine = create_engine(tenant_db.url, isolation_level="AUTOCOMMIT")
    drop_database(engine, tenant_db.name)
    engine.dispose()

    body = wait_health(url, want_status=500)

    assert body["status"] == "failing"
    assert "does not exist" in body["db"]
    assert "cpdops:cpdops" not in str(body)


@pytest.mark.docker
@docker_test
def test_backup_migrate_in_a_oneoff_then_restore(
    docker_hosts: list[DockerdHandle],
    standin_images: dict[str, str],
    tenant_db: TenantDb,
    d1: DockerHost,
    tmp_path: Path,
) -> None:
    dsn = tenant_db.host_dsn
    container, url = start_instance(docker_hosts[0], standin_images["1"], tenant_db)
    wait_health(url, want_status=200)
    f0, rows0 = dbsafety.db_fingerprint(dsn), calls(dsn)
    backup = dbsafety.backup(dsn, tmp_path, label="acme")

    result = d1.run_oneoff_like(
        container.id,
        image=standin_images["2"],
        command=MIGRATE,
        name=f"{container.name}--cpdops-migrate-r1",
        labels=ONEOFF_LABELS,
        timeout_s=120,
    )

    assert (result.exit_code, result.timed_out) == (0, False), result.logs
    assert "migrated to 2 (4 steps)" in result.logs
    assert d1.find(f"{container.name}--cpdops-migrate-r1") is None  # removed
    assert dbsafety.db_fingerprint(dsn) != f0
    assert columns(dsn, "calls") == ["id", "caller", "started_at", "duration_s"]
    assert rows(dsn, "SELECT v FROM schema_version") == ["2"]
    assert wait_health(url, want_status=200)["db"] == "ok"  # v1 keeps working meanwhile

    seconds = dbsafety.restore(dsn, backup.path)

    assert seconds > 0
    assert dbsafety.db_fingerprint(dsn) == f0
    assert columns(dsn, "calls") == ["id", "caller", "started_at"]
    assert not table_exists(dsn, "schema_version")
    assert calls(dsn) == rows0
    assert wait_health(url, want_status=200)["db"] == "ok"


@pytest.mark.docker
@docker_test
def test_failed_migration_leaves_the_db_half_changed_and_restore_undoes_it(
    docker_hosts: list[DockerdHandle],
    standin_images: dict[str, str],
    tenant_db: TenantDb,
    d1: DockerHost,
    tmp_path: Path,
) -> None:
    dsn = tenant_db.host_dsn
    container, url = start_instance(docker_hosts[0], standin_images["1"], tenant_db)
    wait_health(url, want_status=200)
    f0, rows0 = dbsafety.db_fingerprint(dsn), calls(dsn)
    backup = dbsafety.backup(dsn, tmp_path, label="acme")

    result = d1.run_oneoff_like(
        container.id,
        image=standin_images["2-fail-migration"],
        command=MIGRATE,
        name=f"{container.name}--cpdops-migrate-r2",
        labels=ONEOFF_LABELS,
        timeout_s=120,
    )

    assert result.exit_code == 1, result.logs
    assert "migration to 2 failed" in result.logs
    assert "injected failure after step 2 of 4" in result.logs
    assert "duration_s" in columns(dsn, "calls")  # steps 1-2 were committed ...
    assert rows(dsn, "SELECT count(*) FROM calls WHERE duration_s = 0") == ["3"]
    assert not table_exists(dsn, "schema_version")  # ... steps 3-4 never ran
    assert dbsafety.db_fingerprint(dsn) != f0

    dbsafety.restore(dsn, backup.path)

    assert dbsafety.db_fingerprint(dsn) == f0
    assert columns(dsn, "calls") == ["id", "caller", "started_at"]
    assert calls(dsn) == rows0


@pytest.mark.docker
@docker_test
def test_oneoff_runs_with_the_instance_env_but_no_ports_restart_or_labels(
    docker_hosts: list[DockerdHandle],
    standin_images: dict[str, str],
    tenant_db: TenantDb,
    d1: DockerHost,
) -> None:
    container, _url = start_instance(
        docker_hosts[0], standin_images["1"], tenant_db, restart_policy={"Name": "always"}
    )
    name = f"{container.name}--cpdops-migrate-r3"
    seen: dict[str, Any] = {}

    def inspect_while_running() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen:
            info = d1.find(name)
            if info is not None:
                seen.update(d1.inspect(name))
            time.sleep(0.05)

    watcher = threading.Thread(target=inspect_while_running)
    watcher.start()
    result = d1.run_oneoff_like(
        container.id,
        image=standin_images["2"],
        command=[
            "python3",
            "-c",
            "import os, time; time.sleep(1.5); "
            "print(os.environ['SMARTCPD_TENANT'], os.environ['SMARTCPD_VERSION'], "
            "'dsn' if os.environ.get('SMARTCPD_DB_DSN') else 'no-dsn')",
        ],
        name=name,
        labels=ONEOFF_LABELS,
        timeout_s=60,
    )
    watcher.join()

    assert result.exit_code == 0, result.logs
    assert result.logs.strip() == "acme 2 dsn"  # the instance's env, the new image's version
    assert seen, "the one-off container was never seen running"
    labels = seen["Config"]["Labels"]  # ours and the image's, none of the instance's
    assert labels.items() >= ONEOFF_LABELS.items()
    assert not [key for key in labels if key.startswith("smartcpd.")]
    assert seen["HostConfig"]["RestartPolicy"]["Name"] in ("", "no")
    assert not seen["HostConfig"]["PortBindings"]
    assert not any((seen["NetworkSettings"]["Ports"] or {}).values())  # exposed, unpublished
    assert seen["Config"]["Image"] == standin_images["2"]


@pytest.mark.docker
@docker_test
def test_oneoff_is_killed_at_its_timeout_and_removed(
    docker_hosts: list[DockerdHandle],
    standin_images: dict[str, str],
    tenant_db: TenantDb,
    d1: DockerHost,
) -> None:
    container, _url = start_instance(docker_hosts[0], standin_images["1"], tenant_db)
    name = f"{container.name}--cpdops-migrate-r4"
    started = time.monotonic()

    result = d1.run_oneoff_like(
        container.id,
        image=standin_images["2"],
        command=["sleep", "60"],
        name=name,
        labels=ONEOFF_LABELS,
        timeout_s=1.0,
    )

    assert result.timed_out
    assert result.exit_code == 137
    assert time.monotonic() - started < 20
    assert d1.find(name) is None


# --- the one-off configuration (pure) ------------------------------------------------------------


def test_oneoff_config_keeps_env_mounts_networks_and_drops_what_would_clash() -> None:
    from orchestrator.fleet.runtime import oneoff_config

    body = {
        "Image": "smartcpd-fake:2",
        "Env": ["SMARTCPD_DB_DSN=postgresql://u:p@h/db"],
        "Cmd": ["python3", "/app/server.py", "serve"],
        "Labels": {"smartcpd.tenant": "acme", "traefik.enable": "true"},
        "ExposedPorts": {"8080/tcp": {}},
        "MacAddress": "02:42:0a:d5:01:05",
        "OpenStdin": True,
        "HostConfig": {
            "Binds": ["/srv/acme:/data"],
            "PortBindings": {"8080/tcp": [{"HostIp": "", "HostPort": "18080"}]},
            "RestartPolicy": {"Name": "always", "MaximumRetryCount": 0},
            "AutoRemove": True,
            "NetworkMode": "front",
        },
        "NetworkingConfig": {
            "EndpointsConfig": {
                "front": {"Aliases": ["acme"], "IPAMConfig": {"IPv4Address": "10.9.0.5"}}
            }
        },
    }
    extra = {"back": {"Aliases": ["acme-db-client"], "Links": ["db:db"]}}

    out, out_extra = oneoff_config(
        body, extra, command=["python3", "/app/server.py", "migrate"], labels={"x": "1"}
    )

    assert out["Image"] == "smartcpd-fake:2"
    assert out["Env"] == body["Env"]
    assert out["HostConfig"]["Binds"] == ["/srv/acme:/data"]
    assert out["HostConfig"]["NetworkMode"] == "front"
    assert out["Cmd"] == ["python3", "/app/server.py", "migrate"]
    assert out["Labels"] == {"x": "1"}
    assert "ExposedPorts" not in out and "MacAddress" not in out
    assert out["OpenStdin"] is False
    assert out["Healthcheck"] == {"Test": ["NONE"]}
    assert out["HostConfig"]["PortBindings"] == {}
    assert out["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert out["HostConfig"]["AutoRemove"] is False
    assert out["NetworkingConfig"] == {"EndpointsConfig": {"front": {}}}
    assert out_extra == {"back": {"Links": ["db:db"]}}
    assert body["HostConfig"]["RestartPolicy"]["Name"] == "always"  # the input is not changed
