"""The ``cpdops`` command line. Exit codes: 0 ok, 1 operation failed, 2 bad usage/input."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from sqlalchemy import select

from orchestrator.auth.audit import cli_actor
from orchestrator.cli_common import _dump, _opened, _table, json_option
from orchestrator.errors import CpdopsError, InputError, OperationFailed

log = logging.getLogger(__name__)


class CpdopsGroup(click.Group):
    """Turns cpdops errors into messages and exit codes (2 input, 1 failure)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except CpdopsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=CpdopsGroup)
@click.option("-v", "--verbose", is_flag=True, help="log at INFO level to stderr")
def main(verbose: bool) -> None:
    """cpdops: rollouts, monitoring and incidents for the SmartCPD cloud.

    Configuration comes from CPDOPS_* environment variables (CPDOPS_DATABASE_URL:
    a SQLite file ./cpdops.db by default, or postgresql+psycopg2://…).
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # one line per probe request is noise; cpdops logs what matters itself
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # APScheduler logs every run of the periodic jobs (every few seconds) at INFO
    logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)


# --- serve / db --------------------------------------------------------------------------------
@main.command()
@click.option("--host", "bind_host", default=None, help="address to bind (CPDOPS_BIND_HOST)")
@click.option("--port", "bind_port", type=int, default=None, help="port (CPDOPS_BIND_PORT)")
def serve(bind_host: str | None, bind_port: int | None) -> None:
    """Run the API, web UI, scheduler, monitors and incident engine in one process."""
    import uvicorn

    from orchestrator.app import create_app
    from orchestrator.settings import Settings

    settings = Settings()
    if bind_host:
        settings.bind_host = bind_host
    if bind_port:
        settings.bind_port = bind_port
    logging.getLogger().setLevel(logging.INFO)
    uvicorn.run(
        create_app(settings), host=settings.bind_host, port=settings.bind_port, log_level="info"
    )


@main.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the Alembic migrations up to the newest schema."""
    from orchestrator.db.migrate import current_revision

    with _opened(migrate=True) as ctx:
        click.echo(f"schema at revision {current_revision(ctx.engine)}")


# --- apply / fleet -----------------------------------------------------------------------------
@main.command()
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--prune",
    is_flag=True,
    help="remove hosts, tenants, notifiers and declared monitors not in the file",
)
@json_option
def apply(path: str, prune: bool, as_json: bool) -> None:
    """Load hosts, tenants, monitor defaults, thresholds and notifiers from a fleet file."""
    from orchestrator.db.session import session_scope
    from orchestrator.fleet.apply import apply_fleet
    from orchestrator.fleet.fleetfile import load_fleet_file

    fleet = load_fleet_file(path)
    with _opened() as ctx, session_scope(ctx.factory) as s:
        report = apply_fleet(s, fleet, prune=prune, actor=cli_actor())
    if as_json:
        _dump(report.as_dict())
        return
    for what, items in report.as_dict().items():
        for item in items:
            click.echo(f"{what:9} {item}")
    click.echo(
        f"applied {path}: {len(report.created)} created, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged, {len(report.removed)} removed"
    )


@main.group()
def fleet() -> None:
    """The fleet: hosts and discovered instances."""


@fleet.command("ls")
@json_option
def fleet_ls(as_json: bool) -> None:
    """List SmartCPD instances found by label on every host."""
    from orchestrator.fleet.discovery import discover

    with _opened() as ctx:
        found = discover(ctx.hosts.hosts())
    if as_json:
        _dump(
            {
                "instances": [
                    {k: v for k, v in i.as_dict().items() if k != "labels"} for i in found.instances
                ],
                "errors": found.errors,
            }
        )
    else:
        _table(
            [
                (i.tenant, i.component, i.host, i.name, i.image, i.version, i.status)
                for i in found.instances
            ],
            ["tenant", "component", "host", "container", "image", "version", "status"],
        )
        for host, err in found.errors.items():
            click.echo(f"warning: host {host}: {err}", err=True)
    if found.errors and not found.instances:
        raise OperationFailed("no host answered")


# --- monitors ----------------------------------------------------------------------------------
@main.group()
def monitors() -> None:
    """Monitors (their last recorded state)."""


@monitors.command("ls")
@click.option("--tenant", help="only this tenant's monitors")
@json_option
def monitors_ls(tenant: str | None, as_json: bool) -> None:
    """List monitors: last recorded state, reason, uptime (maintenance excluded)."""
    from monitors.state import MonitorStatus
    from orchestrator.db.models import DeclaredMonitor, MonitorRecord
    from orchestrator.monitor_history import uptimes

    with _opened() as ctx, ctx.factory() as s:
        stmt = select(MonitorRecord).order_by(MonitorRecord.id)
        decl = select(DeclaredMonitor)
        if tenant:
            stmt = stmt.where(MonitorRecord.tenant == tenant)
            decl = decl.where(DeclaredMonitor.tenant == tenant)
        rows = list(s.scalars(stmt))
        declared = {d.id: d for d in s.scalars(decl)}
        # a declared monitor not checked yet has no recorded state: it is pending
        ids = sorted({m.id for m in rows} | set(declared))
        up = uptimes(s, ids)
    recorded = {m.id: m for m in rows}
    data: list[dict[str, Any]] = []
    for monitor_id in ids:
        m, d = recorded.get(monitor_id), declared.get(monitor_id)
        data.append(
            {
                "id": monitor_id,
                "tenant": m.tenant if m else d.tenant if d else "",
                "host": m.host if m else d.host if d else "",
                "kind": m.kind if m else d.kind if d else "",
                "source": d.source if d else "generated",
                "status": MonitorStatus(m.status if m else MonitorStatus.PENDING).name.lower(),
                "reason": m.reason if m else "not checked yet",
                "changed_at": m.changed_at if m else None,
                "uptime": up[monitor_id],
            }
        )
    if as_json:
        _dump(data)
        return

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    _table(
        [
            (
                d["id"],
                d["source"],
                d["status"],
                pct(d["uptime"]["1h"]),
                pct(d["uptime"]["24h"]),
                pct(d["uptime"]["7d"]),
                d["reason"][:50],
                d["changed_at"],
            )
            for d in data
        ],
        ["monitor", "source", "status", "1h", "24h", "7d", "reason", "changed"],
    )


from orchestrator.cli_incidents import incidents  # noqa: E402
from orchestrator.cli_rollout import rollout  # noqa: E402
from orchestrator.cli_token import token  # noqa: E402
from orchestrator.demo.cli import demo  # noqa: E402

main.add_command(incidents)
main.add_command(rollout)
main.add_command(demo)
main.add_command(token)
