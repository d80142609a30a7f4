"""``cpdops monitors ls|history|changes|uptime|declare|delete|postgres``.

``ls``, ``history``, ``changes`` and ``uptime`` work through the API when a URL is configured,
else on the database (the last recorded state). ``declare``, ``delete`` and ``postgres`` need
the API: a declared monitor is applied to the running engine at once, and PostgreSQL details
live in it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy import select

from orchestrator.cli_common import (
    _api,
    _check_filters,
    _dump,
    _need_api,
    _opened,
    _table,
    json_option,
)
from orchestrator.errors import InputError, NotFoundError

WINDOWS = ("1h", "24h", "7d", "30d")


@click.group()
def monitors() -> None:
    """Monitors: state, uptime, history; declared monitors."""


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


@monitors.command("ls")
@click.option("--tenant", help="only this tenant's monitors")
@json_option
def monitors_ls(tenant: str | None, as_json: bool) -> None:
    """List monitors: state, reason, uptime (maintenance excluded)."""
    client = _api()
    data = (
        client.get(client.path("monitors"), {"tenant": tenant})
        if client is not None
        else _recorded_monitors(tenant)
    )
    if not data:
        _check_filters(client, tenant=tenant)
    if as_json:
        _dump(data)
        return
    _table(
        [
            (
                d["id"],
                d["source"],
                d["status"],
                _pct(d["uptime"].get("1h")),
                _pct(d["uptime"].get("24h")),
                _pct(d["uptime"].get("7d")),
                d["reason"][:50],
                d["changed_at"],
            )
            for d in data
        ],
        ["monitor", "source", "status", "1h", "24h", "7d", "reason", "changed"],
        empty="no monitors",
    )


def _recorded_monitors(tenant: str | None) -> list[dict[str, Any]]:
    """The last recorded state of every monitor in the database (no live engine here)."""
    from monitors.state import MonitorStatus
    from orchestrator.db.models import DeclaredMonitor, MonitorRecord
    from orchestrator.monitor_history import uptimes

    with _opened() as ctx, ctx.factory() as s:
        stmt = select(MonitorRecord).order_by(MonitorRecord.id)
        decl = select(DeclaredMonitor)
        if tenant:
            stmt = stmt.where(MonitorRecord.tenant == tenant)
            decl = decl.where(DeclaredMonitor.tenant == tenant)
        rows = list(s.scalars(stmt))
        declared = {d.id: d for d in s.scalars(decl)}
        # a declared monitor not checked yet has no recorded state: it is pending
        ids = sorted({m.id for m in rows} | set(declared))
        up = uptimes(s, ids)
    recorded = {m.id: m for m in rows}
    data: list[dict[str, Any]] = []
    for monitor_id in ids:
        m, d = recorded.get(monitor_id), declared.get(monitor_id)
        data.append(
            {
                "id": monitor_id,
                "tenant": m.tenant if m else d.tenant if d else "",
                "host": m.host if m else d.host if d else "",
                "kind": m.kind if m else d.kind if d else "",
                "source": d.source if d else "generated",
                "status": MonitorStatus(m.status if m else MonitorStatus.PENDING).name.lower(),
                "reason": m.reason if m else "not checked yet",
                "changed_at": m.changed_at if m else None,
                "uptime": up[monitor_id],
            }
        )
    return data


@monitors.command("history")
@click.argument("monitor_id")
@click.option("--window", type=click.Choice(WINDOWS), default="24h", show_default=True)
@json_option
def monitors_history(monitor_id: str, window: str, as_json: bool) -> None:
    """A monitor's history: per-minute points (per-hour beyond 24h) and its uptime."""
    client = _api()
    if client is not None:
        data = client.get(client.path("monitors", monitor_id, "history"), {"window": window})
    else:
        from orchestrator.db.models import DeclaredMonitor, MonitorRecord
        from orchestrator.monitor_history import history

        with _opened() as ctx, ctx.factory() as s:
            if (
                s.get(MonitorRecord, monitor_id) is None
                and s.get(DeclaredMonitor, monitor_id) is None
            ):
                raise NotFoundError(f"no monitor {monitor_id!r}")
            points = [p.__dict__ for p in history(s, monitor_id, window)]
        checks = sum(p["checks"] for p in points)
        failures = sum(p["failures"] for p in points)
        data = {
            "monitor": monitor_id,
            "window": window,
            "uptime": None if checks == 0 else (checks - failures) / checks,
            "points": points,
        }
    if as_json:
        _dump(data)
        return
    click.echo(f"monitor {data['monitor']}: uptime {_pct(data['uptime'])} over {data['window']}")
    _table(
        [
            (
                datetime.fromtimestamp(p["start"], UTC),
                p["checks"],
                p["failures"],
                p["maintenance"],
                "-" if p["avg_latency_s"] is None else f"{1000 * p['avg_latency_s']:.1f}",
                "-" if p["max_latency_s"] is None else f"{1000 * p['max_latency_s']:.1f}",
            )
            for p in data["points"]
        ],
        ["start (UTC)", "checks", "failures", "maintenance", "avg ms", "max ms"],
        empty="no checks in this window",
    )


