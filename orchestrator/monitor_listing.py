"""The rows of ``GET /api/v1/monitors``: a page costs about the page, not every monitor.

A monitor is listed from three places; for one id the first that has it decides the row:

1. the live engine (in ``cpdops serve``): spec, newest status and reason (``changed_at`` from the
   stored record when there is one);
2. its stored record (``monitors``): last known state;
3. its declaration (``declared_monitors``) alone: ``pending``, "not checked yet".

Rows are in id order (code point order, as Python's ``sorted``) and the filters (tenant, host,
kind, status) apply to the row as listed. The page's ids are found first, without reading any
record: the engine's ids that pass the filters (kept sorted by the engine) are merged lazily with
the ids of the records and declarations that pass them in SQL (``ORDER BY id``, read in growing
chunks), an SQL id the engine knows being left to the engine. Only the page's rows are then read
(records, declarations and engine views by id). With ``limit`` the work is about
``offset + limit`` ids; the whole list (no ``limit``) reads every id once.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, collate, exists, select, union_all
from sqlalchemy.orm import Session

from monitors.engine import MonitorEngine
from monitors.probe import MonitorSpec
from monitors.state import MonitorStatus
from orchestrator.db.models import DeclaredMonitor, MonitorRecord

FIRST_CHUNK_MIN = 200  # ids read from SQL at first (at least offset + limit + 1)
WHOLE_CHUNK = 10_000  # ids read from SQL at first for the whole list
IN_LIST_MAX = 500  # page ids per `WHERE id IN (…)`; a longer page reads the tables whole
_STATUS_NAMES = {s.name.lower(): s for s in MonitorStatus}


@dataclass(frozen=True)
class Filters:
    """The query's filters; ``None`` = any."""

    tenant: str | None = None
    host: str | None = None
    kind: str | None = None
    status: str | None = None

    def accepts_live(self, spec: MonitorSpec, status: MonitorStatus) -> bool:
        return (
            (self.tenant is None or spec.tenant == self.tenant)
            and (self.host is None or spec.host == self.host)
            and (self.kind is None or spec.kind == self.kind)
            and (self.status is None or status.name.lower() == self.status)
        )

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.tenant, self.host, self.kind, self.status))


def merge_page(
    live: Iterable[str],
    stored: Iterable[str],
    live_all: Container[str],
    offset: int,
    limit: int | None,
) -> list[str]:
    """The ids ``[offset : offset + limit]`` of the sorted union of ``live`` (the engine's ids
    that pass the filters) and ``stored`` (the database's, sorted alike), an id of ``stored``
    that is in ``live_all`` (every engine id) left out: the engine decides it. Both inputs are
    consumed only as far as the page needs."""
    if limit == 0:
        return []
    out: list[str] = []
    seen = 0
    merged = heapq.merge(((i, False) for i in live), ((i, True) for i in stored))
    for monitor_id, from_db in merged:
        if from_db and monitor_id in live_all:
            continue
        seen += 1
        if seen > offset:
            out.append(monitor_id)
            if limit is not None and len(out) >= limit:
                break
    return out


def _ordered(session: Session, column: Any) -> ColumnElement[Any]:
    # PostgreSQL orders text by the database's collation; "C" is code point order for UTF-8, as
    # SQLite's default BINARY is.
    if session.get_bind().dialect.name == "postgresql":
        return collate(column, "C")
    return column  # type: ignore[no-any-return]


def _id_query(filters: Filters) -> Select[Any] | None:
    """Ids of the records, and of the declarations without a record, that pass ``filters``
    (as listed from the database); ``None`` when none can."""
    rec, dm = MonitorRecord, DeclaredMonitor
    parts: list[Select[Any]] = []
    records = select(rec.id.label("id"))
    status = None
    if filters.status is not None:
        status = _STATUS_NAMES.get(filters.status)
        if status is None:
            return None
        records = records.where(rec.status == int(status))
    for column, value in ((rec.tenant, filters.tenant), (rec.host, filters.host),
                          (rec.kind, filters.kind)):  # fmt: skip
        if value is not None:
            records = records.where(column == value)
    parts.append(records)
    if status in (None, MonitorStatus.PENDING):
        declared = select(dm.id.label("id")).where(~exists().where(rec.id == dm.id))
        for column, value in ((dm.tenant, filters.tenant), (dm.host, filters.host),
                              (dm.kind, filters.kind)):  # fmt: skip
            if value is not None:
                declared = declared.where(column == value)
        parts.append(declared)
    return select(union_all(*parts).subquery().c.id)


