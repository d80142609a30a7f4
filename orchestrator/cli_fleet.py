"""``cpdops fleet ls|hosts|tenants``: the instances found on the hosts, the registry.

Through the API (``GET /api/v1/instances``, ``/hosts``, ``/tenants``) when a URL is configured,
else on the database and the Docker hosts directly; ``--json`` is the API's JSON in both.
"""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import select

from orchestrator.cli_common import _api, _check_filters, _dump, _opened, _table, json_option
from orchestrator.errors import OperationFailed


@click.group()
def fleet() -> None:
    """The fleet: hosts, tenants and discovered instances."""


@fleet.command("ls")
@click.option("--tenant", help="only this tenant's instances")
@click.option("--host", help="only the instances on this host")
@json_option
def fleet_ls(tenant: str | None, host: str | None, as_json: bool) -> None:
    """List SmartCPD instances found by label on every host."""
    client = _api()
    if client is not None:
        data = client.get(client.path("instances"), {"tenant": tenant, "host": host})
    else:
        from orchestrator.fleet.discovery import discover

        with _opened() as ctx:
            found = discover(ctx.hosts.hosts())
        data = {
            "instances": [
                {k: v for k, v in i.as_dict().items() if k != "labels"}
                for i in found.instances
                if (tenant is None or i.tenant == tenant) and (host is None or i.host == host)
            ],
            "errors": found.errors,
        }
    instances: list[dict[str, Any]] = data["instances"]
    errors: dict[str, str] = data["errors"]
    if not instances:
        _check_filters(client, tenant=tenant, host=host)
    if as_json:
        _dump(data)
    else:
        _table(
            [
                [
                    i[k]
                    for k in ("tenant", "component", "host", "name", "image", "version", "status")
                ]
                for i in instances
            ],
            ["tenant", "component", "host", "container", "image", "version", "status"],
            empty="no instances",
        )
        for name, err in errors.items():
            click.echo(f"warning: host {name}: {err}", err=True)
    if errors and not instances:
        raise OperationFailed("no host answered")


@fleet.command("hosts")
@json_option
def fleet_hosts(as_json: bool) -> None:
    """List the Docker hosts of the registry (the fleet file's hosts)."""
    client = _api()
    if client is not None:
        data = client.get(client.path("hosts"))
    else:
        from orchestrator.api.routes.fleet import host_out
        from orchestrator.db.models import Host

        with _opened() as ctx, ctx.factory() as s:
            data = [
                host_out(h).model_dump(mode="json")
                for h in s.scalars(select(Host).order_by(Host.name))
            ]
    if as_json:
        _dump(data)
        return
    _table(
        [
            (
                h["name"],
                h["url"],
                "yes" if h["tls"] else "no",
                h.get("status", "ok"),
                h.get("status_since") or "",
                _labels(h["labels"]),
            )
            for h in data
        ],
        ["name", "url", "tls", "status", "since", "labels"],
        empty="no hosts",
    )


@fleet.command("tenants")
@click.option("--ring", help="only this ring")
@json_option
def fleet_tenants(ring: str | None, as_json: bool) -> None:
    """List the tenants of the registry with their ring and maintenance window."""
    client = _api()
    if client is not None:
        data = client.get(client.path("tenants"), {"ring": ring})
    else:
        from orchestrator.api.routes.fleet import host_states, tenant_out
        from orchestrator.db.models import Tenant

        with _opened() as ctx, ctx.factory() as s:
            stmt = select(Tenant).order_by(Tenant.slug)
            if ring:
                stmt = stmt.where(Tenant.ring == ring)
            hosts = host_states(s)
            data = [tenant_out(t, hosts).model_dump(mode="json") for t in s.scalars(stmt)]
    if as_json:
        _dump(data)
        return
    _table(
        [
            (
                t["slug"],
                t["name"],
                t["ring"],
                t["host_name"],
                (t["maintenance_window"] or {}).get("cron"),
                "yes" if t["has_db"] else "no",
                t.get("status", "ok"),
            )
            for t in data
        ],
        ["tenant", "name", "ring", "host", "window", "db", "status"],
        empty="no tenants",
    )


def _labels(labels: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"
