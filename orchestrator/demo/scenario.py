"""What ``cpdops demo up`` adds around the stand-ins so every page has something to show: a
rollout of the demo tenants to the next version, scheduled an hour ahead, and a customer's
consultation ticket. Idempotent: a second ``demo up`` finds both and adds nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from orchestrator.context import AppContext
from orchestrator.db.models import Incident, Rollout
from orchestrator.db.session import session_scope
from orchestrator.fleet.images import build_standin
from orchestrator.fleet.runtime import DockerHost
from orchestrator.incidents.tickets import create_ticket
from rollouts.executor import RUNNABLE
from rollouts.spec import RolloutRequest

AUTHOR = "demo"
TICKET_SUBJECT = "Как настроить переадресацию звонков на мобильный? / How do I forward calls?"


def next_version(version: str) -> str:
    """``"1"`` → ``"2"``; a version that is not a number gets ``-next``."""
    return str(int(version) + 1) if version.isdigit() else f"{version}-next"


def demo_scenario(
    ctx: AppContext, host: DockerHost, slugs: list[str], version: str
) -> dict[str, object]:
    """Schedule the rollout and open the ticket unless they exist; returns what is there."""
    from orchestrator.scheduler import first_start, store_schedule

    image = build_standin(host.client, next_version(version))
    with ctx.factory() as s:
        existing = s.scalars(
            select(Rollout).where(Rollout.image == image, Rollout.status.in_((*RUNNABLE, "paused")))
        ).first()
        rollout_id = existing.id if existing is not None else None
    if rollout_id is None:
        request = RolloutRequest.model_validate(
            {
                "image": image,
                "tenants": slugs,
                "gate": {
                    "passes": ctx.settings.gate_passes,
                    "deadline_s": ctx.settings.gate_deadline_s,
                    "interval_s": ctx.settings.gate_interval_s,
                },
                "schedule": {"at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
            }
        )
        rollout_id = ctx.executor.create(request, actor=AUTHOR, claim=False)
        store_schedule(ctx, rollout_id, first_start(ctx, rollout_id))
    with session_scope(ctx.factory) as s:
        ticket = s.scalars(
            select(Incident).where(
                Incident.subject == TICKET_SUBJECT, Incident.type == "consultation"
            )
        ).first()
        if ticket is None:
            ticket = create_ticket(
                s,
                system_id=ctx.settings.system_id,
                type="consultation",
                subject=TICKET_SUBJECT,
                description=(
                    "Добрый день! Хотим, чтобы звонки на 204 уходили на мобильный после 18:00. "
                    "/ Calls to extension 204 should go to a mobile after 6 pm."
                ),
                author=AUTHOR,
                source="portal",
                tenant=slugs[0] if slugs else None,
            )
            s.flush()
        number = ticket.number
    return {"scheduled_rollout": rollout_id, "ticket": number}
