"""Inbound e-mail end to end, on SQLite and PostgreSQL: a real ``cpdops serve`` with its SMTP
listener (``CPDOPS_SMTP_LISTEN``) on 127.0.0.1, and a real SMTP client (smtplib) sending to it.
The server (and with it the listener) is stopped by its context manager, also on failure."""

from __future__ import annotations

import contextlib
import smtplib
import socket
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from orchestrator.db.migrate import upgrade
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.incidents.notifiers.smtp import build_message
from orchestrator.incidents.outbox import Notification
from orchestrator.settings import Settings
from tests.integration.fleet import free_port
from tests.integration.server import bearer, make_token, running_server

OUR_SENDER = "CPD support <support@cpd.example.ru>"
FLEET = """
version: 1
tenants:
  - slug: acme
    name: ACME
    language: ru
    contacts: [{name: Ivan, email: Ivan@Acme.Example}]
    channels: [email]
  - slug: globex
    name: Globex
    contacts: [{name: Gleb, email: gleb@globex.example}]
notifiers:
  - name: mail
    kind: smtp
    host: 127.0.0.1
    port: 9
    sender: "CPD support <support@cpd.example.ru>"
"""
SMTP_POLICY = policy.SMTP  # CRLF line ends, as on the wire
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20


@contextlib.contextmanager
def cpdops(db_url: str, max_bytes: int = 1024 * 1024) -> Iterator[tuple[httpx.Client, int]]:
    engine = make_engine(db_url)
    upgrade(engine)
    with session_scope(make_session_factory(engine)) as s:
        apply_fleet(s, parse_fleet_text(FLEET))
    engine.dispose()
    port = free_port()
    settings = Settings(
        database_url=db_url,
        run_monitors=False,
        run_scheduler=False,
        smtp_listen=f"127.0.0.1:{port}",
        smtp_max_bytes=max_bytes,
    )
    with (
        running_server(settings) as base,
        httpx.Client(
            base_url=base, timeout=30, headers=bearer(make_token(settings, "operator"))
        ) as client,
    ):
        yield client, port


