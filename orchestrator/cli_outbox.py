"""``cpdops outbox ls|requeue``: see the notifications and send dead ones again.

Through ``/api/v1/outbox`` (admin) when a URL is configured, else on the database directly
(the requeue then audited with the CLI user as the actor).
"""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import select

from orchestrator.cli_common import _api, _dump, _opened, _table, json_option
from orchestrator.errors import InputError

PAGE = 1000


@click.group()
def outbox() -> None:
    """The notification outbox: pending, sent and dead notifications."""


def _direct_rows(**filters: Any) -> list[dict[str, Any]]:
    from orchestrator.api.routes.outbox import outbox_out
    from orchestrator.db.models import OutboxMessage

    with _opened() as ctx, ctx.factory() as s:
        query = select(OutboxMessage).order_by(OutboxMessage.id)
        if filters.get("status"):
            query = query.where(OutboxMessage.state == filters["status"])
        if filters.get("channel"):
            query = query.where(OutboxMessage.channel == filters["channel"])
        if filters.get("number"):
            query = query.where(OutboxMessage.incident_number == filters["number"])
        query = query.limit(filters.get("limit", PAGE)).offset(filters.get("offset", 0))
        return [outbox_out(r).model_dump(mode="json") for r in s.scalars(query)]


def _rows(**filters: Any) -> list[dict[str, Any]]:
    client = _api()
    if client is None:
        return _direct_rows(**filters)
    data: list[dict[str, Any]] = client.get(client.path("outbox"), filters)
    return data


@outbox.command("ls")
@click.option(
    "--status", type=click.Choice(["pending", "sent", "dead"]), help="only rows in this state"
)
@click.option("--channel", help="email, telegram, webhook or otrs")
@click.option("--number", help="the ticket's number")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@json_option
def outbox_ls(as_json: bool, **kw: Any) -> None:
    """List notifications, oldest first (a dead one's reason in ERROR)."""
    data = _rows(**kw)
    if as_json:
        _dump(data)
        return
    _table(
        [
            (
                r["id"],
                r["state"],
                r["channel"],
                r["recipient"],
                r["incident_number"],
                r.get("kind"),
                r["attempts"],
                r["sent_at"] if r["state"] == "sent" else r["next_attempt_at"],
                (r.get("last_error") or "")[:80] or None,
            )
            for r in data
        ],
        ["id", "state", "channel", "recipient", "ticket", "kind", "tries", "at", "error"],
        empty="no notifications in the outbox",
    )


def _all_dead() -> list[int]:
    ids: list[int] = []
    while True:
        page = _rows(status="dead", limit=PAGE, offset=len(ids))
        ids += [int(r["id"]) for r in page]
        if len(page) < PAGE:
            return ids


def _requeue_direct(ids: list[int]) -> list[tuple[int, str]]:
    from orchestrator.auth.audit import record_cli
    from orchestrator.db.models import OutboxMessage
    from orchestrator.db.session import session_scope
    from orchestrator.incidents.outbox import requeue

    refused: list[tuple[int, str]] = []
    with _opened() as ctx, session_scope(ctx.factory) as s:
        for row_id in ids:
            row = s.get(OutboxMessage, row_id)
            if row is None:
                refused.append((row_id, f"no outbox notification {row_id}"))
                continue
            before = row.state
            if not requeue(s, row):
                refused.append((row_id, f"outbox notification {row_id} is {row.state}"))
                continue
            record_cli(
                s,
                action="outbox.requeue",
                target=f"outbox/{row_id}",
                detail={"state": before, "channel": row.channel, "number": row.incident_number},
            )
    return refused


@outbox.command("requeue")
@click.argument("ids", nargs=-1, type=click.IntRange(1, 2**31 - 1))
@click.option("--dead", "all_dead", is_flag=True, help="every dead notification")
def outbox_requeue(ids: tuple[int, ...], all_dead: bool) -> None:
    """Send notifications (by ID, or --dead: all dead ones) again: due now, tries from 0."""
    if bool(ids) == all_dead:
        raise InputError("give the IDs of the notifications to requeue, or --dead (not both)")
    wanted = _all_dead() if all_dead else list(dict.fromkeys(ids))
    client = _api()
    refused: list[tuple[int, str]] = []
    if client is None:
        refused = _requeue_direct(wanted)
    else:
        for row_id in wanted:
            try:
                client.post(client.path("outbox", row_id, "requeue"))
            except InputError as exc:  # 404, 409: report, go on with the others
                refused.append((row_id, str(exc)))
    for row_id, reason in refused:
        click.echo(f"not requeued {row_id}: {reason}", err=True)
    done = len(wanted) - len(refused)
    click.echo(f"requeued {done} notification{'s' if done != 1 else ''}")
    if refused:
        raise InputError(f"{len(refused)} of {len(wanted)} not requeued")
