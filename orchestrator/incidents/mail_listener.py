"""The inbound mail listener: an aiosmtpd SMTP server that ``cpdops serve`` runs when
``CPDOPS_SMTP_LISTEN`` is set, handing every mail to ``mail.ingest``.

It accepts mail for any recipient and never relays. Replies: ``250`` once the mail is stored
(or recognised as a duplicate, or ignored as our own / automatic mail); ``552`` for a mail over
``CPDOPS_SMTP_MAX_BYTES`` (aiosmtpd's ``SIZE`` limit) or with an attachment over the
attachment limit; ``451`` (the sending server retries) when the database fails. Run it behind
the organisation's MTA, which filters spam, on an address only that MTA reaches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.incidents import mail

log = logging.getLogger(__name__)


class IntakeHandler:
    """aiosmtpd handler: each accepted mail goes through ``mail.read_mail`` and ``ingest``."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        system_id: str,
        on_created: Callable[[str], None] | None = None,
    ) -> None:
        self.factory = factory
        self.system_id = system_id
        self.on_created = on_created

    def take(self, raw: bytes, envelope_sender: str | None) -> mail.MailResult:
        incoming = mail.read_mail(raw, envelope_sender)
        return mail.ingest(
            self.factory, incoming, system_id=self.system_id, on_created=self.on_created
        )

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        sender = envelope.mail_from if isinstance(envelope.mail_from, str) else None
        if sender == "<>":  # aiosmtpd's null reverse-path: a bounce
            sender = ""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, self.take, raw, sender)
        except mail.MailRejected as exc:
            log.info("mail refused from=%s: %s", sender, exc)
            return f"552 5.3.4 {exc}"
        except Exception:
            log.exception("mail intake failed from=%s", sender)
            return "451 4.3.0 cpdops could not store the mail now; try again later"
        return f"250 2.0.0 {result.action} {result.ticket or ''}".rstrip()


class MailListener:
    """Starts and stops the SMTP server in its own thread (aiosmtpd's Controller)."""

    def __init__(self, handler: IntakeHandler, host: str, port: int, *, max_bytes: int) -> None:
        self.host, self.port = host, port
        self.controller = Controller(
            handler,
            hostname=host,
            port=port,
            server_hostname="cpdops",
            ident="cpdops intake",
            data_size_limit=max_bytes,
            enable_SMTPUTF8=True,
        )

    def start(self) -> None:
        self.controller.start()
        log.info("mail intake listening on %s:%s", self.host, self.port)

    def stop(self) -> None:
        self.controller.stop()
