"""Helpers shared by the ``cpdops`` command modules: context, output, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click

from orchestrator.context import AppContext, build_context
from orchestrator.errors import InputError


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


def _validation_message(exc: Any) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)
