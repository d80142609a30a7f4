"""The HTTP notifiers' pure parts: Telegram splitting and answers, the webhook's body and
signature, the Znuny requests and answers, and the outbox's recipients per channel."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, get_args

import pytest

from orchestrator.db.models import Tenant
from orchestrator.fleet import fleetfile
from orchestrator.incidents import outbox, workflow
from orchestrator.incidents.notifiers import otrs, telegram, webhook
from orchestrator.incidents.notifiers.http import Answer
from orchestrator.incidents.outbox import Deferred, Notification


def _payload(**over: Any) -> dict[str, Any]:
    base = {
        "number": "2026120101000017",
        "subject": "SIP trunk DOWN",
        "type": "incident",
        "status": "new",
        "priority": "high",
        "kind": "created",
        "comment": "calls drop",
        "language": "ru",
        "tenant": "t0",
        "ticket_tenant": "t0",
        "contact_name": "Иван",
        "event_id": 42,
        "dedup_key": "webhook:t0:2026120101000017:42",
    }
    return {**base, **over}


# --------------------------------------------------------------------------- Telegram


@pytest.mark.parametrize(
    "text",
    [
        "короткий текст",
        "а" * 4096,
        "а" * 4097,
        ("строка текста\n" * 700),
        "слово " * 2000,
        "x" * 9000,  # no place to break: cut anywhere
        "😀" * 3000,  # two UTF-16 units each: never cut inside one
    ],
)
def test_split_text_gives_the_text_back_in_pieces_within_the_limit(text: str) -> None:
    pieces = telegram.split_text(text, 4096)
    assert "".join(pieces) == text
    assert all(0 < telegram.utf16_len(p) <= 4096 for p in pieces)


def test_split_prefers_a_line_break_then_a_space() -> None:
    text = "a" * 3000 + "\n" + "b" * 2500 + " " + "c" * 3000
    assert [len(p) for p in telegram.split_text(text, 4096)] == [3001, 2501, 3000]
    # A separator in the first half of a piece would make it too short: cut at the limit.
    text = "a" * 1000 + "\n" + "b" * 5000
    assert [len(p) for p in telegram.split_text(text, 4096)] == [4096, 1905]
    assert telegram.split_text("a" * 100 + " " + "b" * 4000, 4096) == [
        "a" * 100 + " " + "b" * 3995,
        "b" * 5,
    ]


def test_utf16_length_counts_astral_characters_twice() -> None:
    assert telegram.utf16_len("я😀") == 3
    assert telegram.split_text("😀" * 3, 5) == ["😀😀", "😀"]


def test_split_message_heads_parts_and_cuts_beyond_max_parts() -> None:
    assert telegram.split_message("hello") == ["hello"]
    two = telegram.split_message("a" * 5000)
    assert [p[:6] for p in two] == ["(1/2)\n", "(2/2)\n"]
    assert all(telegram.utf16_len(p) <= 4096 for p in two)
    assert "".join(p[6:] for p in two) == "a" * 5000
    many = telegram.split_message("ж" * 50_000, cut="\n[…текст сокращён]")
    assert len(many) == telegram.MAX_PARTS
    assert many[-1].endswith("[…текст сокращён]") and many[0].startswith("(1/4)\n")
    assert all(telegram.utf16_len(p) <= 4096 for p in many)


def test_message_parts_in_the_tenants_language() -> None:
    [ru] = telegram.message_parts(_payload())
    assert ru.startswith("[Ticket#2026120101000017] SIP trunk DOWN\n\nЗдравствуйте, Иван!")
    assert "Зарегистрирована заявка 2026120101000017 (Инцидент)." in ru
    assert "e-mail" not in ru and "письмо" not in ru  # no e-mail footer
    [en] = telegram.message_parts(_payload(language="en", kind="solution", comment="fixed"))
    assert "A solution has been provided" in en and "Solution:\nfixed" in en
    long = telegram.message_parts(_payload(comment="ы" * 20_000, language="en"))
    assert long[-1].endswith("[…text cut]")


def test_build_request() -> None:
    url, body = telegram.build_request("http://127.0.0.1:9/", "1:tok", "-1002", "привет")
    assert url == "http://127.0.0.1:9/bot1:tok/sendMessage"
    assert json.loads(body) == {"chat_id": -1002, "text": "привет"}
    assert (
        json.loads(telegram.build_request("https://x", "t", "@desk", "hi")[1])["chat_id"] == "@desk"
    )


def test_telegram_answers() -> None:
    telegram.parse_answer(Answer(200, b'{"ok":true,"result":{"message_id":1}}'))
    with pytest.raises(telegram.TelegramError, match="error 400: Bad Request: chat not found"):
        telegram.parse_answer(
            Answer(
                400, b'{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}'
            )
        )
    with pytest.raises(telegram.TelegramError, match="error 403"):
        telegram.parse_answer(Answer(200, b'{"ok":false,"error_code":403}'))
    with pytest.raises(Deferred) as deferred:
        telegram.parse_answer(
            Answer(429, b'{"ok":false,"error_code":429,"parameters":{"retry_after":12}}')
        )
    assert deferred.value.delay_s == 12
    with pytest.raises(telegram.TelegramError, match="HTTP 502 without a Bot API answer"):
        telegram.parse_answer(Answer(502, b"<html>Bad gateway</html>"))
    with pytest.raises(telegram.TelegramError):  # 429 without retry_after: an ordinary failure
        telegram.parse_answer(Answer(429, b'{"ok":false,"error_code":429}'))


def test_sender_repr_hides_the_token() -> None:
    sender = telegram.TelegramSender.from_settings({"bot_token": "1:s3cret"})
    assert "s3cret" not in repr(sender) and sender.api_url == "https://api.telegram.org"


# --------------------------------------------------------------------------- webhook


def test_webhook_body_headers_and_signature() -> None:
    note = Notification(7, "webhook", "t0", _payload())
    body = webhook.event_body(note)
    assert body == webhook.event_body(note), "stable bytes: a retry signs the same body"
    assert json.loads(body) == {
        "event_id": 42,
        "dedup_key": "webhook:t0:2026120101000017:42",
        "number": "2026120101000017",
        "type": "incident",
        "status": "new",
        "priority": "high",
        "kind": "created",
        "subject": "SIP trunk DOWN",
        "comment": "calls drop",
        "tenant": "t0",
        "ticket_tenant": "t0",
        "language": "ru",
    }
    headers = webhook.build_headers(note, body, "k3y", 1_700_000_000)
    expected = hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    assert headers == {
        "Content-Type": "application/json; charset=utf-8",
        "Idempotency-Key": "webhook:t0:2026120101000017:42",
        "X-Cpdops-Event": "created",
        "X-Cpdops-Timestamp": "1700000000",
        "X-Cpdops-Signature": f"sha256={expected}",
    }
    assert webhook.verify("k3y", body, headers["X-Cpdops-Signature"])
    assert not webhook.verify("other", body, headers["X-Cpdops-Signature"])
    assert not webhook.verify("k3y", body + b" ", headers["X-Cpdops-Signature"])
    assert "X-Cpdops-Signature" not in webhook.build_headers(note, body, None, 1)


def test_webhook_answers() -> None:
    for status in (200, 201, 202, 204):
        webhook.parse_answer(Answer(status, b""))
    with pytest.raises(webhook.WebhookError, match="HTTP 500: boom"):
        webhook.parse_answer(Answer(500, b"boom"))
    with pytest.raises(webhook.WebhookError, match="HTTP 302"):
        webhook.parse_answer(Answer(302, b""))
    with pytest.raises(Deferred) as deferred:
        webhook.parse_answer(Answer(429, b"", {"Retry-After": "30"}))
    assert deferred.value.delay_s == 30
    with pytest.raises(webhook.WebhookError):  # an HTTP date is not honoured: a plain retry
        webhook.parse_answer(Answer(503, b"", {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}))


# --------------------------------------------------------------------------- Znuny

CFG = otrs.ZnunyConfig.from_settings(
    {
        "url": "https://desk.example/otrs/",
        "webservice": "CPD Connector",
        "user_login": "cpdops",
        "password": "${ZN}",
        "queue": "Support",
    }
)


def test_znuny_urls_and_search() -> None:
    base = "https://desk.example/otrs/nph-genericinterface.pl/Webservice/CPD%20Connector/Ticket"
    assert CFG.ticket_url() == base and CFG.ticket_url("17") == f"{base}/17"
    assert otrs.search_query(CFG, "pw", "cpdops:desk:1") == (
        "UserLogin=cpdops&Password=pw&DynamicField_CpdopsKey=cpdops%3Adesk%3A1"
    )


def test_znuny_create_body() -> None:
    att = otrs.AttachmentData("shot.png", "image/png", b"\x89PNG")
    body = otrs.create_body(
        CFG,
        "pw",
        _payload(contact_name=""),
        key="cpdops:desk:N",
        customer_user="a@b.ru",
        attachments=[att],
    )
    assert body == {
        "UserLogin": "cpdops",
        "Password": "pw",
        "Ticket": {
            "Title": "SIP trunk DOWN",
            "Queue": "Support",
            "State": "new",
            "Priority": "4 high",
            "CustomerUser": "a@b.ru",
            "Type": "Unclassified",
        },
        "Article": {
            "CommunicationChannel": "Internal",
            "SenderType": "system",
            "IsVisibleForCustomer": 1,
            "Subject": "[Ticket#2026120101000017] SIP trunk DOWN",
            "Body": body["Article"]["Body"],
            "ContentType": "text/plain; charset=utf8",
        },
        "DynamicField": [
            {"Name": "CpdopsKey", "Value": "cpdops:desk:N"},
            {"Name": "CpdopsTicketNumber", "Value": "2026120101000017"},
        ],
        "Attachment": [
            {
                "Content": base64.b64encode(b"\x89PNG").decode(),
                "ContentType": "image/png",
                "Filename": "shot.png",
            }
        ],
    }
    assert body["Article"]["Body"].startswith("Зарегистрирована заявка 2026120101000017")
    assert "Attachment" not in otrs.create_body(CFG, "pw", _payload(), key="k", customer_user="a@b")


@pytest.mark.parametrize(
    ("status", "kind", "ticket"),
    [
        ("open", "status", {"State": "open"}),
        ("awaiting_info", "status", {"State": "pending reminder", "PendingTime": {"Diff": 10080}}),
        (
            "solution_provided",
            "solution",
            {"State": "pending auto close+", "PendingTime": {"Diff": 10080}},
        ),
        ("closed", "status", {"State": "closed successful"}),
        ("open", "created", None),  # not a status change: an article only
    ],
)
def test_znuny_update_body(status: str, kind: str, ticket: dict[str, Any] | None) -> None:
    body = otrs.update_body(CFG, "pw", _payload(status=status, kind=kind))
    assert body.get("Ticket") == ticket
    assert set(body) == {"UserLogin", "Password", "Article"} | ({"Ticket"} if ticket else set())


def test_znuny_overrides() -> None:
    cfg = otrs.ZnunyConfig.from_settings(
        {
            **{
                "url": "http://z",
                "webservice": "W",
                "user_login": "u",
                "password": "p",
                "queue": "Q",
            },
            "states": {"solution_provided": "closed successful"},
            "types": {"mass_incident": "Incident::Major"},
            "priorities": {"high": "5 very high"},
            "pending_for": 3600.0,
        }
    )
    body = otrs.create_body(cfg, "p", _payload(type="mass_incident"), key="k", customer_user="c@d")
    assert (body["Ticket"]["Type"], body["Ticket"]["Priority"]) == (
        "Incident::Major",
        "5 very high",
    )
    assert otrs.update_body(cfg, "p", _payload(status="solution_provided", kind="solution"))[
        "Ticket"
    ] == {"State": "closed successful"}
    assert otrs.update_body(cfg, "p", _payload(status="awaiting_info", kind="status"))[
        "Ticket"
    ] == {
        "State": "pending reminder",
        "PendingTime": {"Diff": 60},
    }


def test_znuny_answers() -> None:
    ok = Answer(200, b'{"TicketID":"17","TicketNumber":"2026120210000017","ArticleID":55}')
    assert otrs.parse_ticket_answer(ok, "TicketCreate") == otrs.Remote("17", "2026120210000017")
    error = Answer(
        200,
        b'{"Error":{"ErrorCode":"TicketCreate.AuthFail","ErrorMessage":"Authorization failing!"}}',
    )
    with pytest.raises(
        otrs.ZnunyError, match=r"TicketCreate: TicketCreate\.AuthFail: Authorization"
    ):
        otrs.parse_ticket_answer(error, "TicketCreate")
    with pytest.raises(otrs.ZnunyError, match="HTTP 500"):
        otrs.parse_ticket_answer(Answer(500, b"{}"), "TicketUpdate")
    with pytest.raises(otrs.ZnunyError, match="no TicketID"):
        otrs.parse_ticket_answer(Answer(200, b"{}"), "TicketCreate")
    assert otrs.parse_search_answer(Answer(200, b"{}")) == []
    assert otrs.parse_search_answer(Answer(200, b'{"TicketID":["3","12"]}')) == ["3", "12"]
    got = Answer(200, b'{"Ticket":[{"TicketID":"3","TicketNumber":"N3"}]}')
    assert otrs.parse_get_answer(got, "3") == otrs.Remote("3", "N3")


def test_znuny_state_map_covers_every_status() -> None:
    assert set(otrs.STATES) == set(workflow.STATUSES)
    assert set(otrs.PRIORITIES) == set(workflow.PRIORITIES)
    assert set(get_args(fleetfile.TicketStatus)) == set(workflow.STATUSES)
    assert set(get_args(fleetfile.TicketType)) == set(workflow.TYPES)
    assert set(get_args(fleetfile.TicketPriority)) == set(workflow.PRIORITIES)


# --------------------------------------------------------------------------- the outbox


def test_recipients_per_channel() -> None:
    tenant = Tenant(
        slug="t0",
        name="Ромашка",
        contacts=[
            {"name": "Иван", "email": "ivan@t0.ru", "telegram_chat_id": "1001"},
            {"name": "Ops", "telegram_chat_id": "1002"},
            {"name": "Phone", "phone": "+7 900"},
        ],
        channels=["email", "telegram", "webhook", "otrs"],
    )
    assert outbox.recipients(tenant) == [
        ("email", "ivan@t0.ru", "Иван"),
        ("telegram", "1001", "Иван"),
        ("telegram", "1002", "Ops"),
        ("webhook", "t0", "Ромашка"),
        ("otrs", "ticket", ""),
    ]


def test_every_channel_has_a_notifier_and_every_kind_a_fleet_spec() -> None:
    assert set(outbox.CHANNEL_KINDS) == set(fleetfile.CHANNELS)
    assert (
        set(outbox.CHANNEL_KINDS.values()) == set(outbox.NOTIFIERS) == set(fleetfile.NOTIFIER_KINDS)
    )


def test_dedup_key_of_parts() -> None:
    assert outbox.dedup_key("telegram", "1001", "N", 5) == "telegram:1001:N:5"
    assert outbox.dedup_key("telegram", "1001", "N", 5, 2) == "telegram:1001:N:5.2"
    long = outbox.dedup_key("telegram", "x" * 400, "N", 5, 3)
    assert len(long) == 255 and long.endswith(".3")


def test_permanent_rejections_are_permanent() -> None:
    """4xx other than 408/429 (webhook), 400/403 (Telegram), 5xx (SMTP): dead at once."""
    import smtplib

    from orchestrator.incidents.notifiers import smtp
    from orchestrator.incidents.outbox import Permanent

    for status in (400, 401, 403, 404, 410, 413, 422):
        with pytest.raises(webhook.WebhookRejected, match=f"HTTP {status}"):
            webhook.parse_answer(Answer(status, b"nope"))
    for status in (408, 429, 500, 502, 503, 302):
        with pytest.raises(webhook.WebhookError) as info:
            webhook.parse_answer(Answer(status, b""))
        assert not isinstance(info.value, Permanent), status
    for code in (400, 403):
        body = f'{{"ok":false,"error_code":{code},"description":"Forbidden: bot was blocked"}}'
        with pytest.raises(telegram.TelegramRejected, match=f"error {code}"):
            telegram.parse_answer(Answer(code, body.encode()))
    for code in (401, 500):
        with pytest.raises(telegram.TelegramError) as tg:
            telegram.parse_answer(Answer(code, f'{{"ok":false,"error_code":{code}}}'.encode()))
        assert not isinstance(tg.value, Permanent), code

    refused = smtplib.SMTPRecipientsRefused({"a@b.example": (550, b"5.1.1 no such user")})
    rejected = smtp.permanent_rejection(refused)
    assert isinstance(rejected, Permanent)
    assert str(rejected) == "a@b.example: 550 5.1.1 no such user"
    assert (
        smtp.permanent_rejection(
            smtplib.SMTPRecipientsRefused({"a@b.example": (450, b"mailbox busy")})
        )
        is None
    )
    assert str(smtp.permanent_rejection(smtplib.SMTPDataError(554, b"spam"))) == "554 spam"
    assert smtp.permanent_rejection(smtplib.SMTPDataError(451, b"later")) is None
    assert smtp.permanent_rejection(smtplib.SMTPServerDisconnected("gone")) is None
    assert smtp.permanent_rejection(smtplib.SMTPAuthenticationError(535, b"bad login")) is None
    sender = smtplib.SMTPSenderRefused(553, b"not yours", "support@cpd.example.ru")
    assert str(smtp.permanent_rejection(sender)) == "553 not yours"
