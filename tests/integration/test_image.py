"""The cpdops image: built from the Dockerfile on a test Docker daemon, FROM the locally made
``cpdops-base:bookworm`` (build argument BASE; no registry, no network in the build), its
dependencies copied from this venv by scripts/image_deps.py; its container serves /healthz
against the test PostgreSQL, as a non-root user, and Docker reports it healthy."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.fleet.images import ensure_base_image
from tests.dashboards import ROOT
from tests.integration.conftest import TenantDb
from tests.integration.fleet import TEST_LABEL, free_port, wait_for

pytestmark = pytest.mark.docker

TAG = "cpdops-image-test:latest"


def test_image_builds_offline_and_serves_healthz_against_postgresql(
    tmp_path: Path, docker_hosts: list[Any], tenant_db: TenantDb, remove_test_containers_after: None
) -> None:
    host = docker_hosts[0]
    client = host.client
    base = ensure_base_image(client)
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image_deps.py"), str(ROOT / "build/image-deps")],
        check=True, capture_output=True,
    )  # fmt: skip
    image, _logs = client.images.build(
        path=str(ROOT), buildargs={"BASE": base}, tag=TAG, network_mode="none", pull=False,
        rm=True, forcerm=True,
    )  # fmt: skip
    assert image.labels["org.opencontainers.image.title"] == "cpdops"

    secret = tmp_path / "db_password"
    secret.write_text(tenant_db.url.password or "")
    secret.chmod(0o644)
    gateway_dsn = tenant_db.container_dsn(host)  # postgresql://user:pw@10.213.N.1:5432/db
    address = gateway_dsn.split("@", 1)[1]
    user = tenant_db.url.username
    port = free_port()
    container = client.containers.run(
        TAG,
        detach=True,
        name=f"cpdops-image-test-{port}",
        labels={TEST_LABEL: "1"},
        environment={
            "CPDOPS_DATABASE_URL": f"postgresql+psycopg2://{user}:{{password}}@{address}",
            "CPDOPS_DATABASE_PASSWORD_FILE": "/run/secrets/db_password",
            "CPDOPS_RUN_MONITORS": "false",
            "CPDOPS_RUN_SCHEDULER": "false",
        },
        volumes={str(secret): {"bind": "/run/secrets/db_password", "mode": "ro"}},
        ports={"8077/tcp": ("127.0.0.1", port)},
    )

    def healthz() -> dict[str, Any] | None:
        container.reload()
        if container.status == "exited":
            raise AssertionError(container.logs().decode(errors="replace")[-3000:])
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        except httpx.HTTPError:
            return None
        body: dict[str, Any] = r.json()
        return body if r.status_code == 200 else None

    body = wait_for(healthz, timeout=60, what="the container's /healthz", interval=0.5)
    assert body["status"] == "ok" and body["database"] == "ok", body
    uid = container.exec_run(["id", "-u"]).output.decode().strip()
    assert uid == "10001"
    # the migrations ran against PostgreSQL (the table of tickets exists there)
    tables = container.exec_run(
        ["python3", "-c", "import os, sqlalchemy as sa; e = sa.create_engine(os.environ["
         "'CPDOPS_DATABASE_URL'].replace('{password}', open('/run/secrets/db_password').read()))"
         "; print(sa.inspect(e).get_table_names())"],
    )  # fmt: skip
    assert b"incidents" in tables.output, tables.output
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "cpdops_incidents_open" in metrics

    def healthy() -> bool:
        container.reload()
        return bool(container.attrs["State"].get("Health", {}).get("Status") == "healthy")

    deadline = time.monotonic() + 90
    while not healthy():  # the image's HEALTHCHECK: first run after its 10 s interval
        assert time.monotonic() < deadline, container.attrs["State"].get("Health")
        time.sleep(1)
