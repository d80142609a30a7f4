"""Secrets out of evidence: a pure ``redact()`` for text and for JSON-like data.

What a ticket keeps (probe bodies, container logs, alert labels, rollout output) is shown to
engineers and customers and mailed out, so every secret in it is replaced by ``***``:

* the password of a URL or DSN: ``postgresql://app:***@db/acme``, ``amqp://u:***@mq``;
* a Telegram bot token in a URL: ``https://api.telegram.org/bot***/sendMessage``;
* ``Authorization: Bearer …`` / ``Basic …`` (header lines, curl ``-H``) and a bare
  ``Bearer <token>``;
* cpdops's own API tokens, ``cpd_<id>_<secret>`` → ``cpd_***``;
* ``KEY=value``, ``KEY: value``, ``"key": "value"``, ``<key>value</key>`` and the command-line
  forms ``--key value``, ``-p value`` where the key names a secret (:func:`is_secret_key`):
  it contains ``password``, ``passwd``, ``pwd``, ``secret``, ``token``, ``key``,
  ``credential``, ``passphrase``, ``signature`` or ``authorization``, or it is or ends in
  ``pass``, ``auth`` or ``sig`` after a separator (``DB_PASS``, ``pass``, ``x-auth``);
  ``DB_PASS=…``, ``?api_key=…``, ``"client_secret": "…"``, libpq ``password=…``,
  ``<password>…</password>``, ``--password …``;
* in a mapping, the value of any such key, whatever it holds (``{"token": "…"}``);
* the literal values given as ``known`` — the secrets cpdops itself holds (tenant DSNs and
  their passwords, notifier secrets, its own webhook secrets; see
  ``orchestrator.incidents.known_secrets``), wherever they appear, also percent-encoded.
  Values shorter than :data:`MIN_KNOWN_CHARS` are not searched for (``1`` would mask digits).

Ordinary text (``the token expired``, ``password reset sent``) is left alone: a key needs an
``=``, a ``:`` right after it, JSON quotes, an XML element or a ``--`` to count as one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

REDACTED = "***"
MIN_KNOWN_CHARS = 4
"""Known secret values shorter than this are not searched for in the text."""

_KEY_CHAR = r"[A-Za-z0-9_.-]"
_SECRET_WORD = r"passw(?:or)?d|pwd|secret|token|key|credential|passphrase|signature|authorization"
# A key that names a secret: db_password, PGPASSWORD, DB_PASS, client_secret, X-Auth-Token, …
_SECRET_KEY = (
    rf"(?:{_KEY_CHAR}*(?:{_SECRET_WORD}){_KEY_CHAR}*"
    rf"|(?:{_KEY_CHAR}*[_.-])?(?:pass|auth|sig)(?!{_KEY_CHAR}))"
)
_SECRET_KEY_RE = re.compile(rf"^{_SECRET_KEY}$", re.I)
_CPD_TOKEN = re.compile(r"\bcpd_[A-Za-z0-9_-]{8,}")
# name=value of a URL query (after ``?`` or ``&``), as written in a request line
_QUERY_PARAM = re.compile(r"([?&])([^=&#\s\"'?]+)=([^&#\s\"']*)")


def _authorization(m: re.Match[str]) -> str:
    scheme = f"{m[2]} " if m[2] else ""
    return f"{m[1]}{scheme}{REDACTED}"


_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # scheme://user:password@host — the password part (DSNs, proxies, git remotes).
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s\"']*):[^@/\s\"']+@"), rf"\1:{REDACTED}@"),
    # Telegram Bot API: /bot<digits>:<35 chars>/method
    (re.compile(r"(/bot)\d{5,}:[A-Za-z0-9_-]{20,}"), rf"\1{REDACTED}"),
    # cpdops API tokens: cpd_<key id>_<secret> (also cut short)
    (_CPD_TOKEN, f"cpd_{REDACTED}"),
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
    # <password>value</password> (XML, also with attributes)
    (
        re.compile(rf"(<({_SECRET_KEY})(?:\s[^<>]*)?>)[^<]*(</\2\s*>)", re.I),
        rf"\1{REDACTED}\3",
    ),
    # --password value, --api-key value, -p value (command lines); not a next --flag
    (
        re.compile(rf"((?<!\S)(?:--{_SECRET_KEY}|-p)[ \t]+)(?!-|\*\*\*(?!\S))\S+", re.I),
        rf"\1{REDACTED}",
    ),
    # KEY=value, KEY: value (env dumps, query strings, libpq keywords, log fields).
    (
        re.compile(
            rf"(\b{_SECRET_KEY}(?:\s*=\s*|:\s*))(?!(?:(?:Bearer|Basic|Token)\s+)?\*\*\*)"
            r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&\"',;<]+)",
            re.I,
        ),
        rf"\1{REDACTED}",
    ),
)


class Redactor:
    """:func:`redact_text` and :func:`redact` with the literal ``known`` secret values too."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self.known = tuple(known)
        forms: set[str] = set()
        for value in self.known:
            if isinstance(value, str) and len(value) >= MIN_KNOWN_CHARS:
                forms.update((value, quote(value, safe=""), quote_plus(value)))
        ordered = sorted(forms, key=len, reverse=True)  # the longest form first
        self._known = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def extended(self, more: Iterable[str]) -> Redactor:
        """This redactor with the ``more`` values known too (this one unchanged)."""
        extra = [value for value in more if value not in self.known]
        return Redactor((*self.known, *extra)) if extra else self

    def text(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {
                k: (REDACTED if isinstance(k, str) and is_secret_key(k) and v else self.value(v))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


PATTERNS_ONLY = Redactor()
"""The redactor of the patterns alone (no known secret values)."""


def redact_query(text: str) -> str:
    """``text`` with the value of every URL query parameter whose name names a secret
    (:func:`is_secret_key`: ``token``, ``access_token``, ``key``, ``api_key``, ``secret``,
    ``password``, ``pass``, ``auth``, ``signature``, ``sig``, ``X-Amz-Credential``, …) replaced
    by ``***``: ``/x?tenant=acme&access_token=***``. Nothing else is changed."""

    def one(m: re.Match[str]) -> str:
        if m[3] and is_secret_key(unquote_plus(m[2])):
            return f"{m[1]}{m[2]}={REDACTED}"
        return m[0]

    return _QUERY_PARAM.sub(one, text)


def redact_text(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with every secret of the module docstring replaced by ``***``."""
    return Redactor(known).text(text)


def is_secret_key(key: str) -> bool:
    """Whether a mapping key (``DB_PASSWORD``, ``DB_PASS``, ``api-key``, ``token``) names a
    secret."""
    return bool(_SECRET_KEY_RE.match(key))


def redact(value: Any, known: Iterable[str] = ()) -> Any:
    """``value`` with secrets replaced: text by :func:`redact_text`; in mappings the value of a
    key that names a secret entirely, the others recursively; lists and tuples item by item.
    Numbers, booleans and None are returned as they are. ``known``: literal secret values."""
    return Redactor(known).value(value)
