"""A generic webhook: the ticket event as JSON, POSTed to the notifier's ``url``, signed.

Settings are the fleet file's ``WebhookNotifier`` (``url``; ``secret``, ``${ENV}`` resolved
when sent). One row per tenant with the ``webhook`` channel and ticket event; the body is
the same on every retry of that row:

``{"event_id", "dedup_key", "number", "type", "status", "priority", "kind", "subject",
"comment", "tenant", "ticket_tenant", "language"}``

Headers: ``Content-Type: application/json; charset=utf-8``; ``Idempotency-Key: <dedup key>``
(the same on a retry: a receiver that keeps the keys it has seen acts once);
``X-Cpdops-Event: <kind>``; ``X-Cpdops-Timestamp: <unix seconds of this attempt>``; and, with
a secret, ``X-Cpdops-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the
secret>``. The signature covers the body, which holds the dedup key: a replayed request is
authentic but the receiver's idempotency check makes it harmless.

Any 2xx is delivered. A ``4xx`` other than ``408``/``429`` is the receiver refusing this
request for good (a wrong path, signature or body): the row is ``dead`` at once with the status
in ``last_error`` (``cpdops outbox requeue`` sends it again once the receiver is fixed).
Anything else (3xx, 408, 429, 5xx, no answer) is retried — a ``429``/``503`` with a
``Retry-After`` of seconds is deferred that long without counting an attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.fleet.fleetfile import resolve_secret
from orchestrator.incidents.notifiers.http import Answer, request
from orchestrator.incidents.outbox import Deferred, Notification, Permanent

SIGNATURE_HEADER = "X-Cpdops-Signature"
TIMESTAMP_HEADER = "X-Cpdops-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-Cpdops-Event"
MAX_RETRY_AFTER_S = 3600.0

_FIELDS = (
    "number",
    "type",
    "status",
    "priority",
    "kind",
    "subject",
    "comment",
    "tenant",
    "ticket_tenant",
    "language",
)


class WebhookError(Exception):
    """The receiver did not answer 2xx."""


class WebhookRejected(WebhookError, Permanent):
    """A 4xx other than 408/429: not retried."""


RETRIED_4XX = frozenset({408, 429})


# --------------------------------------------------------------------------- pure parts


def event_body(notification: Notification) -> bytes:
    """The raw JSON body for one row (stable: the same bytes on every retry)."""
    payload = notification.payload
    data: dict[str, Any] = {
        "event_id": payload.get("event_id"),
        "dedup_key": payload.get("dedup_key"),
    }
    data.update({name: payload.get(name) for name in _FIELDS})
    return json.dumps(data, ensure_ascii=False, sort_keys=True).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does: compare the header with the body's HMAC in constant time."""
    return hmac.compare_digest(signature(secret, body), header)


def build_headers(
    notification: Notification, body: bytes, secret: str | None, timestamp: int
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        IDEMPOTENCY_HEADER: str(notification.payload.get("dedup_key", "")),
        EVENT_HEADER: str(notification.payload.get("kind", "")),
        TIMESTAMP_HEADER: str(timestamp),
    }
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, body)
    return headers


def parse_answer(answer: Answer) -> None:
    if 200 <= answer.status < 300:
        return
    retry_after = {k.lower(): v for k, v in answer.headers.items()}.get("retry-after", "")
    if answer.status in (429, 503) and retry_after.strip().isdigit():
        delay = min(float(retry_after), MAX_RETRY_AFTER_S)
        raise Deferred(f"webhook HTTP {answer.status}, retry after {delay:g} s", delay)
    excerpt = answer.body[:200].decode("utf-8", "replace").strip()
    if 400 <= answer.status < 500 and answer.status not in RETRIED_4XX:
        raise WebhookRejected(f"HTTP {answer.status}" + (f": {excerpt}" if excerpt else ""))
    raise WebhookError(f"HTTP {answer.status}" + (f": {excerpt}" if excerpt else ""))


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class WebhookSender:
    url: str
    secret: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0
    clock: Callable[[], float] = time.time

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> WebhookSender:
        secret = settings.get("secret")
        return cls(url=str(settings["url"]), secret=str(secret) if secret else None)

    def send(self, notification: Notification) -> None:
        secret = (
            resolve_secret(self.secret, key="notifiers.webhook.secret") if self.secret else None
        )
        body = event_body(notification)
        headers = build_headers(notification, body, secret, int(self.clock()))
        parse_answer(
            request("POST", self.url, body=body, headers=headers, timeout_s=self.timeout_s)
        )
