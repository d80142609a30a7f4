"""API tokens (admin): create (the token is shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from orchestrator.api.auth import AdminDep
from orchestrator.api.deps import SessionDep
from orchestrator.api.schemas import TokenCreated, TokenIn, TokenOut
from orchestrator.auth.tokens import (
    Role,
    create_token,
    is_active,
    list_tokens,
    parse_duration,
    revoke_token,
)
from orchestrator.db.models import ApiToken, utcnow
from orchestrator.errors import NotFoundError

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


def token_out(row: ApiToken) -> TokenOut:
    return TokenOut.model_validate(row).model_copy(update={"active": is_active(row)})


@router.get("", response_model=list[TokenOut], summary="API tokens (never the secrets)")
def get_tokens(session: SessionDep, _admin: AdminDep) -> list[TokenOut]:
    return [token_out(t) for t in list_tokens(session)]


@router.post(
    "",
    response_model=TokenCreated,
    status_code=201,
    summary="Create a token; the response is the only time it is shown",
    responses={
        400: {"description": "bad name or expiry"},
        409: {"description": "an active token has this name"},
    },
)
def post_token(body: TokenIn, session: SessionDep, admin: AdminDep) -> TokenCreated:
    expires_at = utcnow() + parse_duration(body.expires) if body.expires else None
    row, plain = create_token(
        session,
        name=body.name,
        role=Role[body.role],
        actor=admin.actor,
        expires_at=expires_at,
    )
    session.commit()
    return TokenCreated.model_validate({**token_out(row).model_dump(), "token": plain})


@router.delete(
    "/{token_id}",
    response_model=TokenOut,
    summary="Revoke a token at once (its next request is 401)",
    responses={404: {"description": "no such token"}},
)
def delete_token(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep, admin: AdminDep
) -> TokenOut:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFoundError(f"no token {token_id}")
    revoke_token(session, str(row.id), actor=admin.actor)
    session.commit()
    return token_out(row)
