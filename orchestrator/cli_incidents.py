"""``cpdops incidents …``: list, show with the timeline, create, comment, ask, resolve, close.

Every command works on the database directly (like the other commands), with ``--json`` for
machine-readable output; bad input exits 2, a refused change (the workflow forbids it) too.
"""

from __future__ import annotations

import getpass
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session

from orchestrator.auth.audit import record_cli
from orchestrator.cli_common import _dump, _opened, _table, json_option
from orchestrator.context import AppContext
from orchestrator.db.models import Incident
from orchestrator.db.session import session_scope
from orchestrator.incidents.tickets import list_tickets
from orchestrator.incidents.workflow import PRIORITIES, STATUS_LABELS, STATUSES, TYPES


def _default_author() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:100]
    except (OSError, KeyError):
        return "cli"


author_option = click.option(
    "--author",
    envvar="CPDOPS_AUTHOR",
    default=_default_author,
    show_default="cli:<user>",
    help="who makes the change (CPDOPS_AUTHOR)",
)


@click.group()
def incidents() -> None:
    """Incident tickets: the support desk's workflow."""


@incidents.command("ls")
@click.option("--type", "type_", type=click.Choice(TYPES), help="only this type")
@click.option("--status", type=click.Choice(STATUSES), help="only this status")
@click.option("--tenant", help="only this tenant's tickets")
@click.option("--priority", type=click.Choice(PRIORITIES), help="only this priority")
@click.option("--limit", type=click.IntRange(1, 1000), default=200, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@json_option
def incidents_ls(
    type_: str | None,
    status: str | None,
    tenant: str | None,
    priority: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List tickets, newest first."""
    from orchestrator.api.routes.incidents import to_out

    with _opened() as ctx, ctx.factory() as s:
        found = list_tickets(
            s,
            type=type_,
            status=status,
            tenant=tenant,
            priority=priority,
            limit=limit,
            offset=offset,
        )
        rows = [to_out(i) for i in found]
    if as_json:
        _dump([r.model_dump(mode="json") for r in rows])
        return
    _table(
        [
            (r.number, r.type, r.status, r.priority, r.tenant, r.subject[:60], r.created_at)
            for r in rows
        ],
        ["number", "type", "status", "priority", "tenant", "subject", "created"],
    )


def _show(ctx: AppContext, number: str, as_json: bool) -> None:
    from orchestrator.api.routes.incidents import _detail

    with ctx.factory() as s:
        d = _detail(s, number)
    if as_json:
        _dump(d.model_dump(mode="json"))
        return
    click.echo(
        f"#{d.number}  {d.type}  {d.status} ({STATUS_LABELS[d.status]['ru']})  "
        f"priority {d.priority}  tenant {d.tenant or '-'}"
    )
    click.echo(f"subject: {d.subject}")
    if d.description:
        click.echo(d.description)
    if d.parent is not None:
        click.echo(f"part of: #{d.parent.number} {d.parent.status} {d.parent.subject}")
    for c in d.children:
        click.echo(f"child:   #{c.number} {c.status} {c.tenant or '-'} {c.subject}")
    for a in d.attachments:
        click.echo(f"attachment {a.id}: {a.filename} ({a.content_type}, {a.size} bytes)")
    click.echo("timeline:")
    for e in d.events:
        what = e.kind if "to" not in e.data else f"{e.kind}→{e.data['to']}"
        click.echo(f"  {e.at:%Y-%m-%d %H:%M:%S}  {e.author:12} {what:24} {e.body}".rstrip())


@incidents.command("show")
@click.argument("number")
@json_option
def incidents_show(number: str, as_json: bool) -> None:
    """Show a ticket with its timeline, attachments, parent and children."""
    with _opened() as ctx:
        _show(ctx, number, as_json)


def _act(number: str, as_json: bool, action: Callable[[Session, Incident], Any]) -> None:
    from orchestrator.incidents.tickets import get_by_number

    name = click.get_current_context().info_name or "change"
    with _opened() as ctx:
        with session_scope(ctx.factory) as s:
            action(s, get_by_number(s, number))
            record_cli(s, action=f"incident.{name}", target=f"incident/{number}")
        _show(ctx, number, as_json)


@incidents.command("comment")
@click.argument("number")
@click.option("-m", "--message", required=True, help="the comment")
@click.option("--customer", is_flag=True, help="a reply from the customer (reopens)")
@author_option
@json_option
def incidents_comment(
    number: str, message: str, customer: bool, author: str, as_json: bool
) -> None:
    """Comment on a ticket; a customer's reply reopens an awaiting_info/solved ticket."""
    from orchestrator.incidents.tickets import add_comment

    _act(
        number,
        as_json,
        lambda s, i: add_comment(s, i, author=author, body=message, customer=customer),
    )


def _change(number: str, status: str, message: str, author: str, as_json: bool) -> None:
    from orchestrator.incidents.tickets import change_status

    _act(number, as_json, lambda s, i: change_status(s, i, status, author=author, comment=message))


@incidents.command("status")
@click.argument("number")
@click.argument("status", type=click.Choice(STATUSES))
@click.option("-m", "--message", default="", help="a comment (required for solution_provided)")
@author_option
@json_option
def incidents_status(number: str, status: str, message: str, author: str, as_json: bool) -> None:
    """Move a ticket to STATUS under the workflow rules."""
    _change(number, status, message, author, as_json)


@incidents.command("resolve")
@click.argument("number")
@click.option("-m", "--message", required=True, help="the solution")
@author_option
@json_option
def incidents_resolve(number: str, message: str, author: str, as_json: bool) -> None:
    """Provide the solution: status solution_provided («Решение предоставлено»)."""
    _change(number, "solution_provided", message, author, as_json)


@incidents.command("ask")
@click.argument("number")
@click.option("-m", "--message", required=True, help="what the customer should tell")
@author_option
@json_option
def incidents_ask(number: str, message: str, author: str, as_json: bool) -> None:
    """Ask the customer for information: status awaiting_info."""
    _change(number, "awaiting_info", message, author, as_json)


@incidents.command("close")
@click.argument("number")
@click.option("-m", "--message", default="", help="a closing comment")
@author_option
@json_option
def incidents_close(number: str, message: str, author: str, as_json: bool) -> None:
    """Close a ticket; closing a mass incident closes its children."""
    _change(number, "closed", message, author, as_json)


@incidents.command("priority")
@click.argument("number")
@click.argument("priority", type=click.Choice(PRIORITIES))
@author_option
@json_option
def incidents_priority(number: str, priority: str, author: str, as_json: bool) -> None:
    """Set a ticket's priority."""
    from orchestrator.incidents.tickets import set_priority

    _act(number, as_json, lambda s, i: set_priority(s, i, priority, author=author))


@incidents.command("create")
@click.option("--type", "type_", type=click.Choice(TYPES), required=True)
@click.option("--subject", required=True)
@click.option("--description", default="")
@click.option("--tenant", help="tenant slug (must be in the registry)")
@click.option("--priority", type=click.Choice(PRIORITIES), default="normal", show_default=True)
@click.option(
    "--screenshot",
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    help="a file to attach",
)
@author_option
@json_option
def incidents_create(
    type_: str,
    subject: str,
    description: str,
    tenant: str | None,
    priority: str,
    screenshot: Path | None,
    author: str,
    as_json: bool,
) -> None:
    """Open a ticket by hand (as the portal does)."""
    from orchestrator.incidents.attachments import MAX_ATTACHMENT_BYTES, add_attachment, too_large
    from orchestrator.incidents.tickets import create_ticket

    content: bytes | None = None
    if screenshot is not None:
        size = screenshot.stat().st_size
        if size > MAX_ATTACHMENT_BYTES:
            raise too_large(size)
        content = screenshot.read_bytes()
    with _opened() as ctx:
        with session_scope(ctx.factory) as s:
            incident = create_ticket(
                s,
                system_id=ctx.settings.system_id,
                type=type_,
                subject=subject,
                description=description,
                author=author,
                source="cli",
                tenant=tenant,
                priority=priority,
            )
            if screenshot is not None and content is not None:
                add_attachment(
                    s,
                    incident,
                    filename=screenshot.name,
                    content_type=mimetypes.guess_type(screenshot.name)[0],
                    content=content,
                    author=author,
                )
            number = incident.number
            record_cli(s, action="incident.create", target=f"incident/{number}")
        _show(ctx, number, as_json)
