"""``cpdops rollout plan|start|status|ls|pause|resume|approve|abort|rollback``.

With a URL configured every command goes through ``/api/v1/rollouts`` (the server runs the
rollout; ``start`` and ``status --watch`` follow it by polling); otherwise they work on the
database and the Docker hosts directly (``start`` runs the rollout in this process).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
from pydantic import ValidationError
from sqlalchemy import select

from orchestrator.auth.audit import cli_actor
from orchestrator.cli_common import (
    _api,
    _csv,
    _dump,
    _opened,
    _table,
    _validation_message,
    json_option,
)
from orchestrator.client import ApiClient
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
        click.option("--budget", help="failed instances tolerated: N or N% (default 0)"),
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


def request_body(kw: dict[str, Any]) -> dict[str, Any]:
    """The ``RolloutRequest`` body (``POST /api/v1/rollouts``) of the options given."""
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
    gate = {
        field: kw[key]
        for key, field in (("passes", "passes"), ("deadline", "deadline_s"))
        if kw.get(key) is not None
    }
    body: dict[str, Any] = {
        "image": kw["image"],
        "tenants": _csv(kw.get("tenants")),
        "hosts": _csv(kw.get("hosts_")),
        "rings": _csv(kw.get("rings")),
        "labels": _labels(kw.get("labels") or ()),
        "gate": gate,
        "strategy": strategy,
        "backup": not kw.get("no_backup"),
        "migrate": kw["migrate"].split() if kw.get("migrate") else None,
        "schedule": {"at": at.isoformat() if at else None, "window": bool(kw.get("window"))},
    }
    return body


def build_request(ctx: AppContext, kw: dict[str, Any]) -> RolloutRequest:
    """The request validated here, the gate's unset fields from this process's settings."""
    body = request_body(kw)
    body["gate"] = {
        "passes": ctx.settings.gate_passes,
        "deadline_s": ctx.settings.gate_deadline_s,
        "interval_s": ctx.settings.gate_interval_s,
        **body["gate"],
    }
    try:
        return RolloutRequest.model_validate(body)
    except ValidationError as exc:
        raise InputError(_validation_message(exc)) from exc


@rollout.command("plan")
@request_options
@json_option
def rollout_plan(as_json: bool, **kw: Any) -> None:
    """Dry run: print the waves the rollout would take. Nothing is touched."""
    client = _api()
    if client is not None:
        data = client.post(client.path("rollouts", "plan"), request_body(kw))
        if as_json:
            _dump(data)
            return
        _print_plan(data, kw)
        return
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
    _print_plan(
        {"image": request.image, "target_version": version, "waves": waves},
        {"parallelism": request.strategy.parallelism, "approve": request.strategy.approve_after},
    )


def _print_plan(data: dict[str, Any], kw: dict[str, Any]) -> None:
    waves: list[list[dict[str, Any]]] = data["waves"]
    approve = kw.get("approve")
    if approve is None:
        approve = [int(x) for x in _csv(kw.get("approve_after")) or []]
    click.echo(
        f"image {data['image']} (version {data['target_version'] or '?'}), "
        f"{sum(len(w) for w in waves)} instance(s), {len(waves)} wave(s), "
        f"parallelism {kw.get('parallelism') or 1}"
    )
    for n, wave in enumerate(waves, 1):
        gate = " then wait for approve" if n in approve else ""
        click.echo(f"wave {n}: {len(wave)} instance(s){gate}")
        for p in wave:
            version = p.get("from", p.get("version"))
            click.echo(f"  {p['tenant']}@{p['host']}  {p['container']}  from {version}")


@rollout.command("start")
@request_options
@click.option("--detach", is_flag=True, help="only create it; a running `cpdops serve` runs it")
@json_option
def rollout_start(as_json: bool, detach: bool, **kw: Any) -> None:
    """Create a rollout and run it here with a progress display. Exit 1 if it fails.

    With --at or --window it is scheduled instead (a running `cpdops serve` starts it).
    """
    client = _api()
    if client is not None:
        _start_through_api(client, request_body(kw), detach=detach, as_json=as_json)
        return
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
            show = _progress_printer()
            ctx.executor.on_progress = lambda rid: show(rollout_dict(ctx, rid))
        with _interrupted(rollout_id, at_server=False):
            status = ctx.executor.run(rollout_id)
        data = rollout_dict(ctx, rollout_id)
    _emit(data, as_json)
    if status != "succeeded":
        sys.exit(1)


def _start_through_api(
    client: ApiClient, body: dict[str, Any], *, detach: bool, as_json: bool
) -> None:
    """Create it at the server, which runs it; follow it to its end unless detached."""
    data = client.post(client.path("rollouts"), body)
    rollout_id = data["id"]
    if body["schedule"]["at"] or body["schedule"]["window"]:
        when = data.get("scheduled_for") or "its tenants' maintenance windows"
        _emit(data, as_json, f"rollout {rollout_id} scheduled for {when}")
        return
    if detach:
        _emit(data, as_json, f"rollout {rollout_id} created")
        return
    if not as_json:
        click.echo(f"rollout {rollout_id} created at {client.endpoint.url}", err=True)
    show = _progress_printer()
    with _interrupted(rollout_id, at_server=True):
        data = _follow(
            lambda: client.get(client.path("rollouts", rollout_id)),
            interval=1.0,
            on_change=(lambda d: None) if as_json else show,
        )
    _emit(data, as_json)
    if data["status"] != "succeeded":
        sys.exit(1)


@contextmanager
def _interrupted(rollout_id: int, *, at_server: bool) -> Iterator[None]:
    """Ctrl-C while following a rollout stops the following, not the rollout: say so, and
    how to watch or stop it (exit 130, as a shell reports SIGINT)."""
    try:
        yield
    except KeyboardInterrupt:
        if at_server:
            where = f"rollout {rollout_id} is still running at the server"
        else:  # its lease lapses: `cpdops serve` takes it over, or `resume` goes on here
            where = (
                f"rollout {rollout_id} is still running: this process stopped running it, a "
                f"running `cpdops serve` takes it over (else `cpdops rollout resume "
                f"{rollout_id}` goes on here)"
            )
        click.echo(
            f"\ninterrupted: {where}.\n"
            f"  watch it: cpdops rollout status {rollout_id} --watch\n"
            f"  stop it:  cpdops rollout abort {rollout_id}  "
            f"(or pause / rollback {rollout_id})",
            err=True,
        )
        sys.exit(130)


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
    """Show a rollout: waves, instances and their steps. Exit 1 if it failed or rolled back.

    --watch follows it until it ends: on a terminal a table redrawn on each change; else a
    line per change (on stderr) and the final table; with --json one JSON object per line
    on each change, the last one the final state.
    """
    client = _api()
    with _opened() if client is None else _no_context() as ctx:

        def fetch() -> dict[str, Any]:
            if client is not None:
                data: dict[str, Any] = client.get(client.path("rollouts", rollout_id))
                return data
            assert ctx is not None
            return rollout_dict(ctx, rollout_id)

        if not watch:
            data = fetch()
            _emit(data, as_json)
        elif as_json:
            data = _follow(
                fetch,
                interval,
                lambda d: click.echo(json.dumps(d, default=str, ensure_ascii=False)),
            )
        elif sys.stdout.isatty():
            data = _follow(fetch, interval, _redraw)
        else:
            data = _follow(fetch, interval, _progress_printer())
            print_rollout(data)
    if data["status"] in ("failed", "rolled_back"):
        sys.exit(1)


@contextmanager
def _no_context() -> Iterator[None]:
    yield None


def _redraw(data: dict[str, Any]) -> None:
    click.clear()
    print_rollout(data)


def _changes(data: dict[str, Any]) -> tuple[Any, ...]:
    """What the progress display shows; a new value is a change worth showing."""
    return (
        data["status"],
        data.get("control"),
        (data.get("progress") or {}).get("reason"),
        data.get("incident"),
        tuple(
            (
                i["state"],
                i["steps"][-1]["step"] if i["steps"] else None,
                i["error"],
                gate_progress(i),
            )
            for i in data["instances"]
        ),
    )


def gate_progress(instance: dict[str, Any]) -> str | None:
    """A running gate's progress, e.g. "gate 1/3 passes, last HTTP 500, 42 s left" (the
    gate step's ``progress`` detail); None when no gate runs."""
    last = instance["steps"][-1] if instance["steps"] else None
    if last is None or last["step"] != "gate" or last["state"] != "started":
        return None
    p = (last.get("detail") or {}).get("progress")
    if not p:
        return "gate: first check"
    return (
        f"gate {p['passes']}/{p['needed']} passes, last {p['last']}, "
        f"{float(p['left_s']):.0f} s left"
    )


