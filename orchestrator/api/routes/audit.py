"""``GET /api/v1/audit``: the audit log, newest first, with filters and pagination."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from orchestrator.api.auth import AdminDep
from orchestrator.api.deps import NO_NUL, IsoTime, SessionDep
from orchestrator.api.schemas import AuditOut
from orchestrator.auth.audit import query

router = APIRouter(prefix="/api/v1", tags=["audit"])


@router.get(
    "/audit",
    response_model=list[AuditOut],
    summary="The audit log: who did what, when, from where, with which outcome",
    description=(
        "Every API request that may change something (not GET/HEAD/OPTIONS) and every "
        "refused request (401/403) is an `http` entry with the method, route, path, status, "
        "client address and token; the actions themselves (`rollout.create`, `token.create`, "
        "`fleet.apply`, …, also those of the CLI) are entries too. Bodies, query strings and "
        "secrets are never stored. Newest first; page with `limit` and `offset`."
    ),
)
def get_audit(
    session: SessionDep,
    _admin: AdminDep,
    actor: Annotated[
        str | None,
        Query(max_length=100, pattern=NO_NUL, description="exactly, e.g. token:ci or cli:root"),
    ] = None,
    action: Annotated[
        str | None,
        Query(max_length=64, pattern=NO_NUL, description="prefix, e.g. http or rollout."),
    ] = None,
    method: Annotated[
        str | None, Query(pattern=r"^[A-Za-z]{1,8}$", description="HTTP method")
    ] = None,
    status: Annotated[int | None, Query(ge=100, le=599, description="response status")] = None,
    token_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    target: Annotated[
        str | None,
        Query(max_length=255, pattern=NO_NUL, description="prefix of the path or object"),
    ] = None,
    since: Annotated[IsoTime | None, Query(description="at or after (ISO 8601)")] = None,
    until: Annotated[IsoTime | None, Query(description="before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[AuditOut]:
    rows = query(
        session,
        actor=actor,
        action=action,
        method=method,
        status=status,
        token_id=token_id,
        target=target,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    return [AuditOut.model_validate(r) for r in rows]
