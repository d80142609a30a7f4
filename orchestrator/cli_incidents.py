"""``cpdops incidents …``: list, show with the timeline, create, comment, ask, resolve, close.

With a URL configured every command goes through ``/api/v1/incidents`` (a ticket made by
``create`` then has source ``portal``); otherwise it works on the database directly. ``--json``
is the API's JSON in both; bad input exits 2, a refused change (the workflow forbids it) too.
"""

from __future__ import annotations

import getpass
import mimetypes
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session

from orchestrator.auth.audit import record_cli
from orchestrator.cli_common import (
    _api,
    _cell,
    _check_filters,
    _dump,
    _opened,
    _table,
    json_option,
)
from orchestrator.client import ApiClient
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
    client = _api()
    if client is not None:
        params = {"type": type_, "status": status, "tenant": tenant, "priority": priority}
        rows = client.get(client.path("incidents"), {**params, "limit": limit, "offset": offset})
    else:
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
            rows = [to_out(i).model_dump(mode="json") for i in found]
    if not rows:
        _check_filters(client, tenant=tenant)
    if as_json:
        _dump(rows)
        return
    _table(
        [
            [r[k] for k in ("number", "type", "status", "priority", "tenant")]
            + [r["subject"][:60], r["created_at"]]
            for r in rows
        ],
        ["number", "type", "status", "priority", "tenant", "subject", "created"],
        empty="no incidents",
    )


def _detail_of(number: str) -> dict[str, Any]:
    """The ticket as ``GET /api/v1/incidents/{number}`` gives it, from the database."""
    from orchestrator.api.routes.incidents import _detail

    with _opened() as ctx, ctx.factory() as s:
        return _detail(s, number).model_dump(mode="json")


LOG_KEYS = ("log", "logs", "output", "body", "excerpt")


def evidence_lines(data: dict[str, Any], indent: str = "      ") -> list[str]:
    """Evidence as facts, one ``key: value`` a line (nested keys dotted, times as in tables,
    Docker's zero time "-"), log text as its own lines under its key, each listed container
    (or other record) as a block of its own."""
    facts: list[str] = []
    blocks: list[str] = []

    def walk(obj: dict[str, Any], prefix: str) -> None:
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, str) and (k.rsplit("_", 1)[-1] in LOG_KEYS or "\n" in v):
                blocks.append(f"{indent}{key}:")
                blocks.extend(f"{indent}  | {line}" for line in v.splitlines() or [""])
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                for n, item in enumerate(v, 1):
                    name = f": {item['name']}" if "name" in item else ""
                    blocks.append(f"{indent}{key} {n}{name}")
                    blocks.extend(evidence_lines(item, indent + "  "))
            elif isinstance(v, dict):
                walk(v, key)
            elif isinstance(v, list):
                facts.append(f"{indent}{key}: {', '.join(map(str, v)) or '-'}")
            else:
                shown = "-" if v is None or v == "" else v
                facts.append(f"{indent}{key}: {_cell(shown)}")

    walk(data, "")
    return facts + blocks


def _event_what(e: dict[str, Any]) -> str:
    """The event's kind; a change as from → to («Новая → Решение предоставлено»)."""
    data = e["data"]
    if e["kind"] in ("status", "solution") and "to" in data:
        labels = [
            STATUS_LABELS.get(data.get(x) or "", {}).get("ru", data.get(x)) for x in ("from", "to")
        ]
        return f"status {labels[0]} → {labels[1]}"
    if e["kind"] in ("priority", "owner") and "to" in data:
        return f"{e['kind']} {data.get('from') or '-'} → {data.get('to') or '-'}"
    return str(e["kind"])


