"""The ``cpdops`` command line. Exit codes: 0 ok, 1 operation failed, 2 bad usage/input."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
from sqlalchemy import select

from orchestrator.context import AppContext, build_context
from orchestrator.db.models import Incident, Rollout
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


def _context(migrate: bool = True) -> AppContext:
    from orchestrator.settings import Settings

    return build_context(Settings(), migrate=migrate)


@contextmanager
def _opened(migrate: bool = True) -> Iterator[AppContext]:
    ctx = _context(migrate)
    try:
        yield ctx
    finally:
        ctx.close()


def _dump(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[_cell(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    header = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    click.echo(header.rstrip())
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InputError("an empty list was given")
    return items


json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


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
@click.option("--prune", is_flag=True, help="remove hosts, tenants, notifiers not in the file")
@json_option
def apply(path: str, prune: bool, as_json: bool) -> None:
    """Load hosts, tenants, monitor defaults, thresholds and notifiers from a fleet file."""
    from orchestrator.db.session import session_scope
    from orchestrator.fleet.apply import apply_fleet
    from orchestrator.fleet.fleetfile import load_fleet_file

    fleet = load_fleet_file(path)
    with _opened() as ctx, session_scope(ctx.factory) as s:
        report = apply_fleet(s, fleet, prune=prune)
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


# --- rollouts ----------------------------------------------------------------------------------
@main.group()
def rollout() -> None:
    """Rollouts: move instances to a new image, with health gates and rollback."""


def _rollout_dict(ctx: AppContext, rollout_id: int) -> dict[str, Any]:
    """The rollout as the API shows it (``GET /api/v1/rollouts/{id}``)."""
    from orchestrator.api.routes.rollouts import rollout_detail

    with ctx.factory() as s:
        return rollout_detail(s, rollout_id).model_dump(mode="json")


def _print_rollout(data: dict[str, Any]) -> None:
    click.echo(f"rollout {data['id']}: {data['status']}  image {data['image']}")
    if data["error"]:
        click.echo(f"  error: {data['error']}")
    if data["incident"]:
        click.echo(f"  incident: {data['incident']}")
    _table(
        [
            (i["tenant"], i["host"], i["container_name"], i["old_version"], i["state"], i["error"])
            for i in data["instances"]
        ],
        ["tenant", "host", "container", "from", "state", "error"],
    )


def _progress_printer(ctx: AppContext) -> Callable[[int], None]:
    seen: dict[tuple[str, str], str] = {}

    def show(rollout_id: int) -> None:
        data = _rollout_dict(ctx, rollout_id)
        total = len(data["instances"])
        done = sum(1 for i in data["instances"] if i["state"] in ("updated", "rolled_back"))
        for i in data["instances"]:
            key = (i["tenant"], i["host"])
            if seen.get(key) != i["state"] and i["state"] != "pending":
                seen[key] = i["state"]
                click.echo(
                    f"[{done}/{total}] {i['tenant']}@{i['host']}: {i['state']}"
                    + (f" ({i['error']})" if i["error"] else ""),
                    err=True,
                )

    return show


@rollout.command("start")
@click.option("--image", required=True, help="image reference, e.g. smartcpd:2.4.1")
@click.option("--tenants", help="comma-separated tenant slugs (default: all)")
@click.option("--hosts", "hosts_", help="comma-separated host names")
@click.option("--rings", help="comma-separated rings")
@click.option("--passes", type=int, default=None, help="health passes required by the gate")
@click.option("--deadline", type=float, default=None, help="seconds allowed for the gate")
@json_option
def rollout_start(
    image: str,
    tenants: str | None,
    hosts_: str | None,
    rings: str | None,
    passes: int | None,
    deadline: float | None,
    as_json: bool,
) -> None:
    """Create a rollout and run it here, showing progress. Exit 1 if it fails."""
    from pydantic import ValidationError

    from rollouts.spec import GateSpec, RolloutRequest

    with _opened() as ctx:
        gate = GateSpec(
            passes=passes or ctx.settings.gate_passes,
            deadline_s=deadline or ctx.settings.gate_deadline_s,
            interval_s=ctx.settings.gate_interval_s,
        )
        try:
            request = RolloutRequest(
                image=image,
                tenants=_csv(tenants),
                hosts=_csv(hosts_),
                rings=_csv(rings),
                gate=gate,
            )
        except ValidationError as exc:
            raise InputError(_validation_message(exc)) from exc
        rollout_id = ctx.executor.create(request, actor="cli")
        if not as_json:
            click.echo(f"rollout {rollout_id} created", err=True)
            ctx.executor.on_progress = _progress_printer(ctx)
        status = ctx.executor.run(rollout_id)
        data = _rollout_dict(ctx, rollout_id)
    if as_json:
        _dump(data)
    else:
        _print_rollout(data)
    if status != "succeeded":
        sys.exit(1)


@rollout.command("status")
@click.argument("rollout_id", type=int)
@json_option
def rollout_status(rollout_id: int, as_json: bool) -> None:
    """Show a rollout with its instances and steps."""
    with _opened() as ctx:
        data = _rollout_dict(ctx, rollout_id)
    if as_json:
        _dump(data)
    else:
        _print_rollout(data)


@rollout.command("ls")
@json_option
def rollout_ls(as_json: bool) -> None:
    """List rollouts, newest first."""
    with _opened() as ctx, ctx.factory() as s:
        rows = [
            (r.id, r.image, r.status, r.created_by, r.created_at, r.finished_at, r.error)
            for r in s.scalars(select(Rollout).order_by(Rollout.id.desc()).limit(100))
        ]
    headers = ["id", "image", "status", "by", "created", "finished", "error"]
    if as_json:
        _dump([dict(zip(headers, r, strict=True)) for r in rows])
    else:
        _table(rows, headers)


# --- incidents ---------------------------------------------------------------------------------
@main.group()
def incidents() -> None:
    """Incident tickets."""


@incidents.command("ls")
@click.option("--type", "type_", help="incident, mass_incident, consultation, development_request")
@click.option("--status", help="new, open, awaiting_info, solution_provided, closed")
@json_option
def incidents_ls(type_: str | None, status: str | None, as_json: bool) -> None:
    """List tickets, newest first."""
    from orchestrator.incidents.tickets import STATUS_LABELS

    with _opened() as ctx, ctx.factory() as s:
        stmt = select(Incident).order_by(Incident.id.desc()).limit(200)
        if type_:
            stmt = stmt.where(Incident.type == type_)
        if status:
            stmt = stmt.where(Incident.status == status)
        rows = list(s.scalars(stmt))
    if as_json:
        _dump(
            [
                {
                    "number": i.number,
                    "type": i.type,
                    "status": i.status,
                    "status_label": STATUS_LABELS[i.status]["ru"],
                    "tenant": i.tenant,
                    "subject": i.subject,
                    "rollout_id": i.rollout_id,
                    "created_at": i.created_at,
                }
                for i in rows
            ]
        )
    else:
        _table(
            [(i.number, i.type, i.status, i.tenant, i.subject[:70], i.created_at) for i in rows],
            ["number", "type", "status", "tenant", "subject", "created"],
        )


@incidents.command("show")
@click.argument("number")
@json_option
def incidents_show(number: str, as_json: bool) -> None:
    """Show a ticket with its timeline."""
    from orchestrator.incidents.tickets import STATUS_LABELS, get_by_number

    with _opened() as ctx, ctx.factory() as s:
        i = get_by_number(s, number)
        data: dict[str, Any] = {
            "number": i.number,
            "type": i.type,
            "status": i.status,
            "status_label": STATUS_LABELS[i.status]["ru"],
            "tenant": i.tenant,
            "subject": i.subject,
            "description": i.description,
            "rollout_id": i.rollout_id,
            "created_at": i.created_at,
            "events": [
                {"at": e.at, "author": e.author, "kind": e.kind, "body": e.body, "data": e.data}
                for e in i.events
            ],
        }
    if as_json:
        _dump(data)
        return
    click.echo(f"#{data['number']}  {data['type']}  {data['status']} ({data['status_label']})")
    click.echo(f"subject: {data['subject']}")
    click.echo(data["description"])
    for e in data["events"]:
        click.echo(f"  {e['at']:%Y-%m-%d %H:%M:%S}  {e['author']:8} {e['kind']:10} {e['body']}")


# --- monitors ----------------------------------------------------------------------------------
@main.group()
def monitors() -> None:
    """Monitors (their last recorded state)."""


@monitors.command("ls")
@json_option
def monitors_ls(as_json: bool) -> None:
    """List monitors with their last state change."""
    from monitors.state import MonitorStatus
    from orchestrator.db.models import MonitorRecord

    with _opened() as ctx, ctx.factory() as s:
        rows = list(s.scalars(select(MonitorRecord).order_by(MonitorRecord.id)))
    data = [
        {
            "id": m.id,
            "tenant": m.tenant,
            "host": m.host,
            "kind": m.kind,
            "target": m.target,
            "status": MonitorStatus(m.status).name.lower(),
            "reason": m.reason,
            "changed_at": m.changed_at,
        }
        for m in rows
    ]
    if as_json:
        _dump(data)
    else:
        _table([list(d.values()) for d in data], list(data[0]) if data else ["id"])


def _validation_message(exc: Any) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


from orchestrator.demo.cli import demo  # noqa: E402

main.add_command(demo)
