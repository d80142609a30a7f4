"""Helpers for integration tests: a cpdops context over test daemons, stand-in tenants."""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from orchestrator.context import AppContext, build_context
from orchestrator.db.session import session_scope
from orchestrator.demo.fleet import DemoTenant, start_tenant
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.fleet.runtime import DockerHost
from orchestrator.settings import Settings

TEST_LABEL = "cpdops.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_base(count: int) -> int:
    """A base port B with B+1 … B+count free on 127.0.0.1, below the ephemeral range (so no
    outgoing connection takes one of them between this check and their use)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - count)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base + 1, base + count + 1):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports below 32000")


@dataclass(frozen=True)
class Placed:
    tenant: DemoTenant
    host: str


def fleet_yaml(
    hosts: Sequence[Any], tenants: Sequence[Placed], extra: dict[str, str] | None = None
) -> str:
    lines = ["version: 1", "hosts:"]
    for h in hosts:
        lines += [f"  - name: {h.name}", f"    url: {h.url}"]
    lines.append("tenants:")
    for i, p in enumerate(tenants):
        ring = "canary" if i == 0 else "general"
        lines += [
            f"  - slug: {p.tenant.slug}",
            f"    name: {p.tenant.slug.title()}",
            f"    ring: {ring}",
            f"    host: {p.host}",
        ]
        if extra and p.tenant.slug in extra:
            lines += ["    " + line for line in extra[p.tenant.slug].splitlines()]
    return "\n".join(lines) + "\n"


def make_context(tmp_path: Path, db_url: str | None = None, **overrides: Any) -> AppContext:
    settings = Settings(
        database_url=db_url or f"sqlite:///{tmp_path / 'cpdops.db'}",
        stop_timeout_s=5,
        **overrides,
    )
    return build_context(settings)


def place_tenants(
    ctx: AppContext,
    hosts: Sequence[Any],
    names: Sequence[tuple[str, int]],
    image: str,
    *,
    env: dict[str, dict[str, str]] | None = None,
    extra_yaml: dict[str, str] | None = None,
) -> list[Placed]:
    """Start stand-in tenants: ``names`` are (slug, index of the daemon in ``hosts``);
    ``env`` adds container environment per slug; ``extra_yaml`` adds fleet-file lines per
    slug (e.g. a maintenance window)."""
    placed = []
    for slug, idx in names:
        handle = hosts[idx]
        tenant = DemoTenant(slug, f"smartcpd-{slug}", free_port(), "general")
        start_tenant(
            DockerHost(handle.name, handle.url),
            tenant,
            image,
            extra_labels={TEST_LABEL: "1"},
            env=(env or {}).get(slug),
        )
        placed.append(Placed(tenant, handle.name))
    with session_scope(ctx.factory) as s:
        apply_fleet(s, parse_fleet_text(fleet_yaml(hosts, placed, extra_yaml)))
    return placed


def wait_health(url: str, *, version: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Poll ``url`` until it answers 200 (and the version, if given); bounded."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=2)
            last = (r.status_code, r.text)
            if r.status_code == 200 and (version is None or r.json().get("version") == version):
                data: dict[str, Any] = r.json()
                return data
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{url} not healthy (version {version}) within {timeout}s: {last!r}")


def wait_for(predicate: Any, *, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
