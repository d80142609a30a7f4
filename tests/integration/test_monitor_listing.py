"""``GET /api/v1/monitors`` reads only the page (``orchestrator.monitor_listing``): its rows must
be exactly the whole-list merge's (records, declarations, a live engine) cut after filtering,
for every filter, ``limit`` and ``offset``, on SQLite and PostgreSQL (whose default collation
does not order ids as Python does), with a real started engine probing real TCP targets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from monitors.engine import MonitorEngine
from monitors.probe import MonitorSpec
from monitors.state import MonitorStatus
from orchestrator import monitor_listing
from orchestrator.context import build_context
from orchestrator.db.models import DeclaredMonitor, MonitorRecord
from orchestrator.db.session import session_scope
from orchestrator.monitor_listing import Filters, list_rows, merge_page
from orchestrator.settings import Settings

# Ids whose code point order differs from a linguistic collation (case, punctuation, accents).
TENANTS = ("Zeta", "acme", "a-b", "ab", "é", "globex")


def whole_list(session: Any, engine: MonitorEngine | None, f: Filters) -> list[dict[str, Any]]:
    """The route's rows before it read only the page: everything merged, filtered, sorted."""
    rec, dm = MonitorRecord, DeclaredMonitor
    stored = {
        m.id: m
        for m in session.execute(
            select(rec.id, rec.name, rec.tenant, rec.host, rec.kind, rec.target, rec.status,
                   rec.reason, rec.changed_at)
        )
    }  # fmt: skip
    declared = {
        d.id: d
        for d in session.execute(
            select(dm.id, dm.name, dm.tenant, dm.host, dm.kind, dm.target, dm.source)
        )
    }
    rows: dict[str, dict[str, Any]] = {}
    for d in declared.values():
        rows[d.id] = {
            "id": d.id, "name": f"{d.tenant}-{d.name}", "tenant": d.tenant, "host": d.host,
            "kind": d.kind, "target": d.target, "status": "pending",
            "status_code": int(MonitorStatus.PENDING), "reason": "not checked yet",
            "changed_at": None, "source": d.source,
        }  # fmt: skip
    for r in stored.values():
        rows[r.id] = {
            "id": r.id, "name": r.name, "tenant": r.tenant, "host": r.host, "kind": r.kind,
            "target": r.target, "status": MonitorStatus(r.status).name.lower(),
            "status_code": r.status, "reason": r.reason, "changed_at": r.changed_at,
            "source": declared[r.id].source if r.id in declared else "generated",
        }  # fmt: skip
    for view in engine.snapshot() if engine is not None else []:
        spec, status = view.spec, MonitorStatus(view.state.status)
        s = stored.get(spec.id)
        rows[spec.id] = {
            "id": spec.id, "name": spec.name, "tenant": spec.tenant, "host": spec.host,
            "kind": spec.kind, "target": spec.target, "status": status.name.lower(),
            "status_code": int(status),
            "reason": view.hold_reason or (view.last_result.reason if view.last_result else ""),
            "changed_at": s.changed_at if s else view.last_change_at,
            "source": declared[spec.id].source if spec.id in declared else "generated",
        }  # fmt: skip
    wanted = {
        k: v
        for k, v in {"tenant": f.tenant, "host": f.host, "kind": f.kind, "status": f.status}.items()
        if v is not None
    }
    return [r for _, r in sorted(rows.items()) if all(r[k] == v for k, v in wanted.items())]


