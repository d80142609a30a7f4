"""``cpdops audit ls``: the audit log, newest first, with the API's filters and pagination.

Through ``GET /api/v1/audit`` (admin) when a URL is configured, else on the database directly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from orchestrator.cli_common import _api, _dump, _opened, _table, json_option
from orchestrator.errors import InputError


@click.group()
def audit() -> None:
    """The audit log: who did what, when, from where."""


def _time(option: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InputError(
            f"{option} {value!r}: not an ISO 8601 time, e.g. 2026-12-01T10:00:00Z"
        ) from exc


@audit.command("ls")
@click.option("--actor", help="exactly, e.g. token:ci or cli:root")
@click.option("--action", help="prefix, e.g. http or rollout.")
@click.option("--method", help="HTTP method")
@click.option("--status", type=click.IntRange(100, 599), help="response status")
@click.option("--token-id", type=click.IntRange(1), help="the token's id")
@click.option("--target", help="prefix of the path or object")
@click.option("--since", help="at or after (ISO 8601; no zone: UTC)")
@click.option("--until", help="before (ISO 8601; no zone: UTC)")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@json_option
def audit_ls(as_json: bool, **kw: Any) -> None:
    """List audit entries, newest first."""
    since, until = _time("--since", kw["since"]), _time("--until", kw["until"])
    client = _api()
    if client is not None:
        params = {**kw, "since": since and since.isoformat(), "until": until and until.isoformat()}
        data = client.get(client.path("audit"), params)
    else:
        from orchestrator.api.schemas import AuditOut
        from orchestrator.auth.audit import query

        with _opened() as ctx, ctx.factory() as s:
            rows = query(s, **{**kw, "since": since, "until": until})
            data = [AuditOut.model_validate(r).model_dump(mode="json") for r in rows]
    if as_json:
        _dump(data)
        return
    _table(
        [
            (
                e["at"],
                e["actor"],
                e["action"],
                e.get("method"),
                e.get("status"),
                e.get("target"),
                e.get("client"),
            )
            for e in data
        ],
        ["at", "actor", "action", "method", "status", "target", "from"],
        empty="no audit entries",
    )
