"""Maps cpdops errors to JSON ``{"detail": …}`` responses."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from orchestrator.errors import (
    ConflictError,
    CpdopsError,
    DockerError,
    HostUnreachable,
    InputError,
    NotFoundError,
    TooLarge,
)


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


def install(app: FastAPI) -> None:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CpdopsError)
        # Some errors carry fields for machines besides the message (e.g. a refused transition:
        # ``current`` and ``allowed``); ``detail`` stays the human-readable sentence.
        extra: dict[str, object] = getattr(exc, "fields", {})
        return JSONResponse({**extra, "detail": str(exc)}, status_code=status_for(exc))

    async def invalid(_request: Request, exc: Exception) -> JSONResponse:
        # Like FastAPI's own 422, but without echoing the rejected input (it may be a secret).
        assert isinstance(exc, RequestValidationError)
        detail = [
            {k: v for k, v in err.items() if k in ("type", "loc", "msg")} for err in exc.errors()
        ]
        return JSONResponse({"detail": jsonable_encoder(detail)}, status_code=422)

    app.add_exception_handler(CpdopsError, handle)
    app.add_exception_handler(RequestValidationError, invalid)
