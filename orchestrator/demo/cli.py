"""``cpdops demo build|up|down``: the SmartCPD stand-in on the local engine."""

from __future__ import annotations

import json

import click

from orchestrator.errors import InputError
from orchestrator.fleet.images import FAIL_MODES


@click.group()
def demo() -> None:
    """A demo fleet of SmartCPD stand-ins on the local Docker engine (CPDOPS_LOCAL_DOCKER_URL)."""


@demo.command("build")
@click.option("--version", "version", required=True, help="version reported by /health")
@click.option("--fail", type=click.Choice(FAIL_MODES), help="bake a failure mode into the image")
def demo_build(version: str, fail: str | None) -> None:
    """Build image smartcpd-fake:VERSION locally (no registry needed)."""
    from orchestrator.fleet.images import build_standin
    from orchestrator.fleet.runtime import DockerHost
    from orchestrator.settings import Settings

    host = DockerHost("local", Settings().local_docker_url)
    host.ping()
    click.echo(build_standin(host.client, version, fail=fail))


@demo.command("up")
@click.option("--tenants", "count", type=click.IntRange(1, 500), default=3, show_default=True)
@click.option("--version", "version", default="1", show_default=True)
@click.option(
    "--scenario/--no-scenario",
    default=True,
    show_default=True,
    help="also schedule a rollout to the next version (in an hour) and open a ticket",
)
@click.option("--json", "as_json", is_flag=True)
def demo_up(count: int, version: str, scenario: bool, as_json: bool) -> None:
    """Start COUNT stand-in tenants with published ports on 127.0.0.1.

    With the scenario (the default) there is something on every page of the web UI: a
    rollout of all demo tenants to the next version, scheduled an hour from now (a running
    `cpdops serve` starts it; `cpdops rollout ls`), and a customer's consultation ticket.
    Running it again adds neither twice."""
    from orchestrator.cli_common import _opened
    from orchestrator.db.session import session_scope
    from orchestrator.demo.fleet import demo_tenants, register_tenants, start_tenant
    from orchestrator.errors import ContainerError
    from orchestrator.fleet.images import build_standin

    with _opened() as ctx:
        hosts = ctx.hosts.hosts()
        local = [h for h in hosts if h.url == ctx.settings.local_docker_url]
        host = (local or hosts)[0]
        host.ping()
        image = build_standin(host.client, version)
        tenants = demo_tenants(count, ctx.settings.demo_base_port)
        started = []
        for t in tenants:
            existing = host.find(t.container)
            if existing is not None:
                if not existing.running:
                    host.start(existing.id)
                continue
            try:
                start_tenant(host, t, image)
            except ContainerError as exc:
                raise InputError(f"cannot start {t.container}: {exc}") from exc
            started.append(t.slug)
            click.echo(f"started {t.container} on {t.health_url}", err=True)
        with session_scope(ctx.factory) as s:
            register_tenants(s, tenants, host.name)
        extra: dict[str, object] = {}
        if scenario:
            from orchestrator.demo.scenario import demo_scenario

            extra = demo_scenario(ctx, host, [t.slug for t in tenants], version)
            for key, value in extra.items():
                click.echo(f"{key}: {value}", err=True)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "tenants": [{"tenant": t.slug, "health_url": t.health_url} for t in tenants],
                    **extra,
                }
            )
        )
    else:
        click.echo(f"{len(tenants)} demo tenants up ({len(started)} started) on image {image}")


@demo.command("down")
def demo_down() -> None:
    """Remove every demo container from the local engine."""
    from orchestrator.demo.fleet import remove_demo
    from orchestrator.fleet.runtime import DockerHost
    from orchestrator.settings import Settings

    host = DockerHost("local", Settings().local_docker_url)
    removed = remove_demo(host)
    click.echo(f"removed {len(removed)} demo containers")