def send(port: int, msg: EmailMessage, envelope_from: str | None = None) -> tuple[int, bytes]:
    """Send ``msg`` over SMTP; the server's reply to the data."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        sender = envelope_from if envelope_from is not None else str(msg["From"])
        smtp.ehlo()
        code, _ = smtp.mail(sender)
        assert code == 250
        code, _ = smtp.rcpt("support@cpd.example.ru")
        assert code == 250
        return smtp.data(msg.as_bytes(policy=SMTP_POLICY))


def mail(
    subject: str, body: str, *, sender: str = "Иван <ivan@acme.example>", mid: str
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "support@cpd.example.ru"
    msg["Subject"] = subject
    msg["Message-ID"] = mid
    msg.set_content(body)
    return msg


def tickets(api: httpx.Client) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.get("/api/v1/incidents").json()
    return found


def test_mail_opens_a_ticket_a_reply_joins_it_exactly_once(db_url: str) -> None:
    with cpdops(db_url) as (api, port):
        first = mail("Не работает портал", "С утра ошибка 502", mid="<first@acme.example>")
        first.add_alternative("<p>С утра ошибка <b>502</b></p>", subtype="html")
        first.add_attachment(PNG, maintype="image", subtype="png", filename="снимок экрана.png")
        raw = first.as_bytes(policy=SMTP_POLICY)
        assert b"=?utf-8?" in raw and "Не работает".encode() not in raw  # RFC 2047 on the wire
        code, reply = send(port, first)
        assert code == 250 and reply.startswith(b"2.0.0 created "), reply
        number = reply.split()[-1].decode()
        ticket = api.get(f"/api/v1/incidents/{number}").json()
        assert (ticket["subject"], ticket["tenant"], ticket["type"], ticket["source"]) == (
            "Не работает портал",
            "acme",
            "consultation",
            "email",
        )
        assert ticket["description"] == "С утра ошибка 502"
        [att] = ticket["attachments"]
        assert (att["filename"], att["content_type"], att["size"]) == (
            "снимок экрана.png",
            "image/png",
            len(PNG),
        )
        assert api.get(f"/api/v1/incidents/{number}/attachments/{att['id']}").content == PNG
        assert ticket["events"][0]["author"] == "email:ivan@acme.example"

        # The same Message-ID again (a retrying server): accepted, nothing added.
        code, reply = send(port, first)
        assert (code, reply) == (250, b"2.0.0 duplicate")
        assert [t["number"] for t in tickets(api)] == [number]

        # Solved; the customer's reply keeping [Ticket#…] joins it and reopens it.
        r = api.post(
            f"/api/v1/incidents/{number}/status",
            json={"status": "solution_provided", "comment": "Перезапустили", "author": "eng"},
        )
        assert r.status_code == 200
        answer = mail(
            f"RE: [Ticket#{number}] Не работает портал",
            "Снова 502\n\n> старое письмо",
            sender="IVAN@ACME.EXAMPLE",
            mid="<reply@acme.example>",
        )
        answer.add_attachment(b"log line\n", maintype="text", subtype="plain", filename="a.log")
        code, reply = send(port, answer)
        assert (code, reply) == (250, f"2.0.0 commented {number}".encode())
        ticket = api.get(f"/api/v1/incidents/{number}").json()
        assert ticket["status"] == "open"
        [comment] = [e for e in ticket["events"] if e["kind"] == "comment"]
        assert comment["body"].startswith("Снова 502") and comment["data"]["customer"] is True
        assert [a["filename"] for a in ticket["attachments"]] == ["снимок экрана.png", "a.log"]
        assert send(port, answer) == (250, b"2.0.0 duplicate")
        assert len(api.get(f"/api/v1/incidents/{number}").json()["attachments"]) == 2

        # Someone else naming acme's ticket opens a ticket of their own.
        stranger = mail(f"[Ticket#{number}] hi", "me too", sender="x@stranger.example", mid="<s@x>")
        code, reply = send(port, stranger)
        assert code == 250 and reply.startswith(b"2.0.0 created ")
        other = reply.split()[-1].decode()
        assert other != number and api.get(f"/api/v1/incidents/{other}").json()["tenant"] is None
        metrics = api.get("/metrics").text
        assert 'cpdops_incidents_created_total{source="email",type="consultation"} 2.0' in metrics
    # cpdops stopped: so is its listener.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_our_own_mail_and_automatic_replies_do_not_loop(db_url: str) -> None:
    with cpdops(db_url) as (api, port):
        code, reply = send(port, mail("Портал", "текст", mid="<base@acme.example>"))
        assert code == 250
        number = reply.split()[-1].decode()
        # A notification exactly as the outbox sends it, delivered back to us.
        ours = build_message(
            Notification(
                id=7,
                channel="email",
                recipient="ivan@acme.example",
                payload={
                    "number": number,
                    "subject": "Портал",
                    "type": "consultation",
                    "status": "open",
                    "kind": "status",
                    "language": "ru",
                },
            ),
            OUR_SENDER,
        )
        assert send(port, ours) == (250, b"2.0.0 ignored")
        # Our sender without the header; an out-of-office reply; a bounce (null sender).
        plain = mail(f"[Ticket#{number}] x", "y", sender=OUR_SENDER, mid="<o1@cpd.example.ru>")
        assert send(port, plain) == (250, b"2.0.0 ignored")
        away = mail(f"Автоответ: [Ticket#{number}] Портал", "Я в отпуске", mid="<o2@acme.example>")
        away["Auto-Submitted"] = "auto-replied"
        assert send(port, away) == (250, b"2.0.0 ignored")
        bounce = mail(
            f"Undeliverable: [Ticket#{number}]",
            "failed",
            sender="mailer-daemon@acme.example",
            mid="<o3@x>",
        )
        assert send(port, bounce, envelope_from="") == (250, b"2.0.0 ignored")
        ticket = api.get(f"/api/v1/incidents/{number}").json()
        assert [e["kind"] for e in ticket["events"]] == ["created"]
        assert len(tickets(api)) == 1


def test_size_limits_refuse_the_whole_mail(db_url: str) -> None:
    with cpdops(db_url, max_bytes=64 * 1024) as (api, port):
        big = mail("большое", "см. вложение", mid="<big@acme.example>")
        big.add_attachment(b"x" * 100_000, maintype="application", subtype="zip", filename="b.zip")
        code, reply = send(port, big)
        assert code == 552 and b"Too much mail data" in reply
        # SIZE is advertised, so a client that declares the size is refused at MAIL FROM.
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.ehlo()
            assert smtp.esmtp_features["size"] == str(64 * 1024)
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                smtp.send_message(big)
            assert info.value.smtp_code == 552
        assert tickets(api) == []
        # Under the limit, the mail is stored.
        code, _ = send(port, mail("малое", "ok", mid="<small@acme.example>"))
        assert code == 250 and len(tickets(api)) == 1
