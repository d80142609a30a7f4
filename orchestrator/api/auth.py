"""Who may call what: every route declares exactly one access rule (checked by ``create_app``).

    public        no credential (``/healthz``, ``/metrics``, the OpenAPI docs)
    shared secret the route checks its own webhook secret (``/api/v1/intake/*``)
    viewer        ``Authorization: Bearer <token>`` of role viewer or higher: reads
    operator      … operator or higher: acts (rollouts, incidents)
    admin         … admin: manages tokens, configuration (declared monitors), reads the audit

401 with ``WWW-Authenticate: Bearer`` for a missing, malformed, unknown, expired or revoked
token; 403 when the token's role is too low. The routes take the principal as ``ViewerDep``,
``OperatorDep`` or ``AdminDep`` (or ``dependencies=[PUBLIC]`` / ``[SHARED_SECRET]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from orchestrator.api.deps import get_ctx
from orchestrator.auth.tokens import Principal, Role, TokenRefused, authenticate

STATE_PRINCIPAL = "cpdops.principal"
STATE_REFUSED = "cpdops.refused"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token from `cpdops token create --role viewer|operator|admin`.",
)


def _state(request: Request) -> dict[str, Any]:
    state: dict[str, Any] = request.scope.setdefault("state", {})
    return state


def _refuse(request: Request, reason: str, *, name: str | None, token_id: int | None) -> None:
    _state(request)[STATE_REFUSED] = {"name": name, "token_id": token_id}
    error = "" if reason.startswith("missing") else ' error="invalid_token"'
    raise HTTPException(
        status_code=401, detail=reason, headers={"WWW-Authenticate": f"Bearer{error}"}
    )


def _require(role: Role) -> Callable[..., Principal]:
    def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        if credentials is None:
            _refuse(
                request,
                "missing Authorization: Bearer <token> (cpdops token create --role …)",
                name=None,
                token_id=None,
            )
            raise AssertionError("unreachable")
        ctx = get_ctx(request)
        client = request.client.host if request.client else None
        try:
            with ctx.factory() as session:
                principal = authenticate(session, credentials.credentials, client=client)
        except TokenRefused as exc:
            _refuse(request, exc.reason, name=exc.name, token_id=exc.token_id)
            raise AssertionError("unreachable") from exc
        _state(request)[STATE_PRINCIPAL] = principal
        if principal.role < role:
            raise HTTPException(
                status_code=403,
                detail=(
                    f"this needs role {role.name}; token {principal.name!r} has role "
                    f"{principal.role.name}"
                ),
            )
        return principal

    check.__name__ = f"require_{role.name}"
    return check


def public() -> None:
    """Open to anyone (health, metrics, docs)."""


def shared_secret() -> None:
    """The route checks its own shared secret (webhook intakes)."""


require_viewer = _require(Role.viewer)
require_operator = _require(Role.operator)
require_admin = _require(Role.admin)

ViewerDep = Annotated[Principal, Depends(require_viewer)]
OperatorDep = Annotated[Principal, Depends(require_operator)]
AdminDep = Annotated[Principal, Depends(require_admin)]
PUBLIC = Depends(public)
SHARED_SECRET = Depends(shared_secret)

RULES: dict[Callable[..., Any], str] = {
    public: "public",
    shared_secret: "shared secret",
    require_viewer: "viewer",
    require_operator: "operator",
    require_admin: "admin",
}
# FastAPI's own documentation routes (plain Starlette routes, no dependencies)
DOC_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def _rules(dependant: Dependant) -> Iterable[str]:
    for dep in dependant.dependencies:
        if dep.call in RULES:
            yield RULES[dep.call]
        yield from _rules(dep)


def route_rules(app: FastAPI) -> dict[tuple[str, str], str]:
    """``(method, path) → rule`` of every route of ``app``; ValueError for a route with no
    rule or several (so a route added without one cannot be served)."""
    rules: dict[tuple[str, str], str] = {}
    for route in iter_route_contexts(app.routes):
        path = route.path_format or route.path or ""  # as OpenAPI writes it: {id}, not {id:path}
        methods = sorted(route.methods or ())
        dependant: Dependant | None = getattr(route, "dependant", None)
        if dependant is None:
            if isinstance(getattr(route, "app", None), StaticFiles):
                continue  # static files (the web UI's scripts and styles): public, no data
            if path not in DOC_PATHS:
                raise ValueError(f"route {path!r} has no access rule")
            found = {"public"}
        else:
            found = set(_rules(dependant))
        if len(found) != 1:
            raise ValueError(
                f"route {','.join(methods)} {path} has {len(found) or 'no'} access rules "
                f"{sorted(found)}: give it exactly one of ViewerDep, OperatorDep, AdminDep, "
                "dependencies=[PUBLIC] or dependencies=[SHARED_SECRET] (orchestrator/api/auth.py)"
            )
        rule = found.pop()
        for method in methods:
            rules[(method, path)] = rule
    return rules


RANKED = frozenset(r.name for r in Role)
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "properties": {"detail": {"type": "string", "title": "Detail"}},
    "required": ["detail"],
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
ERROR_RESPONSES: dict[str, dict[str, Any]] = {
    "401": {
        "description": "missing, malformed, unknown, expired or revoked token "
        "(`WWW-Authenticate: Bearer`)",
        "content": _ERROR_CONTENT,
    },
    "403": {"description": "the token's role is too low", "content": _ERROR_CONTENT},
    "413": {"description": "request body too large", "content": _ERROR_CONTENT},
}
NOTES = {
    "public": "Access: public (no token).",
    "shared secret": "Access: the intake's shared secret (not an API token).",
}


def secure(app: FastAPI) -> dict[tuple[str, str], str]:
    """Check every route's rule (``route_rules``) and name it in the OpenAPI document: each
    operation's description ends with its access and carries ``x-cpdops-access``."""
    rules = route_rules(app)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                rule = rules.get((method.upper(), path))
                if rule is None or not isinstance(operation, dict):
                    continue
                note = NOTES.get(
                    rule, f"Access: role **{rule}** or higher (`Authorization: Bearer <token>`)."
                )
                operation["description"] = f"{operation.get('description', '')}\n\n{note}".strip()
                operation["x-cpdops-access"] = rule
                responses = operation.setdefault("responses", {})
                if rule in RANKED:
                    responses.setdefault("401", ERROR_RESPONSES["401"])
                    responses.setdefault("403", ERROR_RESPONSES["403"])
                if "requestBody" in operation:
                    responses.setdefault("413", ERROR_RESPONSES["413"])
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return rules
