"""``cpdops token create|ls|revoke``: API tokens.

With no URL configured they work on the database directly: this is how the first admin token
is made (nobody can call the API without one), needing only ``CPDOPS_DATABASE_URL``; every
change is in the audit log with the CLI user as the actor. With a URL they go through
``/api/v1/tokens`` with an admin token (the actor is that token).
"""

from __future__ import annotations

import secrets
from typing import Any

import click

from orchestrator.auth.audit import cli_actor
from orchestrator.auth.tokens import (
    Role,
    create_token,
    is_active,
    list_tokens,
    parse_duration,
    revoke_token,
)
from orchestrator.cli_common import _api, _cell, _dump, _opened, _table, json_option
from orchestrator.client import ApiClient
from orchestrator.db.models import ApiToken, utcnow
from orchestrator.db.session import session_scope
from orchestrator.errors import InputError, NotFoundError


def _as_dict(row: ApiToken) -> dict[str, object]:
    return {
        "id": row.id,
        "key_id": row.key_id,
        "name": row.name,
        "role": row.role,
        "active": is_active(row),
        "created_at": row.created_at,
        "created_by": row.created_by,
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
        "revoked_by": row.revoked_by,
        "last_used_at": row.last_used_at,
        "last_used_from": row.last_used_from,
    }


@click.group()
def token() -> None:
    """API tokens (roles viewer, operator, admin); the token is shown once."""


@token.command("create")
@click.option("--role", required=True, type=click.Choice([r.name for r in Role]))
@click.option("--name", help="who or what uses it (default: <role>-<random>)")
@click.option("--expires", help="lifetime such as 30m, 12h, 90d or 2w (default: never)")
@json_option
def token_create(role: str, name: str | None, expires: str | None, as_json: bool) -> None:
    """Create a token and print it once (only its hash is kept)."""
    name = name or f"{role}-{secrets.token_hex(3)}"
    client = _api()
    if client is not None:
        created = client.post(
            client.path("tokens"), {"name": name, "role": role, "expires": expires}
        )
        plain = created.pop("token")
        data: dict[str, object] = created
    else:
        expires_at = utcnow() + parse_duration(expires) if expires else None
        with _opened() as ctx, session_scope(ctx.factory) as s:
            row, plain = create_token(
                s, name=name, role=Role[role], actor=cli_actor(), expires_at=expires_at
            )
            data = _as_dict(row)
    if as_json:
        _dump({**data, "token": plain})
        return
    click.echo(plain)
    click.echo(
        f"token {data['id']} {data['name']!r} role {role}"
        + (f", expires {_cell(data['expires_at'])} UTC" if data["expires_at"] else "")
        + ": shown only now; use it as Authorization: Bearer <token>",
        err=True,
    )


@token.command("ls")
@json_option
def token_ls(as_json: bool) -> None:
    """List tokens (never their secrets)."""
    client = _api()
    if client is not None:
        data = client.get(client.path("tokens"))
    else:
        with _opened() as ctx, ctx.factory() as s:
            data = [_as_dict(t) for t in list_tokens(s)]
    if as_json:
        _dump(data)
        return
    _table(
        [
            (
                d["id"],
                d["name"],
                d["role"],
                "active" if d["active"] else "revoked" if d["revoked_at"] else "expired",
                d["key_id"],
                d["created_at"],
                d["expires_at"],
                d["last_used_at"],
            )
            for d in data
        ],
        ["id", "name", "role", "state", "key id", "created", "expires", "last used"],
        empty="no tokens",
    )


@token.command("revoke")
@click.argument("ref")
@json_option
def token_revoke(ref: str, as_json: bool) -> None:
    """Revoke a token, given by id, key id or name; it is refused from its next request."""
    client = _api()
    if client is not None:
        token_id = _find(client, ref)
        data = client.delete(client.path("tokens", token_id))
    else:
        with _opened() as ctx, session_scope(ctx.factory) as s:
            data = _as_dict(revoke_token(s, ref, actor=cli_actor()))
    if as_json:
        _dump(data)
        return
    click.echo(f"revoked token {data['id']} {data['name']!r} (role {data['role']})")


def _find(client: ApiClient, ref: str) -> int:
    """A token's id by id, key id or name (as ``find_token`` on the database)."""
    ref = ref.strip()
    rows: list[dict[str, Any]] = client.get(client.path("tokens"))
    if ref.isdigit() and any(r["id"] == int(ref) for r in rows):
        return int(ref)
    for r in rows:
        if r["key_id"] == ref:
            return int(r["id"])
    named = [r for r in rows if r["name"] == ref]
    active = [r for r in named if r["active"]]
    if len(active) == 1 or len(named) == 1:
        return int((active or named)[0]["id"])
    if len(active) > 1:
        raise InputError(f"{len(active)} active tokens are named {ref!r}: give the id")
    raise NotFoundError(f"no token {ref!r} (give its id, key id or name)")
