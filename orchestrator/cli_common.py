"""Helpers shared by the ``cpdops`` command modules: context, output, errors."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import click

from orchestrator.client import ApiClient, resolve_endpoint
from orchestrator.context import AppContext, build_context
from orchestrator.errors import InputError


@dataclass
class CliOptions:
    """The top-level options: where the API is (``--url``/``--token``) or ``--direct``."""

    url: str | None = None
    token: str | None = None
    direct: bool = False
    client: ApiClient | None = field(default=None, repr=False)
    resolved: bool = False


def _api() -> ApiClient | None:
    """The API client when a URL is configured (``--url``, ``CPDOPS_URL``, the config file);
    None in direct mode: the command works on the database (``CPDOPS_DATABASE_URL``)."""
    ctx = click.get_current_context()
    opts = ctx.find_root().obj
    if not isinstance(opts, CliOptions):  # a command invoked on its own (tests, other groups)
        opts = CliOptions()
        ctx.find_root().obj = opts
    if opts.direct:
        return None
    if not opts.resolved:
        opts.resolved = True
        endpoint = resolve_endpoint(opts.url, opts.token, os.environ)
        if endpoint is not None:
            opts.client = ApiClient(endpoint)
            ctx.find_root().call_on_close(opts.client.close)
    return opts.client


def _need_api(what: str, otherwise: str) -> ApiClient:
    """The API client for a command that only the API does; exit 2 in direct mode."""
    client = _api()
    if client is None:
        raise InputError(
            f"{what} goes through the API: give --url (or CPDOPS_URL, or url in the config "
            f"file) and a token; {otherwise}"
        )
    return client


def _direct_only(what: str) -> None:
    """Say so when a URL is configured but ``what`` works on the database directly anyway."""
    try:
        configured = _api() is not None
    except InputError:  # a broken config file does not matter to this command
        configured = False
    if configured:
        click.echo(
            f"note: {what} works on the database directly (CPDOPS_DATABASE_URL), not through "
            "the API at the configured URL",
            err=True,
        )


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


_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def _cell(value: Any) -> str:
    """A table cell; times (also the API's ISO 8601 strings) as ``YYYY-MM-DD HH:MM:SS``."""
    if value is None:
        return "-"
    if isinstance(value, str) and _ISO_TIME.match(value):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if isinstance(value, datetime):
        if value.year <= 1:  # Docker's "0001-01-01T00:00:00Z": never
            return "-"
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str], *, empty: str) -> None:
    """Rows under upper-case headers; no rows: the line ``empty`` (e.g. "no incidents") instead
    of a bare header, so an empty answer says so."""
    if not rows:
        click.echo(empty)
        return
    cells = [[_cell(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    header = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    click.echo(header.rstrip())
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _known_names(client: ApiClient | None, kind: str) -> set[str]:
    """The names of the registry's tenants or hosts (with the hosts tenants are placed on,
    such as the implicit ``local``), through the API or from the database."""
    if client is not None:
        tenants = client.get(client.path("tenants"))
        if kind == "tenant":
            return {t["slug"] for t in tenants}
        return {h["name"] for h in client.get(client.path("hosts"))} | {
            t["host_name"] for t in tenants if t.get("host_name")
        }
    from sqlalchemy import select

    from orchestrator.db.models import Host, Tenant

    with _opened() as ctx, ctx.factory() as s:
        if kind == "tenant":
            return set(s.scalars(select(Tenant.slug)))
        return {h.name for h in ctx.hosts.hosts()} | set(s.scalars(select(Host.name)))


def _check_filters(client: ApiClient | None, **named: str | None) -> None:
    """Exit 2 ("no such tenant: acmee") when a filter names a tenant or host that does not
    exist — asked only after an empty answer, so a listing that found something costs nothing
    more and an empty table never hides a typo."""
    for kind, name in named.items():
        if name is not None and name not in _known_names(client, kind):
            raise InputError(f"no such {kind}: {name} (cpdops fleet {kind}s lists them)")


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InputError("an empty list was given")
    return items


json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


def _validation_message(exc: Any) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)