def _show(d: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _dump(d)
        return
    click.echo(
        f"#{d['number']}  {d['type']}  {d['status']} ({STATUS_LABELS[d['status']]['ru']})  "
        f"priority {d['priority']}  owner {d.get('owner') or '-'}  tenant {d['tenant'] or '-'}"
    )
    click.echo(f"subject: {d['subject']}")
    if d["description"]:
        click.echo(d["description"])
    if d["parent"] is not None:
        p = d["parent"]
        click.echo(f"part of: #{p['number']} {p['status']} {p['subject']}")
    for c in d["children"]:
        click.echo(f"child:   #{c['number']} {c['status']} {c['tenant'] or '-'} {c['subject']}")
    for a in d["attachments"]:
        click.echo(
            f"attachment {a['id']}: {a['filename']} ({a['content_type']}, {a['size']} bytes)"
        )
    click.echo("timeline:")
    for e in d["events"]:
        # the "created" entry's body is the description, printed above
        body = "" if e["kind"] == "created" and e["body"] == d["description"] else e["body"]
        click.echo(f"  {_cell(e['at'])}  {e['author']:12} {_event_what(e):24} {body}".rstrip())
        if e["kind"] == "comment":
            if e["data"].get("customer"):
                click.echo("      (the customer's reply)")
        elif e["kind"] not in ("status", "solution", "priority", "owner") and e["data"]:
            for line in evidence_lines(e["data"]):
                click.echo(line)


@incidents.command("show")
@click.argument("number")
@json_option
def incidents_show(number: str, as_json: bool) -> None:
    """Show a ticket with its timeline, attachments, parent and children."""
    client = _api()
    if client is not None:
        _show(client.get(client.path("incidents", number)), as_json)
    else:
        _show(_detail_of(number), as_json)


def _act(
    number: str,
    as_json: bool,
    action: Callable[[Session, Incident], Any],
    route: str,
    body: dict[str, Any],
) -> None:
    """Change a ticket: ``POST /api/v1/incidents/{number}/<route>`` with ``body``, or the same
    ``action`` on the database directly (audited as the CLI user)."""
    from orchestrator.incidents.tickets import get_by_number

    client = _api()
    if client is not None:
        _show(client.post(client.path("incidents", number, route), body), as_json)
        return
    name = click.get_current_context().info_name or "change"
    with _opened() as ctx, session_scope(ctx.factory) as s:
        action(s, get_by_number(s, number))
        record_cli(s, action=f"incident.{name}", target=f"incident/{number}")
    _show(_detail_of(number), as_json)


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
        "comments",
        {"author": author, "body": message, "customer": customer},
    )


def _change(number: str, status: str, message: str, author: str, as_json: bool) -> None:
    from orchestrator.incidents.tickets import change_status

    _act(
        number,
        as_json,
        lambda s, i: change_status(s, i, status, author=author, comment=message),
        "status",
        {"status": status, "comment": message, "author": author},
    )


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

    _act(
        number,
        as_json,
        lambda s, i: set_priority(s, i, priority, author=author),
        "priority",
        {"priority": priority, "author": author},
    )


@incidents.command("owner")
@click.argument("number")
@click.argument("owner", required=False)
@author_option
@json_option
def incidents_owner(number: str, owner: str | None, author: str, as_json: bool) -> None:
    """Give a ticket to OWNER (none given: to nobody)."""
    from orchestrator.incidents.tickets import set_owner

    _act(
        number,
        as_json,
        lambda s, i: set_owner(s, i, owner, author=author),
        "owner",
        {"owner": owner, "author": author},
    )


@incidents.command("create")
@click.option("--type", "type_", type=click.Choice(TYPES), required=True)
@click.option("--subject", required=True)
@click.option("--description", default="")
@click.option("--tenant", help="tenant slug (must be in the registry)")
@click.option("--priority", type=click.Choice(PRIORITIES), default="normal", show_default=True)
@click.option(
    "--screenshot",
    "--attach",
    "screenshot",
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    help="a file to attach (the portal's screenshot)",
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
    client = _api()
    if client is not None:
        _show(
            _create_through_api(
                client,
                {
                    "type": type_,
                    "subject": subject,
                    "description": description,
                    "tenant": tenant,
                    "priority": priority,
                    "author": author,
                },
                screenshot,
                content,
            ),
            as_json,
        )
        return
    with _opened() as ctx, session_scope(ctx.factory) as s:
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
    _show(_detail_of(number), as_json)


def _create_through_api(
    client: ApiClient, fields: dict[str, Any], screenshot: Path | None, content: bytes | None
) -> Any:
    """The portal intake: JSON, or a multipart form when a file goes with it."""
    if screenshot is None or content is None:
        return client.post(client.path("incidents"), {k: v for k, v in fields.items() if v})
    kind = mimetypes.guess_type(screenshot.name)[0] or "application/octet-stream"
    response = client.request(
        "POST",
        client.path("incidents"),
        data={k: v for k, v in fields.items() if v},
        files={"screenshot": (screenshot.name, content, kind)},
    )
    return response.json()


@incidents.command("attachment")
@click.argument("number")
@click.argument("attachment_id", type=click.IntRange(1))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="write it to this file (default: its own name in the current directory; - stdout)",
)
def incidents_attachment(number: str, attachment_id: int, output: Path | None) -> None:
    """Download an attachment of a ticket (the bytes, as stored)."""
    client = _api()
    if client is not None:
        response = client.raw(client.path("incidents", number, "attachments", attachment_id))
        content = response.content
        filename = response.headers.get("content-disposition", "").partition('filename="')[2]
        filename = filename.partition('"')[0] or f"attachment-{attachment_id}"
    else:
        from orchestrator.incidents.attachments import get_attachment
        from orchestrator.incidents.tickets import get_by_number

        with _opened() as ctx, ctx.factory() as s:
            att = get_attachment(s, get_by_number(s, number), attachment_id)
            content, filename = att.content, att.filename
    if output is not None and str(output) == "-":
        sys.stdout.buffer.write(content)
        return
    target = output or Path(Path(filename).name or f"attachment-{attachment_id}")
    target.write_bytes(content)
    click.echo(f"wrote {target} ({len(content)} bytes)")