def _iso(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InputError(
            f"{option} {value!r}: not an ISO 8601 date-time, e.g. 2026-12-01T10:00:00Z"
        ) from exc
    return value


@monitors.command("changes")
@click.argument("monitor_id")
@click.option("--since", help="at or after this time (ISO 8601, UTC when no zone)")
@click.option("--until", help="before this time (ISO 8601)")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@json_option
def monitors_changes(
    monitor_id: str,
    since: str | None,
    until: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """A monitor's status changes, newest first (GET /api/v1/monitors/ID/changes)."""
    since, until = _iso(since, "--since"), _iso(until, "--until")
    client = _api()
    if client is not None:
        params = {"since": since, "until": until, "limit": limit, "offset": offset}
        data = client.get(client.path("monitors", monitor_id, "changes"), params)
    else:
        data = _recorded_changes(monitor_id, since, until, limit, offset)
    if as_json:
        _dump(data)
        return
    _table(
        [(d["at"], d["old"], d["new"], d["written_at"], d["reason"][:60]) for d in data],
        ["at", "old", "new", "written", "reason"],
        empty="no status changes",
    )


def _recorded_changes(
    monitor_id: str, since: str | None, until: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    """The changes on the database (no API configured), as the API gives them."""
    from orchestrator import monitor_changes
    from orchestrator.db.models import DeclaredMonitor, MonitorRecord

    def parsed(value: str | None) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))

    with _opened() as ctx, ctx.factory() as s:
        rows = monitor_changes.query(
            s, monitor_id, since=parsed(since), until=parsed(until), limit=limit, offset=offset
        )
        if (
            not rows
            and s.get(MonitorRecord, monitor_id) is None
            and s.get(DeclaredMonitor, monitor_id) is None
            and not monitor_changes.exists(s, monitor_id)
        ):
            raise NotFoundError(f"no monitor {monitor_id!r}")
    out = []
    for r in rows:
        d = monitor_changes.as_dict(r)
        out.append({**d, "at": r.at.isoformat(), "written_at": r.written_at.isoformat()})
    return out


@monitors.command("uptime")
@click.argument("tenant")
@json_option
def monitors_uptime(tenant: str, as_json: bool) -> None:
    """A tenant's uptime over all its monitors (maintenance excluded)."""
    client = _api()
    if client is not None:
        data = client.get(client.path("tenants", tenant, "uptime"))
    else:
        from orchestrator.db.models import MonitorRecord
        from orchestrator.monitor_history import combined_uptime

        with _opened() as ctx, ctx.factory() as s:
            ids = list(s.scalars(select(MonitorRecord.id).where(MonitorRecord.tenant == tenant)))
            if not ids:
                raise NotFoundError(f"no monitors for tenant {tenant!r}")
            up = {w: combined_uptime(s, ids, w) for w in WINDOWS}
        data = {"tenant": tenant, "monitors": ids, "uptime": up}
    if as_json:
        _dump(data)
        return
    click.echo(f"tenant {data['tenant']}: {len(data['monitors'])} monitor(s)")
    _table([[_pct(data["uptime"].get(w)) for w in WINDOWS]], list(WINDOWS), empty="no uptime")


def _option(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in values:
        key, sep, raw = v.partition("=")
        if not sep or not key:
            raise InputError(f"--option {v!r}: expected KEY=VALUE (VALUE: JSON or text)")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


DECLARE_ELSEWHERE = "or declare it in the fleet file (monitors.declared) and `cpdops apply`"


@monitors.command("declare")
@click.option("--tenant", required=True, help="slug of a tenant in the registry")
@click.option("--name", required=True, help="unique within the tenant; the id is TENANT/NAME")
@click.option("--kind", required=True, help="http, tcp, sip, postgres or container")
@click.option("--target", required=True, help="URL, host:port, SIP URI, DSN, container, …")
@click.option("--host", help="the Docker host the target belongs to")
@click.option("--interval", help="seconds or a duration such as 30s")
@click.option("--timeout", help="seconds or a duration such as 5s")
@click.option("--failure-threshold", type=int)
@click.option("--recovery-threshold", type=int)
@click.option("--expect-status", help="http: comma-separated status codes that pass")
@click.option(
    "--option", "options", multiple=True, help="KEY=VALUE of the kind's options (JSON values)"
)
@json_option
def monitors_declare(as_json: bool, options: tuple[str, ...], **kw: Any) -> None:
    """Declare a monitor (admin; POST /api/v1/monitors), probed at once by `cpdops serve`."""
    client = _need_api("monitors declare", DECLARE_ELSEWHERE)
    body: dict[str, Any] = {k: v for k, v in kw.items() if v is not None and k != "expect_status"}
    if kw.get("expect_status"):
        try:
            body["expect_status"] = [int(x) for x in kw["expect_status"].split(",")]
        except ValueError as exc:
            raise InputError("--expect-status takes status codes, e.g. 200,204") from exc
    if options:
        body["options"] = _option(options)
    data = client.post(client.path("monitors"), body)
    if as_json:
        _dump(data)
        return
    click.echo(f"declared monitor {data['id']} ({data['kind']} {data['target']})")


@monitors.command("delete")
@click.argument("monitor_id")
@json_option
def monitors_delete(monitor_id: str, as_json: bool) -> None:
    """Delete a declared monitor with its state and history (admin)."""
    client = _need_api(
        "monitors delete", "or remove it from the fleet file and `cpdops apply --prune`"
    )
    client.delete(client.path("monitors", monitor_id))
    if as_json:
        _dump({"deleted": monitor_id})
        return
    click.echo(f"deleted monitor {monitor_id}")


@monitors.command("postgres")
@json_option
def monitors_postgres(as_json: bool) -> None:
    """PostgreSQL health from the running engine: connections, lag, wraparound, …"""
    client = _need_api("monitors postgres", "the details live in the engine of `cpdops serve`")
    data = client.get(client.path("postgres"))
    if as_json:
        _dump(data)
        return
    _table(
        [
            (
                p["monitor"],
                p["status"],
                p["target"],
                p["details"].get("connections"),
                p["details"].get("max_connections"),
                p["details"].get("replication_lag_seconds"),
                p["checked_at"],
                p["reason"][:40],
            )
            for p in data
        ],
        ["monitor", "status", "target", "conns", "max", "lag s", "checked", "reason"],
        empty="no postgres monitors",
    )
