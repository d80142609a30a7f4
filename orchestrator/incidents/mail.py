"""Inbound e-mail intake: reading a mail (pure: MIME, RFC 2047 headers, charsets, HTML) into
what to take in, and the store part. ``mail_listener`` receives the mails over SMTP.

=========================================================  ====================================
the mail                                                   what happens
=========================================================  ====================================
sent by cpdops itself (``X-Cpdops-Ticket``, our sender),   ignored (accepted, nothing stored):
an automatic reply (``Auto-Submitted`` other than ``no``),  no mail loop, no ticket reopened by
a bounce (null sender, ``multipart/report``)               an out-of-office reply
subject names ``[Ticket#N]`` of a ticket it may follow up  customer comment on N (reopening an
on (``receipts.follow_up``)                                ``awaiting_info`` or
                                                           ``solution_provided`` ticket)
anything else                                              new ``consultation`` ticket
=========================================================  ====================================

The sender's tenant is the one whose contact has that ``email`` (case-insensitive). The text is
the plain-text body, else the HTML body as text; every other part (files, inline images, an
attached mail) becomes an attachment. Each ``Message-ID`` (a mail without one: the SHA-256 of
its bytes) is taken in once. A mail with an attachment over ``MAX_ATTACHMENT_BYTES`` is
refused whole (``MailRejected``: SMTP 552), so nothing is half-stored.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.utils import getaddresses, parseaddr
from html.parser import HTMLParser
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Notifier
from orchestrator.db.session import session_scope
from orchestrator.incidents import receipts
from orchestrator.incidents.attachments import MAX_ATTACHMENT_BYTES, add_attachment
from orchestrator.incidents.tickets import add_comment, create_ticket

log = logging.getLogger(__name__)

SOURCE = "email"
TICKET_TYPE = "consultation"
MAX_SUBJECT = 500
LOOP_HEADER = "X-Cpdops-Ticket"
_REPLY_PREFIX = re.compile(
    r"^\s*(?:(?:re|fwd?|aw|wg|sv|antw|ответ|отв|пересл)\s*(?:\[\d+\])?\s*:\s*)+", re.IGNORECASE
)
_TAG = re.compile(r"\[Ticket#\d+\]\s*", re.IGNORECASE)


class MailRejected(Exception):
    """The mail is refused whole; the message is for the sender (an SMTP 5xx reply)."""


# --------------------------------------------------------------------------- pure part


@dataclass(frozen=True)
class MailAttachment:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class IncomingMail:
    message_id: str
    sender: str  # the From address, lower case ('' when there is none)
    subject: str
    text: str
    attachments: tuple[MailAttachment, ...]
    mentioned: tuple[str, ...]  # ticket numbers named in the subject
    loop: bool  # carries our X-Cpdops-Ticket header
    automatic: bool  # an auto-reply or a bounce
    envelope_sender: str | None = None


class _TextOfHtml(HTMLParser):
    """HTML → plain text: tags dropped, block ends as line breaks, script/style skipped."""

    BLOCKS = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote"}
        | {"pre", "table", "ul", "ol", "hr", "section", "article"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self.skip += 1
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def html_to_text(html: str) -> str:
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.out).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _header(msg: Message, name: str) -> str:
    """A header's decoded text ('' when absent); a malformed one is read as it is."""
    try:
        value = msg.get(name)
        return receipts.without_nul(str(value)) if value is not None else ""
    except Exception:  # the parser gave up on this header: keep its raw text
        raw = next((v for k, v in msg.raw_items() if k.lower() == name.lower()), "")
        return receipts.without_nul(str(raw))


def _text_of(part: Message) -> str:
    try:
        content = part.get_content() if isinstance(part, EmailMessage) else None
    except (LookupError, ValueError, AssertionError):  # unknown charset, broken encoding
        content = None
    if not isinstance(content, str):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return receipts.without_nul(content)


def _leaves(part: Message) -> Iterator[Message]:
    """The parts that hold content, in order; an attached mail is one part."""
    if part.get_content_type() == "message/rfc822" or not part.is_multipart():
        yield part
        return
    payload = part.get_payload()
    for sub in payload if isinstance(payload, list) else []:
        if isinstance(sub, Message):
            yield from _leaves(sub)


def _attachment(part: Message, index: int) -> MailAttachment:
    kind = part.get_content_type()
    try:
        name = part.get_filename()
    except Exception:
        name = None
    if kind == "message/rfc822":
        inner = part.get_payload()
        inner_msg = inner[0] if isinstance(inner, list) and inner else None
        data = inner_msg.as_bytes() if isinstance(inner_msg, Message) else b""
        subject = _header(inner_msg, "Subject") if isinstance(inner_msg, Message) else ""
        name = name or f"{subject or 'message'}.eml"
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
    if not name:
        name = f"attachment-{index}{mimetypes.guess_extension(kind) or '.bin'}"
    return MailAttachment(filename=receipts.without_nul(name), content_type=kind, content=data)


