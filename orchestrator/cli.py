"""The ``cpdops`` command line. Exit codes: 0 ok, 1 operation failed, 2 bad usage/input."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from orchestrator.auth.audit import cli_actor
from orchestrator.cli_common import CliOptions, _direct_only, _dump, _opened, json_option
from orchestrator.errors import CpdopsError, InputError

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
@click.option(
    "--url",
    metavar="URL",
    help="a running `cpdops serve`, e.g. http://127.0.0.1:8077 (else CPDOPS_URL, else url in "
    "the config file); with none the commands work on the database directly",
)
@click.option(
    "--token",
    metavar="TOKEN",
    help="API token (else CPDOPS_TOKEN, else token/token_file in the config file); the "
    "environment keeps it out of the process list",
)
@click.option(
    "--direct", is_flag=True, help="work on the database directly even if a URL is configured"
)
@click.pass_context
def main(
    ctx: click.Context, verbose: bool, url: str | None, token: str | None, direct: bool
) -> None:
    """cpdops: rollouts, monitoring and incidents for the SmartCPD cloud.

    With a URL (--url, CPDOPS_URL or the config file $CPDOPS_CONFIG, default
    ~/.config/cpdops/config.toml) the commands go through the API of a running `cpdops serve`
    with its token; otherwise they work on the database directly, configured by CPDOPS_*
    environment variables (CPDOPS_DATABASE_URL: a SQLite file ./cpdops.db by default, or
    postgresql+psycopg2://…). See docs/cli.md.
    """
    if direct and url:
        raise click.UsageError("--direct and --url exclude each other")
    ctx.obj = CliOptions(url=url, token=token, direct=direct)
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

    from orchestrator.api.serving import QueryRedaction, uvicorn_options
    from orchestrator.app import create_app
    from orchestrator.settings import Settings

    settings = Settings()
    if bind_host:
        settings.bind_host = bind_host
    if bind_port:
        settings.bind_port = bind_port
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in root.handlers:  # cpdops's own lines: no secret query parameter either
        handler.addFilter(QueryRedaction())
    uvicorn.run(create_app(settings), **uvicorn_options(settings))


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

    _direct_only("apply")
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


from orchestrator.cli_audit import audit  # noqa: E402
from orchestrator.cli_fleet import fleet  # noqa: E402
from orchestrator.cli_incidents import incidents  # noqa: E402
from orchestrator.cli_monitors import monitors  # noqa: E402
from orchestrator.cli_outbox import outbox  # noqa: E402
from orchestrator.cli_rollout import rollout  # noqa: E402
from orchestrator.cli_token import token  # noqa: E402
from orchestrator.demo.cli import demo  # noqa: E402

main.add_command(audit)
main.add_command(fleet)
main.add_command(incidents)
main.add_command(monitors)
main.add_command(outbox)
main.add_command(rollout)
main.add_command(demo)
main.add_command(token)
