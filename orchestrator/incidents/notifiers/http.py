"""The one place the HTTP notifiers (Telegram, webhook, OTRS/Znuny) do HTTP (urllib).

:func:`request` sends one request and returns an :class:`Answer` for every status code the
server gives (4xx and 5xx are answers too, for the caller's parser); only a server that cannot
be reached raises :class:`Unreachable`. Neither ever carries the URL: Telegram's has the bot
token in its path, a Znuny search has the password in its query. Redirects are not followed
(a redirected POST would silently turn into a GET): a 3xx is an answer like any other.

urllib rather than httpx on purpose: httpx logs every request's full URL at INFO.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

USER_AGENT = "cpdops-notifier/1"
TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 1 << 20


class Unreachable(Exception):
    """No HTTP answer: connection refused, DNS, TLS, timeout. The message has no URL."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx: an answer for the caller


_OPENER = urllib.request.build_opener(_NoRedirect)


def _read(stream: IO[bytes]) -> bytes:
    return stream.read(MAX_ANSWER_BYTES)


def request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = TIMEOUT_S,
) -> Answer:
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("User-Agent", USER_AGENT)
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with _OPENER.open(req, timeout=timeout_s) as resp:
            return Answer(resp.status, _read(resp), dict(resp.headers.items()))
    except urllib.error.HTTPError as exc:  # a status the server gave: an answer
        try:
            data = _read(exc)
        finally:
            exc.close()
        return Answer(exc.code, data, dict(exc.headers.items()) if exc.headers else {})
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise Unreachable(f"{type(reason).__name__}: {text}") from None
    except TimeoutError:
        raise Unreachable(f"no answer within {timeout_s:g} s") from None
    except (OSError, http.client.HTTPException) as exc:  # reset, closed early: no URL in these
        raise Unreachable(f"{type(exc).__name__}: {exc}") from None
