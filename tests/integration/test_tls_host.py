"""A Docker host over TCP + TLS with client certificates made by the test (tls_dockerd.py):
cpdops discovers and rolls out through the fleet file's `tls` settings; without a valid
client certificate the same engine is refused, with an error that says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.db.session import session_scope
from orchestrator.demo.fleet import DemoTenant, start_tenant
from orchestrator.errors import HostUnreachable
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.discovery import discover
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.fleet.images import copy_image
from orchestrator.fleet.runtime import DockerHost
from rollouts.spec import GateSpec, RolloutRequest, Strategy
from tests.integration.fleet import TEST_LABEL, free_port, make_context, wait_health
from tests.integration.tls_dockerd import Pki, make_pki, tls_daemon

pytestmark = pytest.mark.docker

REFUSED = "TLS handshake failed: the engine refused cpdops's client certificate"


def _fleet(url: str, tls: dict[str, str], tenants: list[str]) -> str:
    lines = ["version: 1", "hosts:", "  - name: t1", f"    url: {url}", "    tls:"]
    lines += [f"      {k}: {v}" for k, v in tls.items()]
    lines.append("tenants:")
    for slug in tenants:
        lines += [f"  - slug: {slug}", f"    name: {slug.title()}", "    host: t1"]
    return "\n".join(lines) + "\n"


def _good(pki: Pki) -> dict[str, str]:
    return {"ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)}


def test_rollout_on_a_tls_host_and_refusal_without_a_valid_certificate(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    pki = make_pki(tmp_path / "pki")
    with tls_daemon(pki) as daemon:
        for tag in ("1", "2"):
            copy_image(docker_hosts[0].client, daemon.client, standin_images[tag])
        engine = DockerHost("t1", daemon.url, tls=_good(pki))
        tenants = [
            DemoTenant(f"tls{n}", f"smartcpd-tls{n}", free_port(), "general") for n in (1, 2)
        ]
        for t in tenants:
            start_tenant(engine, t, standin_images["1"], extra_labels={TEST_LABEL: "1"})
        engine.close()
        for t in tenants:
            wait_health(t.health_url, version="1")
        ctx = make_context(tmp_path)
        try:
            slugs = [t.slug for t in tenants]
            with session_scope(ctx.factory) as s:
                apply_fleet(s, parse_fleet_text(_fleet(daemon.url, _good(pki), slugs)))
            found = discover(ctx.hosts.hosts())
            assert found.errors == {}
            assert sorted((i.tenant, i.host, i.version) for i in found.instances) == [
                ("tls1", "t1", "1"),
                ("tls2", "t1", "1"),
            ]
            rid = ctx.executor.create(
                RolloutRequest(
                    image=standin_images["2"],
                    gate=GateSpec(passes=2, deadline_s=20, interval_s=0.2),
                    strategy=Strategy(waves=["1", "100%"]),
                )
            )
            assert ctx.executor.run(rid) == "succeeded"
            assert [wait_health(t.health_url)["version"] for t in tenants] == ["2", "2"]
            managed = daemon.client.containers.list(all=True, filters={"label": "smartcpd.tenant"})
            assert sorted(c.name for c in managed) == ["smartcpd-tls1", "smartcpd-tls2"]

            # the same engine, with a client certificate from another CA, or with none
            rogue = {"ca": str(pki.ca), "cert": str(pki.rogue_cert), "key": str(pki.rogue_key)}
            for tls in (rogue, {"ca": str(pki.ca)}):
                with session_scope(ctx.factory) as s:
                    apply_fleet(s, parse_fleet_text(_fleet(daemon.url, tls, slugs)))
                found = discover(ctx.hosts.hosts())
                assert found.instances == []
                assert REFUSED in found.errors["t1"], found.errors
                with pytest.raises(HostUnreachable, match=REFUSED):
                    ctx.executor.plan(RolloutRequest(image=standin_images["1"]))
            # and an engine certificate cpdops's CA did not sign
            other_ca = {**_good(pki), "ca": str(pki.ca.parent / "rogue-ca.pem")}
            with session_scope(ctx.factory) as s:
                apply_fleet(s, parse_fleet_text(_fleet(daemon.url, other_ca, slugs)))
            found = discover(ctx.hosts.hosts())
            assert (
                "the engine's certificate is not signed by the CA in tls.ca" in found.errors["t1"]
            )
            # nothing was changed on the engine by the refused attempts
            assert [wait_health(t.health_url)["version"] for t in tenants] == ["2", "2"]
        finally:
            ctx.close()
