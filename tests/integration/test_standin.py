"""The SmartCPD stand-in image on real Docker engines (three dockerd, see dockerd.py)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from orchestrator.errors import ImageNotFound
from orchestrator.fleet.images import (
    BASE_IMAGE,
    build_standin,
    copy_image,
    ensure_base_image,
    image_version,
)
from tests.integration.dockerd import (
    DAEMON_COUNT,
    DockerdHandle,
    published_port,
    run_test_container,
)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("remove_test_containers_after")]

STARTUP_TIMEOUT_S = 30.0
PORTS = {"8080/tcp": ("127.0.0.1", None)}


def get_when_answering(url: str, timeout_s: float = STARTUP_TIMEOUT_S) -> httpx.Response:
    """GET ``url`` until the server answers at all (any status), within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return httpx.get(url, timeout=2.0, trust_env=False)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def health_url(container: Any) -> str:
    return f"http://127.0.0.1:{published_port(container)}/health"


def wait_for_log(container: Any, text: bytes, timeout_s: float = 10.0) -> bytes:
    """The container's stdout once it contains ``text`` (logging is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while True:
        logs = bytes(container.logs(stdout=True, stderr=False))
        if text in logs or time.monotonic() > deadline:
            return logs
        time.sleep(0.1)


def wait_exit(container: Any, timeout_s: float = STARTUP_TIMEOUT_S) -> int:
    return int(container.wait(timeout=timeout_s)["StatusCode"])


@pytest.mark.parametrize("index", range(DAEMON_COUNT))
def test_v1_answers_health_on_every_host(
    docker_hosts: list[DockerdHandle], standin_images: dict[str, str], index: int
) -> None:
    host = docker_hosts[index]
    container = run_test_container(
        host.client, standin_images["1"], ports=PORTS, environment={"SMARTCPD_TENANT": "acme"}
    )

    response = get_when_answering(health_url(container))

    assert response.status_code == 200
    assert response.json() == {"version": "1", "tenant": "acme", "status": "ok"}
    assert b"GET /health" in wait_for_log(container, b"GET /health")


def test_info_and_unknown_path(
    docker_hosts: list[DockerdHandle], standin_images: dict[str, str]
) -> None:
    container = run_test_container(docker_hosts[0].client, standin_images["2"], ports=PORTS)
    base = f"http://127.0.0.1:{published_port(container)}"
    get_when_answering(base + "/health")

    info = httpx.get(base + "/", trust_env=False)
    missing = httpx.get(base + "/nope", trust_env=False)

    assert info.status_code == 200
    assert info.json()["version"] == "2"
    assert info.json()["tenant"] == ""
    assert missing.status_code == 404


@pytest.mark.parametrize("index", range(DAEMON_COUNT))
def test_fail_health_variant_answers_500(
    docker_hosts: list[DockerdHandle], standin_images: dict[str, str], index: int
) -> None:
    container = run_test_container(
        docker_hosts[index].client, standin_images["2-fail-health"], ports=PORTS
    )

    response = get_when_answering(health_url(container))

    assert response.status_code == 500
    assert response.json() == {"version": "2", "status": "failing"}


def test_crash_at_start_exits_1(
    docker_hosts: list[DockerdHandle], standin_images: dict[str, str]
) -> None:
    container = run_test_container(
        docker_hosts[1].client, standin_images["1"], environment={"SMARTCPD_FAIL": "crash"}
    )

    assert wait_exit(container) == 1
    assert b"crashing at start" in container.logs(stdout=False, stderr=True)


def test_unknown_fail_mode_is_refused_at_start(
    docker_hosts: list[DockerdHandle], standin_images: dict[str, str]
) -> None:
    container = run_test_container(
        docker_hosts[0].client, standin_images["1"], environment={"SMARTCPD_FAIL": "bogus"}
    )

    assert wait_exit(container) == 2
    assert b"not a known failure mode" in container.logs(stdout=False, stderr=True)


@pytest.mark.parametrize(
    ("fail", "exit_code", "stream", "text"),
    [
        (None, 0, "stdout", b"migrated to 1"),
        ("migration", 1, "stderr", b"migration to 1 failed"),
    ],
)
def test_migrate(
    docker_hosts: list[DockerdHandle],
    standin_images: dict[str, str],
    fail: str | None,
    exit_code: int,
    stream: str,
    text: bytes,
) -> None:
    environment = {"SMARTCPD_FAIL": fail} if fail else {}
    container = run_test_container(
        docker_hosts[2].client,
        standin_images["1"],
        ["python3", "/app/server.py", "migrate"],
        environment=environment,
    )

    assert wait_exit(container) == exit_code
    assert text in container.logs(stdout=stream == "stdout", stderr=stream == "stderr")


def test_stop_is_handled_sigterm(
    docker_hosts: list[DockerdHandle], standin_images: dict[str, str]
) -> None:
    container = run_test_container(docker_hosts[0].client, standin_images["1"], ports=PORTS)
    get_when_answering(health_url(container))

    container.stop(timeout=5)

    container.reload()
    state = container.attrs["State"]
    assert state["Status"] == "exited"
    assert state["ExitCode"] == 0  # 137 would mean SIGKILL after the timeout
    assert b"shutting down" in container.logs(stdout=True, stderr=False)


def test_slow_start_does_not_listen_yet_and_still_stops_on_sigterm(
    docker_hosts: list[DockerdHandle], standin_images: dict[str, str]
) -> None:
    container = run_test_container(
        docker_hosts[1].client,
        standin_images["1"],
        ports=PORTS,
        environment={"SMARTCPD_FAIL": "slow-start", "SMARTCPD_SLOW_START_SECONDS": "60"},
    )
    url = health_url(container)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while b"slow start" not in container.logs() and time.monotonic() < deadline:
        time.sleep(0.1)

    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=2.0, trust_env=False)
    container.stop(timeout=5)

    container.reload()
    assert container.attrs["State"]["ExitCode"] == 0


def test_slow_start_answers_after_the_delay(
    docker_hosts: list[DockerdHandle], standin_images: dict[str, str]
) -> None:
    container = run_test_container(
        docker_hosts[2].client,
        standin_images["2"],
        ports=PORTS,
        environment={"SMARTCPD_FAIL": "slow-start", "SMARTCPD_SLOW_START_SECONDS": "1"},
    )

    response = get_when_answering(health_url(container))

    assert response.status_code == 200
    assert response.json()["version"] == "2"


@pytest.mark.parametrize("index", range(DAEMON_COUNT))
def test_image_version_labels(
    docker_hosts: list[DockerdHandle], standin_images: dict[str, str], index: int
) -> None:
    client = docker_hosts[index].client

    assert image_version(client, standin_images["1"]) == "1"
    assert image_version(client, standin_images["2"]) == "2"
    assert image_version(client, standin_images["2-fail-health"]) == "2"
    with pytest.raises(ImageNotFound):
        image_version(client, "smartcpd-fake:does-not-exist")


def test_rebuild_and_recopy_are_no_ops(
    docker_hosts: list[DockerdHandle], standin_images: dict[str, str]
) -> None:
    first, second = docker_hosts[0].client, docker_hosts[1].client
    before = first.images.get(standin_images["1"]).id

    assert ensure_base_image(first) == BASE_IMAGE
    assert build_standin(first, "1") == standin_images["1"]
    copy_image(first, second, standin_images["1"])

    assert first.images.get(standin_images["1"]).id == before
    assert second.images.get(standin_images["1"]).id == before


def test_copy_of_missing_image_is_image_not_found(docker_hosts: list[DockerdHandle]) -> None:
    with pytest.raises(ImageNotFound):
        copy_image(docker_hosts[0].client, docker_hosts[1].client, "smartcpd-fake:nope")


def test_hosts_are_separate_engines(docker_hosts: list[DockerdHandle]) -> None:
    ids = {host.client.info()["ID"] for host in docker_hosts}
    bridges = {
        host.client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
        for host in docker_hosts
    }

    assert [host.name for host in docker_hosts] == ["d1", "d2", "d3"]
    assert len(ids) == DAEMON_COUNT
    assert bridges == {"10.213.1.1", "10.213.2.1", "10.213.3.1"}