@pytest.fixture
def listening() -> Iterator[int]:
    """A real TCP listener: checks of it pass."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_page_equals_whole_list(
    db_url: str, listening: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(database_url=db_url, run_monitors=False, run_scheduler=False)
    ctx = build_context(settings)
    dead = closed_port()
    old = datetime.now(UTC) - timedelta(days=1)
    # Per tenant, 8 monitors m0..m7; i % 4: 0 = declared only, 1 = record only (generated),
    # 2 = record + declaration, 3 = engine only; even i (not 0 mod 4) also in the engine, with
    # the record's status different from the engine's.
    specs: list[MonitorSpec] = []
    engine = MonitorEngine(lambda change: None, jitter=False)
    try:
        with session_scope(ctx.factory) as s:
            for t in TENANTS:
                for i in range(8):
                    mid, kind = f"{t}/m{i}", ("tcp", "http")[i % 2]
                    host = ("h1", "h2")[i % 3 == 0]
                    target = f"tcp://127.0.0.1:{listening if i % 3 else dead}"
                    if i % 4 in (0, 2):
                        s.add(DeclaredMonitor(
                            id=mid, name=f"m{i}", tenant=t, host=host, kind=kind,
                            target=target, source=("api", "fleet")[i % 2], options={},
                        ))  # fmt: skip
                    if i % 4 in (1, 2):
                        s.add(MonitorRecord(
                            id=mid, name=f"{t}-m{i}", tenant=t, host=host, kind=kind,
                            target=target, status=int(MonitorStatus.DOWN), reason="stored",
                            changed_at=old,
                        ))  # fmt: skip
                    if i % 4 == 3 or (i % 2 == 0 and i % 4):
                        specs.append(MonitorSpec(
                            id=mid, name=f"{t}-m{i}", tenant=t, host=host, kind="tcp",
                            target=target, interval_s=3600.0, timeout_s=2.0,
                            failure_threshold=1, recovery_threshold=1,
                        ))  # fmt: skip
        engine.start()
        engine.set_monitors(specs)
        engine.set_maintenance([specs[0].id, specs[5].id], "window w1")
        deadline = time.monotonic() + 60
        while any(v.probe_count == 0 for v in engine.snapshot()):  # every first check done
            assert time.monotonic() < deadline, "the engine did not check every monitor"
            time.sleep(0.05)
        statuses = {v.status for v in engine.snapshot()}
        assert {MonitorStatus.UP, MonitorStatus.DOWN, MonitorStatus.MAINTENANCE} <= statuses

        filter_sets = [
            Filters(),
            Filters(tenant="acme"),
            Filters(tenant="é", kind="tcp"),
            Filters(host="h2"),
            Filters(kind="http"),
            Filters(status="pending"),
            Filters(status="down"),
            Filters(status="up", host="h1"),
            Filters(status="maintenance"),
            Filters(status="bogus"),
            Filters(tenant="nobody"),
        ]
        pages = [(None, 0), (None, 5), (0, 0), (1, 0), (3, 2), (7, 7), (100, 0), (5, 1000)]
        with session_scope(ctx.factory) as s:
            for chunk in (200, 1):  # 1: the SQL ids come in many keyset chunks
                monkeypatch.setattr(monitor_listing, "FIRST_CHUNK_MIN", chunk)
                monkeypatch.setattr(monitor_listing, "WHOLE_CHUNK", chunk)
                for eng in (engine, None):
                    for f in filter_sets:
                        full = whole_list(s, eng, f)
                        for limit, offset in pages:
                            want = full[offset : None if limit is None else offset + limit]
                            got = list_rows(s, eng, f, limit, offset)
                            assert got == want, (chunk, eng is not None, f, limit, offset)
                # the order is code point order, not the database's collation
                ids = [r["id"] for r in list_rows(s, engine, Filters(), None, 0)]
                assert ids == sorted(ids) and ids[0].startswith("Zeta/")
                assert len(ids) == len(TENANTS) * 8
    finally:
        engine.stop()
        ctx.close()


def test_merge_page_reads_only_what_the_page_needs() -> None:
    live = ["a", "c", "e", "g"]
    pulled: list[str] = []

    def stored() -> Iterator[str]:
        for i in ["b", "c", "d", "f", "h", "i", "j"]:
            pulled.append(i)
            yield i

    # "c" is the engine's (in live_all) and comes once; "x" is an engine id the filters refused
    assert merge_page(live, stored(), {"a", "c", "e", "g", "x"}, 1, 3) == ["b", "c", "d"]
    assert pulled == ["b", "c", "d"]  # not the rest of the table
    assert merge_page(live, iter(["x", "z"]), {"x"}, 0, None) == ["a", "c", "e", "g", "z"]
    assert merge_page(live, iter([]), set(), 10, 5) == []
    assert merge_page(live, iter([]), set(), 0, 0) == []
