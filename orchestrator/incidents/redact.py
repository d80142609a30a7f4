"""Secrets out of evidence: a pure ``redact()`` for text and for JSON-like data.

What a ticket keeps (probe bodies, container logs, alert labels, rollout output) is shown to
engineers and customers and mailed out, so every secret in it is replaced by ``***``:

* the password of a URL or DSN: ``postgresql://app:***@db/acme``, ``amqp://u:***@mq``;
* a Telegram bot token in a URL: ``https://api.telegram.org/bot***/sendMessage``;
* ``Authorization: Bearer …`` / ``Basic …`` (header lines, curl ``-H``) and a bare
  ``Bearer <token>``;
* ``KEY=value``, ``KEY: value`` and ``"key": "value"`` where the key names a password,
  secret, token, API key or authorization (``DB_PASSWORD=…``, ``?api_key=…``,
  ``"client_secret": "…"``, libpq ``password=…``);
* in a mapping, the value of any such key, whatever it holds (``{"token": "…"}``).

Ordinary text (``the token expired``, ``password reset sent``) is left alone: a key needs an
``=``, a ``:`` right after it or JSON quotes to count as one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

REDACTED = "***"

# A key that names a secret: db_password, PGPASSWORD, client_secret, X-Auth-Token, api-key, …
_SECRET_KEY = (
    r"[A-Za-z0-9_.-]*(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|authorization)[A-Za-z0-9_.-]*"
)
_SECRET_KEY_RE = re.compile(rf"^{_SECRET_KEY}$", re.I)


def _authorization(m: re.Match[str]) -> str:
    scheme = f"{m[2]} " if m[2] else ""
    return f"{m[1]}{scheme}{REDACTED}"


_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # scheme://user:password@host — the password part (DSNs, proxies, git remotes).
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s\"']*):[^@/\s\"']+@"), rf"\1:{REDACTED}@"),
    # Telegram Bot API: /bot<digits>:<35 chars>/method
    (re.compile(r"(/bot)\d{5,}:[A-Za-z0-9_-]{20,}"), rf"\1{REDACTED}"),
    # Authorization: Bearer abc / Authorization: Basic abc= (to the end of the value).
    (
        re.compile(r"(\bAuthorization\s*[:=]\s*)(?:(Bearer|Basic|Token)\s+)?[^\s\"',;]+", re.I),
        _authorization,
    ),
    (re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{REDACTED}"),
    # "password": "value" (JSON) — also 'password': 'value' (Python reprs).
    (
        re.compile(rf"([\"']{_SECRET_KEY}[\"']\s*:\s*)([\"'])(?:\\.|(?!\2).)*\2", re.I),
        rf"\1\2{REDACTED}\2",
    ),
    # KEY=value, KEY: value (env dumps, query strings, libpq keywords, log fields).
    (
        re.compile(
            rf"(\b{_SECRET_KEY}(?:\s*=\s*|:\s*))(?!(?:(?:Bearer|Basic|Token)\s+)?\*\*\*)"
            r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&\"',;]+)",
            re.I,
        ),
        rf"\1{REDACTED}",
    ),
)


def redact_text(text: str) -> str:
    """``text`` with every secret of the module docstring replaced by ``***``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def is_secret_key(key: str) -> bool:
    """Whether a mapping key (``DB_PASSWORD``, ``api-key``, ``token``) names a secret."""
    return bool(_SECRET_KEY_RE.match(key))


def redact(value: Any) -> Any:
    """``value`` with secrets replaced: text by :func:`redact_text`; in mappings the value of a
    key that names a secret entirely, the others recursively; lists and tuples item by item.
    Numbers, booleans and None are returned as they are."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_key(k) and v else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value
