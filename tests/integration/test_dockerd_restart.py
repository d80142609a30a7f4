"""The chaos helper itself: a test daemon stopped and started again keeps its data and
restarts the containers that have a restart policy."""

from __future__ import annotations

import socket

import pytest

from tests.integration.dockerd import DockerdFleet, DockerdHandle, run_test_container

pytestmark = pytest.mark.docker


def test_a_daemon_stopped_and_started_again(
    docker_fleet: DockerdFleet, docker_hosts: list[DockerdHandle], standin_images: dict[str, str]
) -> None:
    d3 = docker_hosts[2]
    kept = run_test_container(
        d3.client,
        standin_images["1"],
        name="cpdops-test-restart",
        restart_policy={"Name": "always"},
    )
    try:
        kept.reload()
        started = kept.attrs["State"]["StartedAt"]
        # a raw socket: docker-py leaks the socket of a failed connect
        with (
            docker_fleet.daemon_down("d3"),
            socket.socket(socket.AF_UNIX) as sock,
            pytest.raises(OSError),
        ):
            sock.connect(d3.url.removeprefix("unix://"))
        assert d3.client.ping() is True  # the old client reconnects to the new daemon
        kept.reload()
        assert kept.status == "running"
        assert kept.attrs["State"]["StartedAt"] > started  # stopped with it, started again
    finally:
        kept.remove(force=True)
