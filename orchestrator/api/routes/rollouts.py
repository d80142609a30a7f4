"""Rollouts: create (validated, planned, queued) and inspect with per-instance steps."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from orchestrator.api.auth import OperatorDep, ViewerDep
from orchestrator.api.deps import NO_NUL, CtxDep, OffsetQuery, SessionDep
from orchestrator.api.schemas import PlannedOut, PlanOut, RolloutDetail, RolloutOut
from orchestrator.db.models import Incident, Rollout, RolloutInstance
from orchestrator.errors import NotFoundError
from orchestrator.scheduler import first_start, run_rollout_now, schedule_rollout
from rollouts.executor import accepted_controls
from rollouts.planner import waves_of
from rollouts.spec import RolloutRequest

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])
RolloutId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the rollout's id")]
# Planning asks every target host: a host that does not answer, or a Docker error, is said.
HOST_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "unknown tenant/host/image, or a rule across fields (`detail`)"},
    502: {"description": "a Docker engine answered with an error"},
    503: {"description": "a target host does not answer: `detail` names it (plan again later)"},
}


def _incident_numbers(session: Session, ids: list[int]) -> dict[int, str]:
    rows = session.execute(
        select(Incident.rollout_id, Incident.number).where(Incident.rollout_id.in_(ids))
    ).all()
    return {rid: number for rid, number in rows if rid is not None}


@router.get("", response_model=list[RolloutOut], summary="Rollouts, newest first")
def list_rollouts(
    session: SessionDep,
    _viewer: ViewerDep,
    status: str | None = Query(
        default=None, max_length=255, pattern=NO_NUL, description="filter by status"
    ),
    limit: int = Query(default=50, ge=1, le=500),
    offset: OffsetQuery = 0,
) -> list[RolloutOut]:
    stmt = select(Rollout).order_by(Rollout.id.desc()).offset(offset).limit(limit)
    if status:
        stmt = stmt.where(Rollout.status == status)
    rows = list(session.scalars(stmt))
    numbers = _incident_numbers(session, [r.id for r in rows])
    return [
        RolloutOut.model_validate(r).model_copy(update={"incident": numbers.get(r.id)})
        for r in rows
    ]


@router.post(
    "/plan",
    response_model=PlanOut,
    summary="Dry run: the waves a rollout would take",
    description="Validates like `POST /rollouts` and returns the plan. Nothing is touched.",
    responses=HOST_ERRORS,
)
def plan_rollout(body: RolloutRequest, ctx: CtxDep, _operator: OperatorDep) -> PlanOut:
    plan, version = ctx.executor.plan(body)
    return PlanOut(
        image=body.image,
        target_version=version,
        waves=[
            [
                PlannedOut(
                    tenant=p.tenant, host=p.host, container=p.container_name, version=p.version
                )
                for p in wave
            ]
            for wave in waves_of(plan)
        ],
    )


@router.post(
    "",
    response_model=RolloutDetail,
    status_code=202,
    summary="Create a rollout; start it now or schedule it",
    description=(
        "Validates the selection and the image (it must exist on every target host), refuses "
        "an instance already held by an active rollout (409), stores the plan and starts it in "
        "the background — or, with `schedule.at` / `schedule.window`, stores a persistent "
        "scheduler job (a `schedule.at` in the past is refused, 422). Poll "
        "`GET /api/v1/rollouts/{id}` for progress."
    ),
    responses={**HOST_ERRORS, 409: {"description": "overlap"}},
)
def create_rollout(
    request: Request, body: RolloutRequest, ctx: CtxDep, operator: OperatorDep
) -> RolloutDetail:
    scheduler = request.app.state.scheduler
    scheduled = body.schedule.at is not None or body.schedule.window
    # A follower replica stores the rollout unowned: the leader starts it (resume-rollouts).
    now = not scheduled and ctx.leading
    rollout_id = ctx.executor.create(body, actor=operator.actor, claim=now)
    if scheduled:
        schedule_rollout(scheduler, rollout_id, first_start(ctx, rollout_id))
    elif now:
        run_rollout_now(scheduler, ctx, rollout_id)
    with ctx.factory() as session:
        return rollout_detail(session, rollout_id)


def _control_route(action: str, summary: str, description: str) -> None:
    def control(
        rollout_id: RolloutId, request: Request, ctx: CtxDep, operator: OperatorDep
    ) -> RolloutDetail:
        ctx.executor.control(rollout_id, action, actor=operator.actor)
        if ctx.leading and rollout_id in ctx.executor.resumable():
            run_rollout_now(request.app.state.scheduler, ctx, rollout_id)
        with ctx.factory() as session:
            return rollout_detail(session, rollout_id)

    router.add_api_route(
        f"/{{rollout_id}}/{action}",
        control,
        methods=["POST"],
        response_model=RolloutDetail,
        status_code=202,
        summary=summary,
        description=description,
        responses={404: {"description": "no such rollout"}, 409: {"description": "not now"}},
        name=f"rollout_{action}",
    )


_HOST_FAULT = (
    " A rollout paused on a host fault (a Docker daemon silent past CPDOPS_HOST_WAIT_S) "
    "first reconciles the instance the fault interrupted; one paused while rolling back "
    "finishes the rollback."
)
for _action, _summary, _description in (
    ("pause", "Pause: no new instance starts; those in progress finish", ""),
    ("resume", "Resume a paused rollout", "Goes on where it paused." + _HOST_FAULT),
    (
        "approve",
        "Approve the next wave of a rollout awaiting approval",
        "Recorded at once: the answer says `running`; the runner starts the wave.",
    ),
    (
        "abort",
        "Abort: stop where it is; updated instances stay updated",
        "No new instance starts; those in progress finish." + _HOST_FAULT + " Refused (409) "
        "while the host of such an instance does not answer: abort again when it is back.",
    ),
    (
        "rollback",
        "Roll back every instance the rollout updated",
        "Refused (409) when no instance was updated: there is nothing to roll back.",
    ),
):
    _control_route(_action, _summary, _description or _summary)


@router.get(
    "/{rollout_id}",
    response_model=RolloutDetail,
    summary="A rollout with its steps",
    responses={404: {"description": "no such rollout"}},
)
def get_rollout(rollout_id: RolloutId, session: SessionDep, _viewer: ViewerDep) -> RolloutDetail:
    return rollout_detail(session, rollout_id)


def rollout_detail(session: Session, rollout_id: int) -> RolloutDetail:
    rollout = session.scalars(
        select(Rollout)
        .where(Rollout.id == rollout_id)
        .options(selectinload(Rollout.instances).selectinload(RolloutInstance.steps))
    ).first()
    if rollout is None:
        raise NotFoundError(f"no rollout {rollout_id}")
    out = RolloutDetail.model_validate(rollout)
    actions = accepted_controls(
        rollout_id, rollout.status, rollout.control, [i.state for i in rollout.instances]
    )
    return out.model_copy(
        update={
            "incident": _incident_numbers(session, [rollout_id]).get(rollout_id),
            "actions": actions,
        }
    )
