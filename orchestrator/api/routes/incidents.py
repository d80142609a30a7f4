"""Incidents: list and show with the timeline."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from orchestrator.api.deps import SessionDep
from orchestrator.api.schemas import IncidentDetail, IncidentOut
from orchestrator.db.models import Incident
from orchestrator.errors import NotFoundError
from orchestrator.incidents.tickets import STATUS_LABELS

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"])


def to_out(incident: Incident) -> IncidentOut:
    return IncidentOut.model_validate(
        {
            **{k: getattr(incident, k) for k in IncidentOut.model_fields if k != "status_label"},
            "status_label": STATUS_LABELS[incident.status]["ru"],
        }
    )


@router.get("", response_model=list[IncidentOut], summary="Tickets, newest first")
def list_incidents(
    session: SessionDep,
    type: str | None = Query(default=None, description="incident, mass_incident, …"),
    status: str | None = Query(default=None, description="new, open, …"),
    tenant: str | None = Query(default=None),
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[IncidentOut]:
    stmt = select(Incident).order_by(Incident.id.desc()).limit(limit)
    if type:
        stmt = stmt.where(Incident.type == type)
    if status:
        stmt = stmt.where(Incident.status == status)
    if tenant:
        stmt = stmt.where(Incident.tenant == tenant)
    return [to_out(i) for i in session.scalars(stmt)]


@router.get("/{number}", response_model=IncidentDetail, summary="A ticket with its timeline")
def get_incident(number: str, session: SessionDep) -> IncidentDetail:
    incident = session.scalars(
        select(Incident).where(Incident.number == number).options(selectinload(Incident.events))
    ).first()
    if incident is None:
        raise NotFoundError(f"no incident with number {number}")
    base = to_out(incident).model_dump()
    return IncidentDetail.model_validate({**base, "events": incident.events})