def read_mail(raw: bytes, envelope_sender: str | None = None) -> IncomingMail:
    """What a mail says. Raises MailRejected for an attachment over the size limit."""
    msg = message_from_bytes(raw, policy=policy.default)
    message_id = " ".join(_header(msg, "Message-ID").split())
    if not message_id:
        message_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    from_text = _header(msg, "From")
    sender = (getaddresses([from_text]) or [("", "")])[0][1] or parseaddr(from_text)[1]
    subject = " ".join(_header(msg, "Subject").split())
    try:
        body = msg.get_body(preferencelist=("plain", "html")) if msg.is_multipart() else msg
    except Exception:
        body = None
    text = ""
    if body is not None and body.get_content_maintype() == "text":
        text = _text_of(body)
        if body.get_content_subtype() == "html":
            text = html_to_text(text)
    else:
        body = None
    attachments: list[MailAttachment] = []
    for part in _leaves(msg):
        if part is body:
            continue
        if (
            part.get_content_type() in ("text/plain", "text/html")
            and part.get_content_disposition() != "attachment"
            and not part.get_filename()
        ):
            continue  # another rendering of the body
        att = _attachment(part, len(attachments) + 1)
        if len(att.content) > MAX_ATTACHMENT_BYTES:
            raise MailRejected(
                f"attachment {att.filename!r} has {len(att.content)} bytes; "
                f"at most {MAX_ATTACHMENT_BYTES} are kept per attachment"
            )
        attachments.append(att)
    auto = _header(msg, "Auto-Submitted").strip().lower()
    return IncomingMail(
        message_id=message_id,
        sender=sender.strip().lower(),
        subject=subject,
        text=text.strip(),
        attachments=tuple(attachments),
        mentioned=tuple(receipts.mentioned_numbers(subject)),
        loop=bool(_header(msg, LOOP_HEADER)),
        automatic=(auto not in ("", "no"))
        or envelope_sender == ""
        or msg.get_content_type() == "multipart/report",
        envelope_sender=envelope_sender,
    )


Verdict = Literal["take", "loop", "automatic"]


def decide(mail: IncomingMail, our_addresses: set[str]) -> Verdict:
    """Whether to take the mail in, given the addresses cpdops itself sends from."""
    if mail.loop or (mail.sender and mail.sender in our_addresses):
        return "loop"
    if mail.automatic:
        return "automatic"
    return "take"


def ticket_subject(mail: IncomingMail) -> str:
    """The subject without reply prefixes and ticket tags; else the text's first line."""
    subject = _TAG.sub("", _REPLY_PREFIX.sub("", mail.subject)).strip()
    if not subject:
        subject = next((ln.strip() for ln in mail.text.splitlines() if ln.strip()), "")
    if not subject:
        subject = f"E-mail from {mail.sender or 'an unknown sender'}"
    return subject[:MAX_SUBJECT]


def author_of(mail: IncomingMail) -> str:
    return f"email:{mail.sender or 'unknown'}"[:100]


# --------------------------------------------------------------------------- store part


@dataclass(frozen=True)
class MailResult:
    action: Literal["created", "commented", "duplicate", "ignored"]
    ticket: str | None = None
    attachments: tuple[int, ...] = ()
    reason: str = ""


def our_addresses(session: Session) -> set[str]:
    """The sender addresses of the fleet file's ``smtp`` notifiers (the outbox's mail)."""
    found = set()
    for settings in session.scalars(select(Notifier.settings).where(Notifier.kind == "smtp")):
        address = parseaddr(str(settings.get("sender") or ""))[1].strip().lower()
        if address:
            found.add(address)
    return found


def ingest(
    factory: sessionmaker[Session],
    mail: IncomingMail,
    *,
    system_id: str,
    on_created: Callable[[str], None] | None = None,
) -> MailResult:
    """Take in one mail exactly once (its ``Message-ID``), in one transaction."""
    with session_scope(factory) as s:
        verdict = decide(mail, our_addresses(s))
        if verdict != "take":
            log.info("mail ignored message_id=%s reason=%s", mail.message_id, verdict)
            return MailResult("ignored", reason=verdict)
        receipt = receipts.record(s, SOURCE, mail.message_id, number=None, sender=mail.sender)
        if receipt is None:
            return MailResult("duplicate")
        tenant = receipts.tenant_of_contact(s, "email", mail.sender) if mail.sender else None
        author = author_of(mail)
        incident = receipts.follow_up(
            s, mail.mentioned, tenant=tenant, sources=(SOURCE,), sender=mail.sender
        )
        names = ", ".join(a.filename for a in mail.attachments)
        if incident is not None:
            body = mail.text or (f"({names})" if names else "(an empty mail)")
            add_comment(s, incident, author=author, body=body, customer=True)
            action: Literal["created", "commented"] = "commented"
        else:
            incident = create_ticket(
                s,
                system_id=system_id,
                type=TICKET_TYPE,
                subject=ticket_subject(mail),
                description=mail.text,
                author=author,
                source=SOURCE,
                tenant=tenant,
            )
            action = "created"
        receipt.incident_number = incident.number
        ids = tuple(
            add_attachment(
                s,
                incident,
                filename=a.filename,
                content_type=a.content_type,
                content=a.content,
                author=author,
            ).id
            for a in mail.attachments
        )
        number = incident.number
    log.info(
        "mail message_id=%s from=%s action=%s ticket=%s",
        mail.message_id,
        mail.sender,
        action,
        number,
    )
    if action == "created" and on_created is not None:
        on_created(TICKET_TYPE)
    return MailResult(action, number, ids)
