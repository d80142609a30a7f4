"""ASGI middleware of the API: request body limits (413) and the audit of every action.

Pure ASGI (not ``BaseHTTPMiddleware``): the body is never buffered except when a client sends
it without a ``Content-Length``, and then only up to the limit.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.auth import STATE_PRINCIPAL, STATE_REFUSED
from orchestrator.auth.audit import record_request, should_record
from orchestrator.auth.audit_queue import AuditQueue
from orchestrator.auth.tokens import Principal
from orchestrator.db.outage import database_unavailable, describe

log = logging.getLogger(__name__)


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """413 ``{"detail": …}`` for a body over ``limit`` bytes (``larger`` raises it per path)."""

    def __init__(self, app: ASGIApp, *, limit: int, larger: dict[str, int]) -> None:
        self.app, self.limit, self.larger = app, limit, larger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = max(self.limit, self.larger.get(scope["path"], 0))
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        too_large = {"detail": f"request body larger than {limit} bytes"}
        if length is not None:
            if not length.isdigit():
                await _send_json(send, 400, {"detail": "Content-Length: not a number"})
                return
            if int(length) > limit:
                await _send_json(send, 413, too_large)
                return
            await self.app(scope, receive, send)
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            await self.app(scope, receive, send)
            return
        # chunked: read up to the limit, then hand the app the whole body
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_json(send, 413, too_large)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class Audit:
    """An audit entry for every request that may change something (not GET/HEAD/OPTIONS)
    and every refused one (401/403), written before the response starts — or, while the state
    database is unavailable, queued with its time and written when it is back
    (``orchestrator.auth.audit_queue``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        method: str = scope["method"]
        recorded = False

        async def record(status: int) -> None:
            nonlocal recorded
            if recorded or not should_record(method, status):
                return
            recorded = True
            ctx = getattr(scope["app"].state, "ctx", None)
            if ctx is None:
                return
            principal: Principal | None = state.get(STATE_PRINCIPAL)
            refused: dict[str, Any] = state.get(STATE_REFUSED) or {}
            route = scope.get("route")
            client = scope.get("client")
            entry: dict[str, Any] = {
                "actor": principal.actor
                if principal
                else f"token:{refused['name']}"
                if refused.get("name")
                else "anonymous",
                "role": principal.role.name if principal else None,
                "token_id": principal.token_id if principal else refused.get("token_id"),
                "method": method,
                "route": getattr(route, "path_format", None) or getattr(route, "path", None),
                "path": scope["path"],
                "status": status,
                "client": client[0] if client else None,
            }
            entry["at"] = datetime.now(UTC)  # kept when the entry is written late
            queue: AuditQueue | None = getattr(ctx, "audit", None)
            if queue is not None and queue.pending():
                # entries wait for the database already: this one goes behind them (in order,
                # and without waiting for a connect timeout again)
                queue.submit(entry)
                return
            try:
                await run_in_threadpool(record_request, ctx.factory, **entry)
            except Exception as exc:
                # Never turns the response into a 500. During a database outage (503) the entry
                # waits in memory and is written when the database is back (AuditQueue).
                if database_unavailable(exc) and queue is not None:
                    log.warning("state database unavailable for the audit: %s", describe(exc))
                    queue.submit(entry)  # logs the entry
                elif database_unavailable(exc):
                    log.error(
                        "audit entry not written (state database unavailable: %s) entry=%s",
                        describe(exc),
                        json.dumps(entry, default=str),
                    )
                else:
                    log.exception(
                        "audit entry not written entry=%s", json.dumps(entry, default=str)
                    )

        async def send_audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                await record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except Exception:
            await record(500)
            raise
