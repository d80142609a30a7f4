"""Fixtures for tests against real Docker engines (several dockerd on this machine, see dockerd.py).

* ``docker_hosts`` (session): ``list[DockerdHandle]``, one per daemon (``d1``, ``d2``, ``d3``).
* ``standin_images`` (session): ``{"1": "smartcpd-fake:1", "2": "smartcpd-fake:2",
  "2-fail-health": "smartcpd-fake:2-fail-health"}`` (keyed by tag), built on ``d1``, copied to
  the others.
* ``remove_test_containers_after`` (function): removes ``cpdops.test=1`` containers on every
  daemon after the test, also when it fails.

Without root or dockerd the Docker tests are skipped, unless ``CPDOPS_REQUIRE_DOCKER=1`` (CI),
which makes that an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.fleet.images import build_standin, copy_image
from tests.integration.dockerd import (
    DockerdFleet,
    DockerdHandle,
    docker_unavailable_reason,
    remove_test_containers,
)


@pytest.fixture(scope="session")
def docker_hosts() -> Iterator[list[DockerdHandle]]:
    reason = docker_unavailable_reason()
    if reason is not None:
        if os.environ.get("CPDOPS_REQUIRE_DOCKER") == "1":
            pytest.fail(f"CPDOPS_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    docker0 = Path("/sys/class/net/docker0")
    had_docker0 = docker0.exists()
    fleet = DockerdFleet()
    handles = fleet.start()
    try:
        yield handles
    finally:
        fleet.stop()
    # The machine's own engine must be left as it was (a test daemon once deleted docker0).
    assert docker0.exists() == had_docker0, "the test daemons removed the host's docker0 bridge"


@pytest.fixture(scope="session")
def standin_images(docker_hosts: list[DockerdHandle]) -> dict[str, str]:
    first, *others = docker_hosts
    tags = {
        "1": build_standin(first.client, "1"),
        "2": build_standin(first.client, "2"),
        "2-fail-health": build_standin(first.client, "2", fail="health"),
    }
    for host in others:
        for tag in tags.values():
            copy_image(first.client, host.client, tag)
    return tags


@pytest.fixture
def remove_test_containers_after(docker_hosts: list[DockerdHandle]) -> Iterator[None]:
    yield
    for host in docker_hosts:
        remove_test_containers(host.client)
