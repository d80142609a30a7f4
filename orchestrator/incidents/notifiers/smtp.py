"""E-mail through SMTP (smtplib): ``[Ticket#<number>]`` subjects, one thread per ticket.

Settings are the fleet file's ``SmtpNotifier`` (host, port, starttls, username, password,
sender); ``${ENV}`` references in the password are resolved when a mail is sent. Port 465
means implicit TLS (SMTPS); otherwise ``starttls`` upgrades a plain connection.

Threading: every notification has its own ``Message-ID`` (stable for its outbox row, so a
retry is recognisably the same mail); every mail of a ticket carries the ticket's stable
thread id ``<ticket-<number>@<sender domain>>`` in ``In-Reply-To`` and ``References``, so mail
clients show one thread per ticket.

Answers: a ``5xx`` reply to the mail (the recipient refused, the sender or the data rejected)
is a permanent rejection — :class:`SmtpRejected`, the row is ``dead`` at once with the server's
code and text; a ``4xx``, a refused login (a configuration to fix, not this mail's fault), a
dropped connection or no server at all is retried.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from orchestrator.fleet.fleetfile import resolve_secret
from orchestrator.incidents.outbox import Notification, Permanent, render

SMTPS_PORT = 465


class SmtpRejected(Permanent):
    """The SMTP server refused the mail with a 5xx: not retried."""


def _reply_text(message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return text.strip()[:300]


def permanent_rejection(exc: smtplib.SMTPException) -> SmtpRejected | None:
    """The :class:`SmtpRejected` for a mail refused with a 5xx (``RCPT``, ``MAIL``, ``DATA``),
    else None. A refused login (535) or STARTTLS is the notifier's configuration, not this
    mail: retried, so that fixing the password delivers everything without a requeue."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [(r, code, msg) for r, (code, msg) in exc.recipients.items()]
        if codes and all(500 <= code < 600 for _r, code, _m in codes):
            return SmtpRejected(
                "; ".join(f"{r}: {code} {_reply_text(msg)}" for r, code, msg in codes)
            )
        return None
    if (
        isinstance(exc, smtplib.SMTPSenderRefused | smtplib.SMTPDataError)
        and 500 <= exc.smtp_code < 600
    ):
        return SmtpRejected(f"{exc.smtp_code} {_reply_text(exc.smtp_error)}")
    return None


def _domain(sender: str) -> str:
    address = sender.rsplit("<", 1)[-1].rstrip(">").strip()
    return address.rsplit("@", 1)[-1] or "cpdops.invalid"


def ticket_message_id(number: str, sender: str) -> str:
    """The id of a ticket's first message: the thread root, the same for every recipient."""
    return f"<ticket-{number}@{_domain(sender)}>"


def build_message(notification: Notification, sender: str) -> EmailMessage:
    """The mail for one outbox row (pure: no network)."""
    payload = notification.payload
    rendered = render(payload)
    number = str(payload["number"])
    root = ticket_message_id(number, sender)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = notification.recipient
    msg["Subject"] = rendered.subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<ticket-{number}.{notification.id}@{_domain(sender)}>"
    msg["In-Reply-To"] = root
    msg["References"] = root
    msg["X-Cpdops-Ticket"] = number
    msg["Content-Language"] = "ru" if payload.get("language") == "ru" else "en"
    msg.set_content(rendered.body, charset="utf-8")
    return msg


@dataclass(frozen=True)
class SmtpMailer:
    host: str
    port: int
    sender: str
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> SmtpMailer:
        return cls(
            host=str(settings["host"]),
            port=int(settings.get("port", 25)),
            sender=str(settings["sender"]),
            starttls=bool(settings.get("starttls", False)),
            username=settings.get("username"),
            password=settings.get("password"),
        )

    def send(self, notification: Notification) -> None:
        msg = build_message(notification, self.sender)
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if self.port == SMTPS_PORT:
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        try:
            with smtp:
                if self.starttls and self.port != SMTPS_PORT:
                    smtp.starttls(context=context)
                if self.username is not None:
                    password = resolve_secret(self.password or "", key="notifiers.smtp.password")
                    smtp.login(self.username, password)
                smtp.send_message(msg)
        except smtplib.SMTPException as exc:
            rejected = permanent_rejection(exc)
            if rejected is not None:
                raise rejected from None
            raise
