"""``cpdops rollout plan|start|status|ls|pause|resume|approve|abort|rollback``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
from pydantic import ValidationError
from sqlalchemy import select

from orchestrator.auth.audit import cli_actor
from orchestrator.cli_common import _csv, _dump, _opened, _table, _validation_message, json_option
from orchestrator.context import AppContext
from orchestrator.db.models import Rollout
from orchestrator.errors import ConflictError, InputError
from rollouts import decide
from rollouts.planner import waves_of
from rollouts.spec import RolloutRequest


@click.group()
def rollout() -> None:
    """Rollouts: move instances to a new image in waves, with health gates and rollback."""


def _labels(values: tuple[str, ...]) -> dict[str, str] | None:
    if not values:
        return None
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key:
            raise InputError(f"--label {v!r}: expected KEY=VALUE")
        out[key] = val
    return out


def request_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by ``plan`` and ``start``; they build a RolloutRequest."""
    opts = [
        click.option("--image", required=True, help="image reference, e.g. smartcpd:2.4.1"),
        click.option("--tenants", help="comma-separated tenant slugs (default: all)"),
        click.option("--hosts", "hosts_", help="comma-separated host names"),
        click.option("--rings", help="comma-separated rings"),
        click.option("--label", "labels", multiple=True, help="KEY=VALUE container label"),
        click.option("--waves", help='cumulative wave targets, e.g. "1,25%,100%"'),
        click.option("--parallelism", type=int, help="instances at once (default 1)"),
        click.option("--per-host", type=int, help="instances at once per host"),
        click.option("--max-unavailable", type=int, help="instances out of service at once"),
        click.option("--bake", type=float, help="seconds to wait after each wave"),
        click.option("--budget", help="failed instances tolerated: N or N%% (default 0)"),
        click.option(
            "--on-failure", type=click.Choice(["rollback", "pause"]), help="default rollback"
        ),
        click.option("--approve-after", help="wave numbers to wait for approve after, e.g. 1"),
        click.option("--order", type=click.Choice(["auto", "stop-first", "start-first"])),
        click.option("--passes", type=int, help="health passes required by the gate"),
        click.option("--deadline", type=float, help="seconds allowed for the gate"),
        click.option("--migrate", help="migration command, run in a one-off container first"),
        click.option("--no-backup", is_flag=True, help="skip pg_dump of tenant databases"),
        click.option("--at", "at_", help="start at this time (ISO 8601 with zone)"),
        click.option("--window", is_flag=True, help="update each tenant in its maintenance window"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def build_request(ctx: AppContext, kw: dict[str, Any]) -> RolloutRequest:
    strategy: dict[str, Any] = {}
    for key, field in (
        ("parallelism", "parallelism"),
        ("per_host", "per_host_parallelism"),
        ("max_unavailable", "max_unavailable"),
        ("bake", "bake_s"),
        ("budget", "failure_budget"),
        ("on_failure", "failure_action"),
        ("order", "order"),
    ):
        if kw.get(key) is not None:
            strategy[field] = kw[key]
    if kw.get("waves"):
        strategy["waves"] = _csv(kw["waves"])
    if kw.get("approve_after"):
        try:
            strategy["approve_after"] = [int(x) for x in _csv(kw["approve_after"]) or []]
        except ValueError as exc:
            raise InputError("--approve-after takes wave numbers, e.g. 1,2") from exc
    try:
        at = datetime.fromisoformat(kw["at_"]) if kw.get("at_") else None
    except ValueError as exc:
        raise InputError(f"--at {kw['at_']!r}: not an ISO 8601 time") from exc
    try:
        return RolloutRequest(
            image=kw["image"],
            tenants=_csv(kw.get("tenants")),
            hosts=_csv(kw.get("hosts_")),
            rings=_csv(kw.get("rings")),
            labels=_labels(kw.get("labels") or ()),
            gate={
                "passes": kw.get("passes") or ctx.settings.gate_passes,
                "deadline_s": kw.get("deadline") or ctx.settings.gate_deadline_s,
                "interval_s": ctx.settings.gate_interval_s,
            },
            strategy=strategy,
            backup=not kw.get("no_backup"),
            migrate=kw["migrate"].split() if kw.get("migrate") else None,
            schedule={"at": at, "window": bool(kw.get("window"))},
        )
    except ValidationError as exc:
        raise InputError(_validation_message(exc)) from exc


@rollout.command("plan")
@request_options
@json_option
def rollout_plan(as_json: bool, **kw: Any) -> None:
    """Dry run: print the waves the rollout would take. Nothing is touched."""
    with _opened() as ctx:
        request = build_request(ctx, kw)
        plan, version = ctx.executor.plan(request)
    waves = [
        [
            {"tenant": p.tenant, "host": p.host, "container": p.container_name, "from": p.version}
            for p in wave
        ]
        for wave in waves_of(plan)
    ]
    if as_json:
        _dump(
            {
                "image": request.image,
                "target_version": version,
                "waves": waves,
                "strategy": request.strategy.model_dump(mode="json"),
            }
        )
        return
    click.echo(
        f"image {request.image} (version {version or '?'}), {len(plan)} instance(s), "
        f"{len(waves)} wave(s), parallelism {request.strategy.parallelism}"
    )
    for n, wave in enumerate(waves, 1):
        gate = " then wait for approve" if n in request.strategy.approve_after else ""
        click.echo(f"wave {n}: {len(wave)} instance(s){gate}")
        for p in wave:
            click.echo(f"  {p['tenant']}@{p['host']}  {p['container']}  from {p['from']}")


@rollout.command("start")
@request_options
@click.option("--detach", is_flag=True, help="only create it; a running `cpdops serve` runs it")
@json_option
def rollout_start(as_json: bool, detach: bool, **kw: Any) -> None:
    """Create a rollout and run it here with a progress display. Exit 1 if it fails.

    With --at or --window it is scheduled instead (a running `cpdops serve` starts it).
    """
    from orchestrator.scheduler import first_start, store_schedule

    with _opened() as ctx:
        request = build_request(ctx, kw)
        scheduled = request.schedule.at is not None or request.schedule.window
        rollout_id = ctx.executor.create(
            request, actor=cli_actor(), claim=not (detach or scheduled)
        )
        if scheduled:
            at = first_start(ctx, rollout_id)
            store_schedule(ctx, rollout_id, at)
            data = rollout_dict(ctx, rollout_id)
            _emit(data, as_json, f"rollout {rollout_id} scheduled for {at.isoformat()}")
            return
        if detach:
            _emit(rollout_dict(ctx, rollout_id), as_json, f"rollout {rollout_id} created")
            return
        if not as_json:
            click.echo(f"rollout {rollout_id} created", err=True)
            ctx.executor.on_progress = _progress_printer(ctx)
        status = ctx.executor.run(rollout_id)
        data = rollout_dict(ctx, rollout_id)
    _emit(data, as_json)
    if status != "succeeded":
        sys.exit(1)


def _emit(data: dict[str, Any], as_json: bool, line: str | None = None) -> None:
    if as_json:
        _dump(data)
        return
    if line:
        click.echo(line)
    print_rollout(data)


@rollout.command("status")
@click.argument("rollout_id", type=int)
@click.option("--watch", is_flag=True, help="refresh until the rollout ends")
@click.option("--interval", type=float, default=1.0, show_default=True)
@json_option
def rollout_status(rollout_id: int, watch: bool, interval: float, as_json: bool) -> None:
    """Show a rollout: waves, instances and their steps. Exit 1 if it failed."""
    with _opened() as ctx:
        data = rollout_dict(ctx, rollout_id)
        while watch and data["status"] not in decide.FINAL:
            if as_json:
                click.echo(__import__("json").dumps(data, default=str))
            else:
                click.clear()
                print_rollout(data)
            time.sleep(interval)
            data = rollout_dict(ctx, rollout_id)
    _emit(data, as_json)
    if data["status"] in ("failed", "rolled_back"):
        sys.exit(1)


@rollout.command("ls")
@json_option
def rollout_ls(as_json: bool) -> None:
    """List rollouts, newest first."""
    with _opened() as ctx, ctx.factory() as s:
        rows = [
            (r.id, r.image, r.status, r.created_by, r.created_at, r.finished_at, r.error)
            for r in s.scalars(select(Rollout).order_by(Rollout.id.desc()).limit(100))
        ]
    headers = ["id", "image", "status", "by", "created", "finished", "error"]
    if as_json:
        _dump([dict(zip(headers, r, strict=True)) for r in rows])
    else:
        _table(rows, headers)


def _control(action: str) -> Callable[..., None]:
    @click.argument("rollout_id", type=int)
    @click.option(
        "--wait/--no-wait", default=True, help="run it here to its end if no process runs it"
    )
    @json_option
    def command(rollout_id: int, wait: bool, as_json: bool) -> None:
        with _opened() as ctx:
            orphaned = rollout_id in ctx.executor.resumable()
            status = rollout_dict(ctx, rollout_id)["status"]
            # `resume` of a rollout whose runner died (status still running) is a takeover.
            if not (action == "resume" and orphaned and status not in ("paused", "waiting_window")):
                ctx.executor.control(rollout_id, action, actor=cli_actor())
            orphaned = orphaned or rollout_id in ctx.executor.resumable()
            # If no process runs it, resume/rollback/abort/approve run it here.
            if action != "pause" and wait and orphaned:
                if not as_json:
                    ctx.executor.on_progress = _progress_printer(ctx)
                try:
                    ctx.executor.run(rollout_id)
                except ConflictError as exc:  # another process (cpdops serve) took it first
                    click.echo(f"note: {exc}", err=True)
            data = rollout_dict(ctx, rollout_id)
        _emit(data, as_json, f"{action} requested for rollout {rollout_id}")

    command.__doc__ = {
        "pause": "Pause: no new instance starts; those in progress finish.",
        "resume": "Resume a paused rollout (or one whose runner died: it is run here).",
        "approve": "Approve the next wave of a rollout that waits for approval.",
        "abort": "Abort: stop where it is; updated instances stay updated.",
        "rollback": "Roll back every instance this rollout updated (restart of kept containers).",
    }[action]
    return command


for _action in ("pause", "resume", "approve", "abort", "rollback"):
    rollout.command(_action)(_control(_action))


def rollout_dict(ctx: AppContext, rollout_id: int) -> dict[str, Any]:
    """The rollout as the API shows it (``GET /api/v1/rollouts/{id}``)."""
    from orchestrator.api.routes.rollouts import rollout_detail

    with ctx.factory() as s:
        return rollout_detail(s, rollout_id).model_dump(mode="json")


def print_rollout(data: dict[str, Any]) -> None:
    reason = (data.get("progress") or {}).get("reason")
    click.echo(
        f"rollout {data['id']}: {data['status']}  image {data['image']}"
        + (f"  ({reason})" if reason and data["status"] not in ("succeeded",) else "")
    )
    if data["error"]:
        click.echo(f"  error: {data['error']}")
    if data["incident"]:
        click.echo(f"  incident: {data['incident']}")
    insts = data["instances"]
    done = sum(1 for i in insts if i["state"] in (decide.UPDATED, decide.REVERTED, decide.FAILED))
    width = 30
    filled = width * done // max(1, len(insts))
    click.echo(f"  [{'#' * filled}{'.' * (width - filled)}] {done}/{len(insts)}")
    _table(
        [
            (
                i["wave"] + 1,
                i["tenant"],
                i["host"],
                i["container_name"],
                i["old_version"],
                i["state"],
                (i["steps"][-1]["step"] if i["steps"] else "-"),
                i["error"],
            )
            for i in insts
        ],
        ["wave", "tenant", "host", "container", "from", "state", "step", "error"],
    )


def _progress_printer(ctx: AppContext) -> Callable[[int], None]:
    seen: dict[tuple[str, str], str] = {}
    last_status: list[str] = [""]

    def show(rollout_id: int) -> None:
        data = rollout_dict(ctx, rollout_id)
        total = len(data["instances"])
        done = sum(
            1
            for i in data["instances"]
            if i["state"] in (decide.UPDATED, decide.REVERTED, decide.FAILED)
        )
        if data["status"] != last_status[0]:
            last_status[0] = data["status"]
            reason = (data.get("progress") or {}).get("reason") or ""
            click.echo(f"rollout {rollout_id}: {data['status']} {reason}".rstrip(), err=True)
        for i in data["instances"]:
            key = (i["tenant"], i["host"])
            if seen.get(key, "pending") != i["state"]:
                seen[key] = i["state"]
                click.echo(
                    f"[{done}/{total}] wave {i['wave'] + 1} {i['tenant']}@{i['host']}: {i['state']}"
                    + (f" ({i['error']})" if i["error"] else ""),
                    err=True,
                )

    return show
