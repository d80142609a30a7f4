"""Telegram bot webhook intake: the ``Update`` schema, the pure reading of a message, the Bot
API file download, and the store part.

A ``message`` update (every other kind is ignored) from chat ``C``:

==============================================================  ===============================
the message                                                      what happens
==============================================================  ===============================
names ``[Ticket#N]`` / ``#N`` of a ticket it may follow up on    customer comment on N
replies to a message that named such a ticket, or to a message   customer comment on that ticket
this chat sent that opened or commented one
anything else with text, a photo or a document                   new ``consultation`` ticket
``/start``, ``/help``, nothing to keep (a sticker, a location)   ignored
==============================================================  ===============================

"May follow up" is ``receipts.follow_up``: the ticket is the tenant's of the chat (the tenant
whose contact has ``telegram_chat_id: C``), or one this chat opened or commented before. A
customer comment reopens an ``awaiting_info`` / ``solution_provided`` ticket (the workflow).
The largest photo size, or the document, becomes an attachment, fetched through the Bot API
(``getFile``, then ``<api_url>/file/bot<token>/<file_path>``) with the fleet file's
``telegram`` notifier; a file that cannot be fetched leaves a note (``attachment_failed``) on
the timeline, the message itself is kept. Each ``update_id`` is taken in once.

The message's text is the customer's words and is kept as sent; what cpdops writes itself from
an answer it got (the ``attachment_failed`` note: the Bot API's error text) goes through the
caller's redactor (the engine's, with the secrets cpdops knows), besides the bot token's
replacement, so no known server secret echoed by the Bot API (or a proxy) is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Notifier
from orchestrator.db.session import session_scope
from orchestrator.errors import CpdopsError
from orchestrator.fleet.fleetfile import resolve_secret
from orchestrator.incidents import receipts
from orchestrator.incidents.attachments import MAX_ATTACHMENT_BYTES, add_attachment
from orchestrator.incidents.redact import PATTERNS_ONLY, Redactor
from orchestrator.incidents.tickets import add_comment, add_event, create_ticket
from orchestrator.strict_types import WHOLE, Int

log = logging.getLogger(__name__)

SOURCE = "telegram"
MESSAGE_SOURCE = "telegram-message"  # receipts of (chat, message_id): replies find the ticket
TICKET_TYPE = "consultation"
MAX_BODY_BYTES = 1024 * 1024
MAX_SUBJECT = 200
IGNORED_COMMANDS = ("/start", "/help")
# Telegram's ids have at most 52 significant bits; 2**53 - 1 also survives a client that sends
# JSON numbers as doubles (at 2**62 such a client's rounding left the schema's range).
MAX_ID = 2**53 - 1
_ID = Field(ge=-MAX_ID, le=MAX_ID)
Size = Annotated[int, Field(ge=0, le=MAX_ID), WHOLE]


# --------------------------------------------------------------------------- the Update


class _Model(BaseModel):
    # strict, as the schema says (``false`` is no message id); unknown fields are ignored
    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=True)


class TgUser(_Model):
    id: Int = _ID
    is_bot: bool = False
    first_name: str = Field(default="", max_length=256)
    last_name: str = Field(default="", max_length=256)
    username: str = Field(default="", max_length=64)


class TgChat(_Model):
    id: Int = _ID
    type: str = Field(default="", max_length=32)


class TgPhotoSize(_Model):
    file_id: str = Field(min_length=1, max_length=1000)
    file_unique_id: str = Field(default="", max_length=200)
    width: Int = Field(default=0, ge=0, le=2**31)
    height: Int = Field(default=0, ge=0, le=2**31)
    file_size: Size | None = None


class TgDocument(_Model):
    file_id: str = Field(min_length=1, max_length=1000)
    file_unique_id: str = Field(default="", max_length=200)
    file_name: str | None = Field(default=None, max_length=1000)
    mime_type: str | None = Field(default=None, max_length=255)
    file_size: Size | None = None


class TgRepliedMessage(_Model):
    """The message replied to (Telegram sends it without its own ``reply_to_message``)."""

    message_id: Int = _ID
    text: str | None = None
    caption: str | None = None


class TgMessage(_Model):
    message_id: Int = _ID
    from_: TgUser | None = Field(default=None, alias="from")
    chat: TgChat
    date: Int = 0
    text: str | None = None
    caption: str | None = None
    photo: list[TgPhotoSize] = Field(default_factory=list, max_length=100)
    document: TgDocument | None = None
    reply_to_message: TgRepliedMessage | None = None


class TelegramUpdate(_Model):
    """A Bot API ``Update``; only ``message`` is read, other kinds are ignored."""

    update_id: Int = Field(ge=0, le=MAX_ID)
    message: TgMessage | None = None


# --------------------------------------------------------------------------- pure part


@dataclass(frozen=True)
class FileRef:
    """A file of the message, to fetch with ``getFile``."""

    file_id: str
    filename: str
    content_type: str | None
    size: int | None


@dataclass(frozen=True)
class IncomingMessage:
    """What the intake needs of a message update."""

    update_id: int
    chat_id: str
    message_id: int
    author: str
    text: str
    file: FileRef | None
    mentioned: tuple[str, ...]  # ticket numbers named in the message
    reply_to: int | None  # the message it replies to
    reply_mentioned: tuple[str, ...]  # ticket numbers named in the replied message


def author_of(user: TgUser | None, chat: TgChat) -> str:
    """``telegram:@username``, else ``telegram:<first name> (<id>)``; at most 100 characters."""
    if user is None:
        return f"telegram:{chat.id}"
    if user.username:
        name = f"@{user.username}"
    else:
        full = receipts.without_nul(f"{user.first_name} {user.last_name}").strip()
        name = f"{full} ({user.id})" if full else str(user.id)
    return f"telegram:{name}"[:100]


def file_of(message: TgMessage) -> FileRef | None:
    """The largest photo size, else the document, else None."""
    if message.photo:
        best = max(message.photo, key=lambda p: (p.file_size or 0, p.width * p.height))
        return FileRef(
            file_id=best.file_id,
            filename=f"photo-{best.file_unique_id or message.message_id}.jpg",
            content_type="image/jpeg",
            size=best.file_size,
        )
    doc = message.document
    if doc is not None:
        return FileRef(
            file_id=doc.file_id,
            filename=doc.file_name or f"document-{doc.file_unique_id or message.message_id}",
            content_type=doc.mime_type,
            size=doc.file_size,
        )
    return None


def read_update(update: TelegramUpdate) -> IncomingMessage | None:
    """The message of ``update``, or None when there is nothing to take in."""
    message = update.message
    if message is None:
        return None
    text = receipts.without_nul(message.text or message.caption or "").strip()
    file = file_of(message)
    command = text.split(maxsplit=1)[0].split("@", 1)[0].lower() if text else ""
    if file is None and (not text or (command in IGNORED_COMMANDS and len(text.split()) == 1)):
        return None
    replied = message.reply_to_message
    replied_text = (replied.text or replied.caption or "") if replied is not None else ""
    return IncomingMessage(
        update_id=update.update_id,
        chat_id=str(message.chat.id),
        message_id=message.message_id,
        author=author_of(message.from_, message.chat),
        text=text,
        file=file,
        mentioned=tuple(receipts.mentioned_numbers(text)),
        reply_to=replied.message_id if replied is not None else None,
        reply_mentioned=tuple(receipts.mentioned_numbers(replied_text)),
    )


def subject_of(text: str, fallback: str) -> str:
    """The first non-empty line of ``text``, cut at a word under ``MAX_SUBJECT`` characters."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line:
        return fallback[:MAX_SUBJECT]
    if len(line) <= MAX_SUBJECT:
        return line
    cut = line[: MAX_SUBJECT - 1].rsplit(" ", 1)[0] or line[: MAX_SUBJECT - 1]
    return cut.rstrip() + "…"


