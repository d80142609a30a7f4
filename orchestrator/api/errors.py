"""Maps cpdops errors to JSON ``{"detail": …}`` responses."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.db.outage import RETRY_AFTER_S, database_unavailable, describe
from orchestrator.errors import (
    ConflictError,
    CpdopsError,
    DockerError,
    HostUnreachable,
    InputError,
    NotFoundError,
    TooLarge,
)

log = logging.getLogger(__name__)


def status_for(exc: CpdopsError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, TooLarge):
        return 413
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, HostUnreachable):
        return 503
    if isinstance(exc, DockerError):
        return 502
    return 500


def _allowed_methods(request: Request) -> list[str]:
    """Methods of the routes matching the path, the most specific first: fewest parameters,
    then most literal characters (``/rollouts/plan`` over ``/rollouts/{rollout_id}``)."""
    by_specificity: dict[tuple[int, int], set[str]] = {}
    for route in iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        template = route.path_format or ""
        if regex is None or not regex.match(request.url.path):
            continue
        key = (-template.count("{"), len(re.sub(r"\{[^}]*\}", "", template)))
        by_specificity.setdefault(key, set()).update(route.methods or ())
    return sorted(by_specificity[max(by_specificity)]) if by_specificity else []


def method_not_allowed(allowed: list[str]) -> JSONResponse:
    return JSONResponse(
        {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(allowed)}
    )


def _undeclared_method(request: Request) -> JSONResponse | None:
    """405 when the path's most specific routes do not declare the request's method.

    Starlette takes the first route whose pattern and method match: ``GET /rollouts/plan``
    reaches ``GET /rollouts/{rollout_id}`` and fails there as a bad id (422), though the path
    ``/rollouts/plan`` exists and takes only POST (the answer OpenAPI says: 405)."""
    allowed = _allowed_methods(request)
    if allowed and request.method not in allowed:
        return method_not_allowed(allowed)
    return None


def install(app: FastAPI) -> None:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CpdopsError)
        # Some errors carry fields for machines besides the message (e.g. a refused transition:
        # ``current`` and ``allowed``); ``detail`` stays the human-readable sentence.
        extra: dict[str, object] = getattr(exc, "fields", {})
        return JSONResponse({**extra, "detail": str(exc)}, status_code=status_for(exc))

    async def invalid(request: Request, exc: Exception) -> Response:
        # Like FastAPI's own 422, but without echoing the rejected input (it may be a secret).
        assert isinstance(exc, RequestValidationError)
        refused = _undeclared_method(request)
        if refused is not None:
            return refused
        detail = [
            {k: v for k, v in err.items() if k in ("type", "loc", "msg")} for err in exc.errors()
        ]
        return JSONResponse({"detail": jsonable_encoder(detail)}, status_code=422)

    async def http_error(request: Request, exc: Exception) -> Response:
        # A 405 names in Allow the methods of the path's most specific routes (Starlette names
        # only those of the first route that matched, e.g. GET of a path that also takes POST).
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            allowed = _allowed_methods(request)
            if allowed:
                exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
        return await http_exception_handler(request, exc)

    async def database_error(_request: Request, exc: Exception) -> Response:
        # The state database is down or unreachable (a restart): 503 with Retry-After, not a
        # 500; the pool's pre-ping replaces the dead connections once it is back.
        if not database_unavailable(exc):
            raise exc  # a real bug: the server's 500
        log.warning("state database unavailable: %s", describe(exc))
        return JSONResponse(
            {"detail": f"the state database is unavailable: {describe(exc)}"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(PoolTimeout, database_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(CpdopsError, handle)
    app.add_exception_handler(RequestValidationError, invalid)