def progress_counts(instances: list[dict[str, Any]]) -> tuple[int, str]:
    """(instances updated, "2/6 updated, 1 failed, 1 reverted"): only an updated instance is
    progress; failed, reverted and errors are counted apart."""
    counts: dict[str, int] = {}
    for i in instances:
        counts[i["state"]] = counts.get(i["state"], 0) + 1
    updated = counts.get(decide.UPDATED, 0)
    others = [
        f"{counts[state]} {state}"
        for state in (decide.FAILED, decide.ERROR, decide.REVERTED, decide.REVERTING)
        if counts.get(state)
    ]
    return updated, ", ".join([f"{updated}/{len(instances)} updated", *others])


def _follow(
    fetch: Callable[[], dict[str, Any]],
    interval: float,
    on_change: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Poll until the rollout is final, calling ``on_change`` with each changed state
    (the first and the final included); the final state is returned."""
    last: tuple[Any, ...] | None = None
    while True:
        data = fetch()
        seen = _changes(data)
        if seen != last:
            last = seen
            on_change(data)
        if data["status"] in decide.FINAL:
            return data
        time.sleep(interval)


@rollout.command("ls")
@click.option("--status", help="only rollouts in this status, e.g. running")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@json_option
def rollout_ls(status: str | None, limit: int, as_json: bool) -> None:
    """List rollouts, newest first."""
    client = _api()
    if client is not None:
        data = client.get(client.path("rollouts"), {"status": status, "limit": limit})
    else:
        from orchestrator.api.routes.rollouts import _incident_numbers
        from orchestrator.api.schemas import RolloutOut

        with _opened() as ctx, ctx.factory() as s:
            stmt = select(Rollout).order_by(Rollout.id.desc()).limit(limit)
            if status:
                stmt = stmt.where(Rollout.status == status)
            rows = list(s.scalars(stmt))
            numbers = _incident_numbers(s, [r.id for r in rows])
            data = [
                RolloutOut.model_validate(r)
                .model_copy(update={"incident": numbers.get(r.id)})
                .model_dump(mode="json")
                for r in rows
            ]
    if as_json:
        _dump(data)
        return
    _table(
        [
            (
                r["id"],
                r["image"],
                r["status"],
                r["created_by"],
                r["created_at"],
                r["finished_at"],
                r["incident"],
                r["error"],
            )
            for r in data
        ],
        ["id", "image", "status", "by", "created", "finished", "incident", "error"],
        empty="no rollouts",
    )


def _control(action: str) -> Callable[..., None]:
    @click.argument("rollout_id", type=int)
    @click.option(
        "--wait/--no-wait",
        default=True,
        help="direct mode: run it here to its end if no process runs it",
    )
    @json_option
    def command(rollout_id: int, wait: bool, as_json: bool) -> None:
        client = _api()
        if client is not None:  # the server applies it (and runs the rollout if nobody does)
            data = client.post(client.path("rollouts", rollout_id, action))
            _emit(data, as_json, f"{action} requested for rollout {rollout_id}")
            return
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
                    show = _progress_printer()
                    ctx.executor.on_progress = lambda rid: show(rollout_dict(ctx, rid))
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
    updated, counts = progress_counts(insts)
    width = 30
    filled = width * updated // max(1, len(insts))
    click.echo(f"  [{'#' * filled}{'.' * (width - filled)}] {counts}")
    _table(
        [
            (
                i["wave"] + 1,
                i["tenant"],
                i["host"],
                i["container_name"],
                i["old_version"],
                i["state"],
                gate_progress(i) or (i["steps"][-1]["step"] if i["steps"] else "-"),
                i["error"],
            )
            for i in insts
        ],
        ["wave", "tenant", "host", "container", "from", "state", "step", "error"],
        empty="no instances",
    )


def _progress_printer() -> Callable[[dict[str, Any]], None]:
    """Prints (on stderr) what changed since the last call: the status, each instance's state."""
    seen: dict[tuple[str, str], tuple[str, str | None]] = {}
    shown_at: dict[tuple[str, str], float] = {}
    last_status: list[str] = [""]

    def show(data: dict[str, Any]) -> None:
        rollout_id = data["id"]
        total = len(data["instances"])
        updated, _ = progress_counts(data["instances"])
        if data["status"] != last_status[0]:
            last_status[0] = data["status"]
            reason = (data.get("progress") or {}).get("reason") or ""
            click.echo(f"rollout {rollout_id}: {data['status']} {reason}".rstrip(), err=True)
        for i in data["instances"]:
            key = (i["tenant"], i["host"])
            gate = gate_progress(i)
            # a gate's line again when its passes or last answer change, or every 5 s
            what = (i["state"], gate.rsplit(", ", 1)[0] if gate else None)
            now = time.monotonic()
            if seen.get(key, ("pending", None)) != what or (
                gate and now - shown_at.get(key, now) >= 5.0
            ):
                seen[key], shown_at[key] = what, now
                click.echo(
                    f"[{updated}/{total}] wave {i['wave'] + 1} {i['tenant']}@{i['host']}: "
                    f"{i['state']}"
                    + (f": {gate}" if gate else "")
                    + (f" ({i['error']})" if i["error"] else ""),
                    err=True,
                )

    return show
