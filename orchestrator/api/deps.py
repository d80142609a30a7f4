"""Dependencies shared by the routes (``Annotated`` aliases, STYLE: fastapi template)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BeforeValidator
from sqlalchemy.orm import Session

from orchestrator.context import AppContext

# Free text in a query filter: PostgreSQL refuses NUL in text, so it is a 422 here, not a 500.
from orchestrator.strict_types import NO_NUL as NO_NUL


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def get_session(request: Request) -> Iterator[Session]:
    ctx = get_ctx(request)
    with ctx.factory() as session:
        yield session


T = TypeVar("T")

CtxDep = Annotated[AppContext, Depends(get_ctx)]
SessionDep = Annotated[Session, Depends(get_session)]


def _iso_only(value: object) -> object:
    # pydantic would read "0.0" as a Unix time; the parameter is documented as ISO 8601
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+(\.\d*)?\s*", value):
        raise ValueError("not an ISO 8601 date-time, e.g. 2026-12-01T10:00:00Z")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_iso_only)]


# Optional paging of list routes: without ``limit`` the whole (filtered) list, as before.
LimitQuery = Annotated[
    int | None,
    Query(ge=1, le=10_000, description="at most this many items (default: all)"),
]
OffsetQuery = Annotated[
    int, Query(ge=0, le=1_000_000_000, description="skip this many items first")
]


def page(items: Sequence[T], limit: int | None, offset: int) -> list[T]:
    """``items[offset : offset + limit]`` (all from ``offset`` when ``limit`` is None)."""
    return list(items[offset : None if limit is None else offset + limit])