def message_key(chat_id: str, message_id: int) -> str:
    return f"{chat_id}:{message_id}"


# --------------------------------------------------------------------------- Bot API files


class FileFetchError(Exception):
    """A file could not be fetched; the message never contains the bot token."""


class FileSource(Protocol):
    def fetch(self, ref: FileRef) -> bytes: ...


@dataclass(frozen=True)
class BotApiFiles:
    """Downloads files through the Bot API: ``getFile``, then the file URL it gives."""

    api_url: str
    token: str
    limit: int = MAX_ATTACHMENT_BYTES
    timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> BotApiFiles:
        token = resolve_secret(str(settings["bot_token"]), key="notifiers.telegram.bot_token")
        api_url = str(settings.get("api_url") or "https://api.telegram.org")
        return cls(api_url=api_url.rstrip("/"), token=token)

    def _fail(self, what: str) -> FileFetchError:
        return FileFetchError(what.replace(self.token, "<token>") if self.token else what)

    def fetch(self, ref: FileRef) -> bytes:
        if ref.size is not None and ref.size > self.limit:
            raise FileFetchError(f"the file has {ref.size} bytes, more than {self.limit}")
        try:
            with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
                r = client.post(
                    f"{self.api_url}/bot{self.token}/getFile", json={"file_id": ref.file_id}
                )
                info = (
                    r.json()
                    if r.headers.get("content-type", "").startswith("application/json")
                    else {}
                )
                if r.status_code != 200 or not isinstance(info, dict) or not info.get("ok"):
                    described = info.get("description") if isinstance(info, dict) else None
                    raise self._fail(
                        f"getFile answered {r.status_code}: {described or r.reason_phrase}"
                    )
                result = info.get("result")
                path = result.get("file_path") if isinstance(result, dict) else None
                if not isinstance(path, str) or not path or ".." in path.split("/"):
                    raise self._fail("getFile gave no usable file_path")
                size = result.get("file_size") if isinstance(result, dict) else None
                if isinstance(size, int) and size > self.limit:
                    raise self._fail(f"the file has {size} bytes, more than {self.limit}")
                url = f"{self.api_url}/file/bot{self.token}/{quote(path.lstrip('/'), safe='/')}"
                with client.stream("GET", url) as download:
                    if download.status_code != 200:
                        raise self._fail(f"the file download answered {download.status_code}")
                    chunks, total = [], 0
                    for chunk in download.iter_bytes():
                        total += len(chunk)
                        if total > self.limit:
                            raise self._fail(f"the file is larger than {self.limit} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise self._fail(f"the Bot API did not answer: {type(exc).__name__}") from None
        except ValueError as exc:  # not JSON after all
            raise self._fail(f"getFile gave an unreadable answer: {type(exc).__name__}") from None


def bot_files(session: Session) -> BotApiFiles | None:
    """The Bot API of the fleet file's ``telegram`` notifier (the first by name), or None."""
    row = session.scalars(
        select(Notifier).where(Notifier.kind == "telegram").order_by(Notifier.name)
    ).first()
    return BotApiFiles.from_settings(row.settings) if row is not None else None


# --------------------------------------------------------------------------- store part


@dataclass(frozen=True)
class TelegramResult:
    action: Literal["created", "commented", "duplicate", "ignored"]
    ticket: str | None = None
    attachment: int | None = None
    note: str | None = None


class _Duplicate(Exception):
    pass


def _download(
    factory: sessionmaker[Session], ref: FileRef, files: FileSource | None
) -> bytes | str:
    """The file's bytes, or why there are none (kept on the timeline)."""
    try:
        if files is None:
            with factory() as s:
                files = bot_files(s)
        if files is None:
            return "no telegram notifier (bot_token, api_url) in the fleet file"
        return files.fetch(ref)
    except (FileFetchError, CpdopsError) as exc:
        return str(exc)


def ingest(
    factory: sessionmaker[Session],
    update: TelegramUpdate,
    *,
    system_id: str,
    files: FileSource | None = None,
    on_created: Callable[[str], None] | None = None,
    redactor: Callable[[Session], Redactor] = lambda _s: PATTERNS_ONLY,
) -> TelegramResult:
    """Take in one update exactly once; ``files`` defaults to the fleet file's Bot API;
    ``redactor`` gives the redactor of the notes cpdops writes (the engine's)."""
    msg = read_update(update)
    if msg is None:
        return TelegramResult("ignored")
    external_id = str(msg.update_id)
    with factory() as s:
        if receipts.seen(s, SOURCE, external_id):
            return TelegramResult("duplicate")
    content = _download(factory, msg.file, files) if msg.file is not None else None
    try:
        with session_scope(factory) as s:
            result = _apply(s, msg, content, system_id=system_id, red=redactor(s))
    except _Duplicate:
        return TelegramResult("duplicate")
    log.info(
        "telegram update=%s chat=%s action=%s ticket=%s",
        msg.update_id,
        msg.chat_id,
        result.action,
        result.ticket,
    )
    if result.action == "created" and on_created is not None:
        on_created(TICKET_TYPE)
    return result


def _apply(
    s: Session,
    msg: IncomingMessage,
    content: bytes | str | None,
    *,
    system_id: str,
    red: Redactor,
) -> TelegramResult:
    receipt = receipts.record(s, SOURCE, str(msg.update_id), number=None, sender=msg.chat_id)
    if receipt is None:
        raise _Duplicate
    tenant = receipts.tenant_of_contact(s, "telegram_chat_id", msg.chat_id)
    candidates = list(msg.mentioned) + list(msg.reply_mentioned)
    if msg.reply_to is not None:
        replied = receipts.ticket_of(s, MESSAGE_SOURCE, message_key(msg.chat_id, msg.reply_to))
        if replied is not None:
            candidates.append(replied)
    incident = receipts.follow_up(
        s, candidates, tenant=tenant, sources=(SOURCE,), sender=msg.chat_id
    )
    what = f"({msg.file.filename})" if msg.file is not None else ""
    if incident is not None:
        add_comment(s, incident, author=msg.author, body=msg.text or what, customer=True)
        action: Literal["created", "commented"] = "commented"
    else:
        incident = create_ticket(
            s,
            system_id=system_id,
            type=TICKET_TYPE,
            subject=subject_of(msg.text, f"Telegram: {what or 'message'} from {msg.author}"),
            description=msg.text,
            author=msg.author,
            source=SOURCE,
            tenant=tenant,
        )
        action = "created"
    receipt.incident_number = incident.number
    key = message_key(msg.chat_id, msg.message_id)
    if receipts.record(s, MESSAGE_SOURCE, key, number=incident.number, sender=msg.chat_id) is None:
        raise _Duplicate
    attachment_id, note = None, None
    if isinstance(content, bytes) and msg.file is not None:
        att = add_attachment(
            s,
            incident,
            filename=msg.file.filename,
            content_type=msg.file.content_type,
            content=content,
            author=msg.author,
        )
        attachment_id = att.id
    elif isinstance(content, str) and msg.file is not None:
        note = f"{msg.file.filename}: {red.text(content)}"
        add_event(s, incident, author=msg.author, kind="attachment_failed", body=note)
    return TelegramResult(action, incident.number, attachment_id, note)
