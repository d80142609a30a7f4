"""A Docker host over SSH: a real sshd (sshd.py) whose one authorized key may only run
``docker system dial-stdio`` against test daemon d2's socket. cpdops applies a fleet file with
that host as ``ssh://root@127.0.0.1:PORT`` (``cpdops apply``), discovers the stand-in instances
through it and rolls them out; a client key the server does not know, an unknown host key and
a changed host key are refused with errors that name the host and the reason — and hold no
key material."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.db.session import session_scope
from orchestrator.demo.fleet import DemoTenant, start_tenant
from orchestrator.errors import HostUnreachable
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.discovery import discover
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.fleet.runtime import DockerHost
from rollouts.spec import GateSpec, RolloutRequest, Strategy
from tests.integration.fleet import TEST_LABEL, free_port, make_context, wait_health
from tests.integration.sshd import Keys, make_keys, ssh_server, sshd_unavailable_reason

pytestmark = pytest.mark.docker

CPDOPS = str(Path(sys.executable).parent / "cpdops")


def _fleet(url: str, ssh: dict[str, Any], tenants: list[str]) -> str:
    lines = ["version: 1", "hosts:", "  - name: s1", f"    url: {url}"]
    if ssh:
        lines.append("    ssh:")
        lines += [
            f"      {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in ssh.items()
        ]
    lines.append("tenants:")
    for slug in tenants:
        lines += [f"  - slug: {slug}", f"    name: {slug.title()}", "    host: s1"]
    return "\n".join(lines) + "\n"


def _secrets(keys: Keys) -> list[str]:
    """Lines of the private keys: none may show up in an error or a log."""
    found = []
    for key in (keys.client_key, keys.rogue_key, keys.host_key):
        found += [ln for ln in key.read_text().splitlines() if ln and "PRIVATE KEY" not in ln]
    return found


def test_rollout_on_an_ssh_host_and_refusals(
    tmp_path: Path,
    docker_hosts: list[Any],
    standin_images: dict[str, str],
    remove_test_containers_after: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reason = sshd_unavailable_reason()
    if reason is not None:
        if os.environ.get("CPDOPS_REQUIRE_DOCKER") == "1":
            pytest.fail(f"CPDOPS_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    caplog.set_level(logging.DEBUG)
    home = tmp_path / "home"  # the "system" known_hosts is ~/.ssh/known_hosts: the test's own
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    d2 = docker_hosts[1]
    keys = make_keys(tmp_path / "keys")
    socket = Path(d2.url.removeprefix("unix://"))
    with ssh_server(keys, socket, tmp_path / "sshd") as server:
        known = tmp_path / "known_hosts"
        known.write_text(server.known_hosts_line(keys.public(keys.host_key)))
        good = {"identity_file": keys.client_key, "known_hosts": known}
        local = DockerHost("d2", d2.url)
        tenants = [
            DemoTenant(f"ssh{n}", f"smartcpd-ssh{n}", free_port(), "general") for n in (1, 2)
        ]
        for t in tenants:
            start_tenant(local, t, standin_images["1"], extra_labels={TEST_LABEL: "1"})
        local.close()
        for t in tenants:
            wait_health(t.health_url, version="1")
        slugs = [t.slug for t in tenants]

        # the fleet file, applied as an operator does: `cpdops apply -f`
        db = tmp_path / "cpdops.db"
        env = {**os.environ, "CPDOPS_DATABASE_URL": f"sqlite:///{db}"}
        fleet_file = tmp_path / "fleet.yaml"
        fleet_file.write_text(_fleet(server.url, good, slugs))
        applied = subprocess.run(
            [CPDOPS, "apply", "-f", str(fleet_file)], env=env, capture_output=True, text=True
        )
        assert applied.returncode == 0, applied.stderr
        listed = subprocess.run(
            [CPDOPS, "fleet", "ls"], env=env, capture_output=True, text=True, timeout=120
        )
        assert listed.returncode == 0, listed.stderr
        assert "smartcpd-ssh1" in listed.stdout and "smartcpd-ssh2" in listed.stdout

        ctx = make_context(tmp_path)  # the same database
        try:
            found = discover(ctx.hosts.hosts())
            assert found.errors == {}
            assert sorted(
                (i.tenant, i.host, i.version) for i in found.instances if i.tenant in slugs
            ) == [("ssh1", "s1", "1"), ("ssh2", "s1", "1")]
            rid = ctx.executor.create(
                RolloutRequest(
                    image=standin_images["2"],
                    gate=GateSpec(passes=2, deadline_s=20, interval_s=0.2),
                    strategy=Strategy(waves=["1", "100%"]),
                )
            )
            assert ctx.executor.run(rid) == "succeeded"
            assert [wait_health(t.health_url)["version"] for t in tenants] == ["2", "2"]
            managed = d2.client.containers.list(all=True, filters={"label": "smartcpd.tenant"})
            assert {"smartcpd-ssh1", "smartcpd-ssh2"} <= {c.name for c in managed}

            errors: list[str] = []

            def refused(ssh: dict[str, Any], expected: str) -> None:
                with session_scope(ctx.factory) as s:
                    apply_fleet(s, parse_fleet_text(_fleet(server.url, ssh, slugs)))
                found = discover(ctx.hosts.hosts())
                assert [i for i in found.instances if i.host == "s1"] == []
                error = found.errors["s1"]
                assert error.startswith(f"host s1 ({server.url}): "), error
                assert expected in error, error
                with pytest.raises(HostUnreachable, match="SSH") as planned:
                    ctx.executor.plan(RolloutRequest(image=standin_images["1"]))
                errors.extend([error, str(planned.value)])

            # a client key the server does not know
            refused(
                {**good, "identity_file": keys.rogue_key},
                f"SSH authentication failed for root@127.0.0.1:{server.port}: "
                f"the server refused the key {keys.rogue_key}",
            )
            # the CLI says the same, with exit code 1
            fleet_file.write_text(
                _fleet(server.url, {**good, "identity_file": keys.rogue_key}, slugs)
            )
            assert subprocess.run([CPDOPS, "apply", "-f", str(fleet_file)], env=env).returncode == 0
            listed = subprocess.run(
                [CPDOPS, "fleet", "ls"], env=env, capture_output=True, text=True, timeout=120
            )
            assert listed.returncode == 1
            assert "warning: host s1: host s1 (ssh://" in listed.stderr, listed.stderr
            assert f"the server refused the key {keys.rogue_key}" in listed.stderr
            errors.append(listed.stderr)

            # a host key that is in no known_hosts: the given file (empty) …
            empty = tmp_path / "empty_known_hosts"
            empty.write_text("")
            unknown = f"SSH host key of [127.0.0.1]:{server.port} is unknown (ssh-ed25519 SHA256:"
            refused({**good, "known_hosts": empty}, unknown)
            assert empty.read_text() == "", "an unknown key must not be added"
            # … or, with no known_hosts given, the system ones (~/.ssh/known_hosts)
            refused({"identity_file": keys.client_key}, unknown)
            # a changed host key, also with insecure_accept_new_host_key (it only trusts new ones)
            changed = tmp_path / "changed_known_hosts"
            changed.write_text(server.known_hosts_line(keys.public(keys.other_host_key)))
            for accept in (False, True):
                refused(
                    {**good, "known_hosts": changed, "insecure_accept_new_host_key": accept},
                    f"SSH host key of root@127.0.0.1:{server.port} has CHANGED",
                )

            # the system known_hosts is used when the fleet file names none
            (home / ".ssh" / "known_hosts").write_text(known.read_text())
            with session_scope(ctx.factory) as s:
                apply_fleet(
                    s,
                    parse_fleet_text(_fleet(server.url, {"identity_file": keys.client_key}, slugs)),
                )
            assert discover(ctx.hosts.hosts()).errors == {}
            # the explicit opt-in: a new key is accepted, said in the log and remembered
            new = tmp_path / "new_known_hosts"
            with session_scope(ctx.factory) as s:
                ssh = {**good, "known_hosts": new, "insecure_accept_new_host_key": True}
                apply_fleet(s, parse_fleet_text(_fleet(server.url, ssh, slugs)))
            assert discover(ctx.hosts.hosts()).errors == {}
            assert new.read_text() == known.read_text()
            assert "accepted the NEW host key of [127.0.0.1]:" in caplog.text

            # nothing was changed on the engine by the refused attempts; no key material leaked
            assert [wait_health(t.health_url)["version"] for t in tenants] == ["2", "2"]
            for secret in _secrets(keys):
                assert secret not in caplog.text
                for error in errors:
                    assert secret not in error
        finally:
            ctx.close()
    log = server.log.read_text()  # sshd saw both keys
    assert "Accepted publickey for root" in log and "Failed publickey for root" in log