def stored_ids(session: Session, filters: Filters, first_chunk: int) -> Iterator[str]:
    """The database's ids that pass ``filters``, sorted, read lazily in chunks (keyset: ``id >
    last``) of ``first_chunk`` ids, doubling."""
    query = _id_query(filters)
    if query is None:
        return
    sub = query.subquery()
    key = _ordered(session, sub.c.id)
    last: str | None = None
    chunk = max(first_chunk, 1)
    while True:
        stmt = select(sub.c.id).order_by(key).limit(chunk)
        if last is not None:
            stmt = stmt.where(key > last)
        ids = list(session.scalars(stmt))
        yield from ids
        if len(ids) < chunk:
            return
        last = ids[-1]
        chunk *= 2


def _by_id(session: Session, columns: Sequence[Any], id_col: Any, ids: list[str]) -> dict[str, Any]:
    if len(ids) > IN_LIST_MAX:
        wanted = set(ids)
        return {r.id: r for r in session.execute(select(*columns)) if r.id in wanted}
    if not ids:
        return {}
    return {r.id: r for r in session.execute(select(*columns).where(id_col.in_(ids)))}


def list_rows(
    session: Session,
    engine: MonitorEngine | None,
    filters: Filters,
    limit: int | None,
    offset: int,
) -> list[dict[str, Any]]:
    """The page's rows (plain dicts, in id order) for ``MonitorOut``; ``target`` as stored."""
    if engine is not None:
        live_all: Container[str] = set(engine.ids())
        live = engine.ids(filters.accepts_live if filters.any else None)
    else:
        live_all, live = (), ()
    first = WHOLE_CHUNK if limit is None else max(FIRST_CHUNK_MIN, offset + limit + 1)
    page_ids = merge_page(live, stored_ids(session, filters, first), live_all, offset, limit)
    rec, dm = MonitorRecord, DeclaredMonitor
    stored = _by_id(
        session,
        (rec.id, rec.name, rec.tenant, rec.host, rec.kind, rec.target, rec.status, rec.reason,
         rec.changed_at),
        rec.id,
        page_ids,
    )  # fmt: skip
    declared = _by_id(
        session,
        (dm.id, dm.name, dm.tenant, dm.host, dm.kind, dm.target, dm.source),
        dm.id,
        page_ids,
    )
    views = engine.views(page_ids) if engine is not None else {}
    rows: list[dict[str, Any]] = []
    for monitor_id in page_ids:
        decl = declared.get(monitor_id)
        source = decl.source if decl is not None else "generated"
        stored_rec = stored.get(monitor_id)
        view = views.get(monitor_id)
        if view is not None:
            spec, status = view.spec, MonitorStatus(view.state.status)
            rows.append({
                "id": spec.id, "name": spec.name, "tenant": spec.tenant, "host": spec.host,
                "kind": spec.kind, "target": spec.target, "status": status.name.lower(),
                "status_code": int(status),
                "reason": view.hold_reason or (view.last_result.reason if view.last_result else ""),
                "changed_at": stored_rec.changed_at if stored_rec else view.last_change_at,
                "source": source,
            })  # fmt: skip
        elif stored_rec is not None:
            rows.append({
                "id": stored_rec.id, "name": stored_rec.name, "tenant": stored_rec.tenant,
                "host": stored_rec.host, "kind": stored_rec.kind, "target": stored_rec.target,
                "status": MonitorStatus(stored_rec.status).name.lower(),
                "status_code": stored_rec.status, "reason": stored_rec.reason,
                "changed_at": stored_rec.changed_at, "source": source,
            })  # fmt: skip
        elif decl is not None:
            rows.append({
                "id": decl.id, "name": f"{decl.tenant}-{decl.name}", "tenant": decl.tenant,
                "host": decl.host, "kind": decl.kind, "target": decl.target, "status": "pending",
                "status_code": int(MonitorStatus.PENDING), "reason": "not checked yet",
                "changed_at": None, "source": decl.source,
            })  # fmt: skip
        # else: gone between finding the page and reading it (the engine dropped it)
    return rows
