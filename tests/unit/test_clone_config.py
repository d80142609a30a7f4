"""clone_config keeps the container's own settings and drops what came from the old image."""

from typing import Any

import pytest

from orchestrator.fleet.runtime import clone_config, resolve_health_url

OLD_IMAGE: dict[str, Any] = {
    "Env": ["PATH=/usr/bin", "SMARTCPD_VERSION=1"],
    "Cmd": ["python3", "/app/server.py", "serve"],
    "Labels": {"org.opencontainers.image.version": "1"},
    "ExposedPorts": {"8080/tcp": {}},
    "WorkingDir": "",
}
ATTRS: dict[str, Any] = {
    "Id": "0123456789abcdef" * 4,
    "Image": "sha256:old",
    "Config": {
        "Hostname": "0123456789ab",
        "Env": ["PATH=/usr/bin", "SMARTCPD_VERSION=1", "SMARTCPD_TENANT=acme", "DB=x"],
        "Cmd": ["python3", "/app/server.py", "serve"],
        "Image": "smartcpd-fake:1",
        "Labels": {
            "org.opencontainers.image.version": "1",
            "smartcpd.tenant": "acme",
            "smartcpd.health-url": "http://127.0.0.1:18081/health",
        },
        "ExposedPorts": {"8080/tcp": {}, "9000/tcp": {}},
        "WorkingDir": "",
        "User": "",
    },
    "HostConfig": {
        "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18081"}]},
        "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
        "Binds": ["/srv/acme:/data:rw"],
        "NetworkMode": "tenantnet",
    },
    "Mounts": [
        {"Type": "bind", "Source": "/srv/acme", "Destination": "/data"},
        {"Type": "volume", "Name": "abc123", "Destination": "/var/lib/app"},
    ],
    "NetworkSettings": {
        "Networks": {
            "tenantnet": {"Aliases": ["0123456789ab", "acme-web"], "NetworkID": "n1"},
            "monitoring": {"Aliases": None, "NetworkID": "n2", "IPAddress": "10.0.0.5"},
        }
    },
}


def test_clone_keeps_own_settings_and_drops_image_defaults() -> None:
    body, extra = clone_config(ATTRS, OLD_IMAGE, "smartcpd-fake:2", {"smartcpd.rollout": "7"})
    assert body["Image"] == "smartcpd-fake:2"
    # the old image's ENV is dropped so the new image's ENV applies; own env is kept
    assert body["Env"] == ["SMARTCPD_TENANT=acme", "DB=x"]
    assert "Cmd" not in body  # inherited from the image
    assert body["Labels"] == {
        "smartcpd.tenant": "acme",
        "smartcpd.health-url": "http://127.0.0.1:18081/health",
        "smartcpd.rollout": "7",
    }
    assert "Hostname" not in body  # the default (container id) is not carried over
    assert body["ExposedPorts"] == {"9000/tcp": {}, "8080/tcp": {}}
    hc = body["HostConfig"]
    assert hc["PortBindings"] == ATTRS["HostConfig"]["PortBindings"]
    assert hc["RestartPolicy"]["Name"] == "unless-stopped"
    assert hc["Binds"] == ["/srv/acme:/data:rw"]
    assert hc["Mounts"] == [{"Type": "volume", "Source": "abc123", "Target": "/var/lib/app"}]
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"tenantnet": {"Aliases": ["acme-web"]}}}
    assert extra == {"monitoring": {}}


def test_clone_keeps_user_overrides_of_image_defaults() -> None:
    attrs = {**ATTRS, "Config": {**ATTRS["Config"], "Cmd": ["python3", "/app/server.py", "x"]}}
    body, _ = clone_config(attrs, OLD_IMAGE, "smartcpd-fake:2", {})
    assert body["Cmd"] == ["python3", "/app/server.py", "x"]


def test_clone_host_network_has_no_endpoints() -> None:
    attrs = {**ATTRS, "HostConfig": {**ATTRS["HostConfig"], "NetworkMode": "host"}}
    body, extra = clone_config(attrs, OLD_IMAGE, "img:2", {})
    assert "NetworkingConfig" not in body
    assert extra == {}


ATTRS_NET: dict[str, Any] = {
    "NetworkSettings": {
        "Networks": {"bridge": {"IPAddress": "10.213.1.5"}},
        "Ports": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}], "9000/tcp": None},
    }
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (None, None),
        ("http://127.0.0.1:18081/health", "http://127.0.0.1:18081/health"),
        ("http://127.0.0.1:{port:8080}/health", "http://127.0.0.1:49153/health"),
        ("http://127.0.0.1:{port:8080/tcp}/health", "http://127.0.0.1:49153/health"),
        ("http://{ip}:8080/health", "http://10.213.1.5:8080/health"),
        ("http://127.0.0.1:{port:9000}/health", None),  # not published
        ("http://127.0.0.1:{port:7}/health", None),
    ],
)
def test_resolve_health_url(template: str | None, expected: str | None) -> None:
    assert resolve_health_url(template, ATTRS_NET) == expected
    assert resolve_health_url("http://{ip}/h", {}) is None


@pytest.mark.parametrize(
    ("requested", "bindings", "expected"),
    [
        ("auto", {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18081"}]}, "stop-first"),
        ("auto", {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}, "start-first"),
        ("auto", {}, "start-first"),
        ("stop-first", {}, "stop-first"),
        ("start-first", {"8080/tcp": [{"HostPort": "1"}]}, "start-first"),
    ],
)
def test_choose_order(requested: str, bindings: dict[str, Any], expected: str) -> None:
    from rollouts.instance import choose_order

    assert choose_order(requested, {"HostConfig": {"PortBindings": bindings}}) == expected
