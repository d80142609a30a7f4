"""The inbound mail intake's pure parts: reading a mail (RFC 2047 subjects, charsets,
multipart/mixed + alternative, HTML-only bodies, attachments), loop and auto-reply detection,
the ticket subject."""

from __future__ import annotations

import hashlib
from datetime import date
from email.message import EmailMessage

import pytest

from orchestrator.incidents.attachments import MAX_ATTACHMENT_BYTES
from orchestrator.incidents.mail import (
    MailRejected,
    decide,
    html_to_text,
    read_mail,
    ticket_subject,
)
from orchestrator.incidents.numbers import format_number
from orchestrator.incidents.receipts import receipt_id

N1 = format_number(date(2026, 12, 1), "01", 17)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def test_russian_rfc2047_subject_and_koi8_body() -> None:
    raw = crlf(
        "From: =?utf-8?b?0JjQstCw0L0=?= <Ivan@Acme.Example>\n"
        "To: support@cpd.example.ru\n"
        "Subject: =?utf-8?b?0J3QtSDQv9GA0L7RhdC+0LTRj9GCINC30LLQvtC90LrQuA==?=\n"
        "Message-ID: <m1@acme.example>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=koi8-r\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
    ) + "Звонки обрываются\r\n".encode("koi8-r")
    mail = read_mail(raw)
    assert mail.subject == "Не проходят звонки"
    assert mail.text == "Звонки обрываются"
    assert mail.sender == "ivan@acme.example"
    assert mail.message_id == "<m1@acme.example>"
    assert (mail.attachments, mail.mentioned, mail.loop, mail.automatic) == ((), (), False, False)


def test_subject_encoded_in_koi8_q_split_words() -> None:
    encoded = "".join(f"={b:02X}" for b in "Ошибка".encode("koi8-r"))
    raw = crlf(
        f"From: a@b.example\nSubject: =?koi8-r?q?{encoded}?= =?utf-8?q?_[Ticket#{N1}]?=\n\nx\n"
    )
    mail = read_mail(raw)
    assert mail.subject == f"Ошибка [Ticket#{N1}]"
    assert mail.mentioned == (N1,)


def test_mixed_alternative_with_attachments() -> None:
    msg = EmailMessage()
    msg["From"] = "Иван Петров <ivan@acme.example>"
    msg["Subject"] = f"Re: [Ticket#{N1}] Не работает портал"
    msg["Message-ID"] = "<m2@acme.example>"
    msg.set_content("Текст письма\nвторая строка")
    msg.add_alternative("<p>Текст <b>письма</b></p><p>вторая строка</p>", subtype="html")
    msg.add_attachment(b"\x89PNG...", maintype="image", subtype="png", filename="снимок.png")
    msg.add_attachment("лог\n", subtype="plain", filename="portal.log")
    inner = EmailMessage()
    inner["Subject"] = "forwarded"
    inner.set_content("old")
    msg.add_attachment(inner)
    mail = read_mail(msg.as_bytes())
    assert mail.text == "Текст письма\nвторая строка"
    assert [(a.filename, a.content_type) for a in mail.attachments] == [
        ("снимок.png", "image/png"),
        ("portal.log", "text/plain"),
        ("forwarded.eml", "message/rfc822"),
    ]
    assert mail.attachments[0].content == b"\x89PNG..."
    assert mail.attachments[1].content.decode() == "лог\n"
    assert b"Subject: forwarded" in mail.attachments[2].content
    assert mail.mentioned == (N1,)
    assert ticket_subject(mail) == "Не работает портал"


def test_html_only_body_becomes_text() -> None:
    msg = EmailMessage()
    msg["From"] = "a@b.example"
    msg["Subject"] = "html"
    msg.set_content(
        "<html><head><style>p{color:red}</style></head><body><p>Строка&nbsp;1</p>"
        "<div>Строка <i>2</i></div><script>alert(1)</script></body></html>",
        subtype="html",
    )
    mail = read_mail(msg.as_bytes())
    assert mail.text == "Строка 1\n\nСтрока 2"  # no style, no script; &nbsp; is a space
    assert mail.attachments == ()
    assert html_to_text("a<br>b<br><br><br><br>c") == "a\nb\n\nc"


def test_broken_charset_and_no_message_id() -> None:
    raw = crlf(
        "From: a@b.example\nSubject: x\nContent-Type: text/plain; charset=x-unknown\n\nhello\n"
    )
    mail = read_mail(raw)
    assert mail.text == "hello"
    assert mail.message_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    raw = crlf("From: a@b.example\nSubject: x\n\nnul\x00here\n")
    assert read_mail(raw).text == "nulhere"


def test_malformed_headers_do_not_raise() -> None:
    raw = crlf("From: <<<@@@\nSubject: =?utf-8?b?####?=\nMessage-ID: \n\nbody\n")
    mail = read_mail(raw)
    assert mail.text == "body" and mail.message_id.startswith("sha256:")
    assert read_mail(b"").text == ""


def test_an_attachment_over_the_limit_refuses_the_mail() -> None:
    msg = EmailMessage()
    msg["From"] = "a@b.example"
    msg.set_content("see attached")
    msg.add_attachment(
        b"x" * (MAX_ATTACHMENT_BYTES + 1), maintype="application", subtype="zip", filename="b.zip"
    )
    with pytest.raises(MailRejected, match=r"b\.zip"):
        read_mail(msg.as_bytes())


@pytest.mark.parametrize(
    ("headers", "envelope", "expected"),
    [
        ("From: ivan@acme.example\n", "ivan@acme.example", "take"),
        (f"From: support@cpd.example.ru\nX-Cpdops-Ticket: {N1}\n", None, "loop"),
        ("From: CPD <Support@CPD.example.ru>\n", None, "loop"),  # our sender, no header
        (f"From: ivan@acme.example\nX-Cpdops-Ticket: {N1}\n", None, "loop"),  # forwarded back
        ("From: ivan@acme.example\nAuto-Submitted: auto-replied\n", None, "automatic"),
        ("From: ivan@acme.example\nAuto-Submitted: no\n", None, "take"),
        ("From: mailer-daemon@acme.example\n", "", "automatic"),  # null reverse-path: a bounce
        (
            "From: postmaster@acme.example\nContent-Type: multipart/report; boundary=b\n",
            "postmaster@acme.example",
            "automatic",
        ),
    ],
)
def test_loops_and_automatic_mail(headers: str, envelope: str | None, expected: str) -> None:
    mail = read_mail(crlf(f"{headers}Subject: [Ticket#{N1}] x\n\nbody\n"), envelope)
    assert decide(mail, {"support@cpd.example.ru"}) == expected


def test_ticket_subject() -> None:
    def subject(s: str, body: str = "") -> str:
        return ticket_subject(
            read_mail(crlf(f"From: a@b.example\nSubject: {s}\n\n") + body.encode())
        )

    assert subject("RE: Fwd: AW: Портал") == "Портал"
    assert subject("Re[2]: Портал") == "Портал"
    assert subject("") == "E-mail from a@b.example"
    assert subject("", "\n\nfirst line\nsecond") == "first line"
    assert len(subject("x" * 900)) == 500


def test_long_message_ids_are_kept_as_their_hash() -> None:
    short, long = "<a@b>", "<" + "x" * 300 + "@b>"
    assert receipt_id(short) == short
    assert receipt_id(long) == "sha256:" + hashlib.sha256(long.encode()).hexdigest()
    assert receipt_id(long) != receipt_id(long[:-3] + "y@b>")
    assert len(receipt_id(long)) <= 255
