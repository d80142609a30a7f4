"""Telegram Bot API ``sendMessage`` to the contacts' ``telegram_chat_id`` (SPEC Appendix A).

Settings are the fleet file's ``TelegramNotifier`` (``bot_token``, ``${ENV}`` resolved when a
message is sent; ``api_url``, default ``https://api.telegram.org``). A message is
``POST <api_url>/bot<token>/sendMessage`` with JSON ``{chat_id, text}``: plain text, no
``parse_mode``, so nothing in a ticket's subject or comment needs escaping or can break the
message.

* **Length.** Telegram takes at most 4096 characters (counted in UTF-16 code units, so an
  emoji counts twice; we count that way too). A longer text is **split** into parts of at most
  4096, at a line break where there is one in the second half of the part, else at a space,
  else anywhere (never inside a character); each part is its own outbox row (``part``/``parts``
  in the payload, ``.<n>`` on the dedup key), sent in order and once, headed ``(n/m)``. At most
  ``MAX_PARTS`` parts: the rest of a longer text is cut, with a marker saying so.
* **Rate.** The outbox paces a chat at one message per second (``outbox.CHANNEL_PACE_S``); a
  ``429`` answer's ``parameters.retry_after`` defers the row (and the chat) that long without
  counting an attempt.
* **Answers.** Only ``{"ok": true}`` is delivered. ``{"ok": false, "error_code": 400}`` (a
  chat that does not exist, a bad request) and ``403`` (the bot was blocked or removed) are
  permanent: the row is ``dead`` at once with Telegram's description. Any other
  ``{"ok": false, ...}`` (401 a wrong token, 5xx …) and anything that is not Telegram's JSON
  is a failure, retried.
* **The token** is in the request path only: it is never in a log, in ``last_error`` or in an
  exception (:func:`_redact` scrubs the messages besides).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.fleet.fleetfile import resolve_secret
from orchestrator.incidents.notifiers.http import Answer, Unreachable, request
from orchestrator.incidents.outbox import Deferred, Notification, Permanent, render

log = logging.getLogger(__name__)

MAX_TEXT = 4096
MAX_PARTS = 4
_HEAD_ROOM = 16  # for the "(n/m)\n" head of a part
_CUT = {"ru": "\n[…текст сокращён]", "en": "\n[…text cut]"}
_INT_CHAT = re.compile(r"-?\d+")


class TelegramError(Exception):
    """A message Telegram did not take (or could not be asked to take)."""


class TelegramRejected(TelegramError, Permanent):
    """Telegram refused the message for good (400, 403): not retried."""


PERMANENT_CODES = frozenset({400, 403})


# --------------------------------------------------------------------------- pure parts


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _prefix_within(text: str, limit: int) -> int:
    """The number of characters of ``text`` that fit in ``limit`` UTF-16 units."""
    used = 0
    for index, char in enumerate(text):
        used += 2 if ord(char) > 0xFFFF else 1
        if used > limit:
            return index
    return len(text)


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """``text`` in pieces of at most ``limit`` UTF-16 units; joined they give ``text`` back."""
    pieces: list[str] = []
    rest = text
    while utf16_len(rest) > limit:
        size = _prefix_within(rest, limit)
        head = rest[:size]
        for sep in ("\n", " "):
            at = head.rfind(sep)
            if at >= size // 2:
                size = at + 1
                break
        pieces.append(rest[:size])
        rest = rest[size:]
    if rest or not pieces:
        pieces.append(rest)
    return pieces


def split_message(
    text: str, *, limit: int = MAX_TEXT, max_parts: int = MAX_PARTS, cut: str = _CUT["en"]
) -> list[str]:
    """The messages for ``text``: itself if it fits, else up to ``max_parts`` parts headed
    ``(n/m)``, each within ``limit``; what does not fit in them is cut and marked ``cut``."""
    if utf16_len(text) <= limit:
        return [text]
    pieces = split_text(text, limit - _HEAD_ROOM)
    if len(pieces) > max_parts:
        last_room = limit - _HEAD_ROOM - utf16_len(cut)
        tail = "".join(pieces[max_parts - 1 :])
        pieces = [*pieces[: max_parts - 1], tail[: _prefix_within(tail, last_room)] + cut]
    total = len(pieces)
    return [f"({n}/{total})\n{piece}" for n, piece in enumerate(pieces, 1)]


def message_text(payload: Mapping[str, Any]) -> str:
    """The whole text of a notification: ``[Ticket#N] subject``, then what happened."""
    rendered = render(payload, footer=False)
    return f"{rendered.subject}\n\n{rendered.body.rstrip()}"


def message_parts(payload: Mapping[str, Any]) -> list[str]:
    lang = "ru" if payload.get("language") == "ru" else "en"
    return split_message(message_text(payload), cut=_CUT[lang])


def chat_id_value(chat_id: str) -> int | str:
    """A numeric chat id as a number, a ``@channel`` name as it is."""
    return int(chat_id) if _INT_CHAT.fullmatch(chat_id) else chat_id


def build_request(api_url: str, token: str, chat_id: str, text: str) -> tuple[str, bytes]:
    """The URL and JSON body of one ``sendMessage``."""
    url = f"{api_url.rstrip('/')}/bot{token}/sendMessage"
    body = {"chat_id": chat_id_value(chat_id), "text": text}
    return url, json.dumps(body, ensure_ascii=False).encode()


def parse_answer(answer: Answer) -> None:
    """Return if Telegram took the message; raise :class:`Deferred` for a 429 with
    ``retry_after``, :class:`TelegramError` for anything else."""
    try:
        data = json.loads(answer.body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        raise TelegramError(f"HTTP {answer.status} without a Bot API answer")
    if data["ok"] is True:
        if not 200 <= answer.status < 300:
            raise TelegramError(f"HTTP {answer.status} with ok=true")
        return
    code = data.get("error_code", answer.status)
    description = str(data.get("description", ""))[:300]
    parameters = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
    retry_after = parameters.get("retry_after") if parameters else None
    if code == 429 and isinstance(retry_after, int | float) and retry_after >= 0:
        raise Deferred(f"Telegram 429, retry after {retry_after} s", float(retry_after))
    error = TelegramRejected if code in PERMANENT_CODES else TelegramError
    raise error(f"Telegram error {code}: {description}".rstrip(": "))


def _redact(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class TelegramSender:
    bot_token: str = field(repr=False)
    api_url: str = "https://api.telegram.org"
    timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> TelegramSender:
        return cls(
            bot_token=str(settings["bot_token"]),
            api_url=str(settings.get("api_url") or "https://api.telegram.org"),
        )

    def send(self, notification: Notification) -> None:
        payload = notification.payload
        parts = message_parts(payload)
        part = int(payload.get("part", 1))
        if part > len(parts):
            return  # the text got shorter since it was enqueued: nothing left for this row
        token = resolve_secret(self.bot_token, key="notifiers.telegram.bot_token")
        url, body = build_request(self.api_url, token, notification.recipient, parts[part - 1])
        try:
            answer = request(
                "POST",
                url,
                body=body,
                headers={"Content-Type": "application/json; charset=utf-8"},
                timeout_s=self.timeout_s,
            )
            parse_answer(answer)
        except Deferred:
            raise
        except (Unreachable, TelegramError) as exc:
            error = type(exc) if isinstance(exc, TelegramError) else TelegramError
            raise error(_redact(str(exc), token)) from None
        log.info(
            "telegram sent number=%s chat=%s part=%s/%s",
            payload.get("number"),
            notification.recipient,
            part,
            len(parts),
        )
