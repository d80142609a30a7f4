"""The Telegram intake's pure parts: reading an ``Update`` into what to take in (table-driven),
ticket numbers named in a text, the subject, the author, the tenant of a chat."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.db.models import Tenant
from orchestrator.incidents.numbers import format_number
from orchestrator.incidents.receipts import mentioned_numbers, tenant_for
from orchestrator.incidents.telegram import (
    MAX_SUBJECT,
    TelegramUpdate,
    TgChat,
    TgUser,
    author_of,
    read_update,
    subject_of,
)

N1 = format_number(date(2026, 12, 1), "01", 17)
N2 = format_number(date(2026, 12, 2), "01", 3)
BAD_CHECK = N1[:-1] + str((int(N1[-1]) + 1) % 10)


def update(**message: Any) -> TelegramUpdate:
    body = {
        "update_id": 7,
        "message": {
            "message_id": 11,
            "from": {"id": 1001, "first_name": "Ivan", "username": "ivanov"},
            "chat": {"id": 1001, "type": "private"},
            "date": 1796112000,
            **message,
        },
    }
    return TelegramUpdate.model_validate(body)


def test_numbers_named_in_a_text() -> None:
    assert mentioned_numbers(f"Re: [Ticket#{N1}] still down") == [N1]
    assert mentioned_numbers(f"see #{N2} and Ticket#{N1}, again #{N2}") == [N2, N1]
    assert mentioned_numbers(f"[ticket#{N1}]") == [N1]
    # a wrong check digit, too few or too many digits, or no marker: not a ticket
    assert mentioned_numbers(f"#{BAD_CHECK} #{N1[:-1]} #{N1}9 {N1}") == []


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"text": "Calls drop\nsince 10:00"}, ("Calls drop\nsince 10:00", None, ())),
        ({"text": f"[Ticket#{N1}] still broken"}, (f"[Ticket#{N1}] still broken", None, (N1,))),
        ({"caption": "look", "photo": []}, ("look", None, ())),
        (
            {
                "caption": "screen",
                "photo": [
                    {"file_id": "small", "file_unique_id": "s", "width": 90, "height": 60},
                    {"file_id": "big", "file_unique_id": "b", "width": 1280, "height": 853},
                    {"file_id": "mid", "file_unique_id": "m", "width": 320, "height": 213},
                ],
            },
            ("screen", "big", ()),
        ),
        (
            {"document": {"file_id": "doc1", "file_name": "log.txt", "mime_type": "text/plain"}},
            ("", "doc1", ()),
        ),
        ({"text": "/start"}, None),
        ({"text": "/start@cpd_support_bot"}, None),
        ({"text": "/help"}, None),
        ({"text": " /start \n"}, None),
        ({"text": "   "}, None),
        ({"sticker": {"file_id": "x"}}, None),
        ({"text": "/start the portal is down"}, ("/start the portal is down", None, ())),
        ({"text": "a\x00b"}, ("ab", None, ())),
    ],
)
def test_read_update(
    message: dict[str, Any], expected: tuple[str, str | None, tuple[str, ...]] | None
) -> None:
    got = read_update(update(**message))
    if expected is None:
        assert got is None
        return
    assert got is not None
    text, file_id, mentioned = expected
    assert (got.text, got.file.file_id if got.file else None, got.mentioned) == (
        text,
        file_id,
        mentioned,
    )
    assert (got.update_id, got.chat_id, got.message_id, got.author) == (
        7,
        "1001",
        11,
        "telegram:@ivanov",
    )


def test_photo_names_and_document_types() -> None:
    got = read_update(update(photo=[{"file_id": "p", "file_unique_id": "AQAD", "file_size": 5}]))
    assert got is not None and got.file is not None
    assert (got.file.filename, got.file.content_type, got.file.size) == (
        "photo-AQAD.jpg",
        "image/jpeg",
        5,
    )
    got = read_update(
        update(document={"file_id": "d", "file_name": "a.pdf", "mime_type": "application/pdf"})
    )
    assert got is not None and got.file is not None
    assert (got.file.filename, got.file.content_type) == ("a.pdf", "application/pdf")


def test_reply_carries_the_replied_message() -> None:
    got = read_update(
        update(
            text="it is down again",
            reply_to_message={"message_id": 5, "text": f"Ticket {N1}: [Ticket#{N1}] registered"},
        )
    )
    assert got is not None
    assert (got.reply_to, got.reply_mentioned, got.mentioned) == (5, (N1,), ())


def test_other_update_kinds_are_ignored() -> None:
    edited = TelegramUpdate.model_validate(
        {"update_id": 3, "edited_message": {"message_id": 1, "chat": {"id": 1}, "text": "x"}}
    )
    assert edited.message is None and read_update(edited) is None


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"message": {}}, ("update_id",)),
        ({"update_id": -1}, ("update_id",)),
        ({"update_id": 1, "message": {"message_id": 1}}, ("message", "chat")),
        (
            {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 2**70}}},
            ("message", "chat", "id"),
        ),
        (
            {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 1}, "photo": [{}]}},
            ("message", "photo", 0, "file_id"),
        ),
    ],
)
def test_update_schema_names_the_bad_field(body: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        TelegramUpdate.model_validate(body)
    assert info.value.errors()[0]["loc"] == loc


def test_subject_is_the_first_line_cut_at_a_word() -> None:
    assert subject_of("\n  Calls drop  \nmore", "fallback") == "Calls drop"
    assert subject_of("", "Telegram: (photo-1.jpg) from telegram:@x") == (
        "Telegram: (photo-1.jpg) from telegram:@x"
    )
    long = "word " * 100
    cut = subject_of(long, "x")
    assert len(cut) <= MAX_SUBJECT and cut.endswith("word…")


def test_author() -> None:
    chat = TgChat(id=-100200)
    assert author_of(TgUser(id=5, username="ivanov"), chat) == "telegram:@ivanov"
    assert author_of(TgUser(id=5, first_name="Иван", last_name="Петров"), chat) == (
        "telegram:Иван Петров (5)"
    )
    assert author_of(TgUser(id=5), chat) == "telegram:5"
    assert author_of(None, chat) == "telegram:-100200"
    assert len(author_of(TgUser(id=5, first_name="x" * 256), chat)) == 100


def test_tenant_of_a_contact() -> None:
    tenants = [
        Tenant(
            slug="acme",
            contacts=[{"name": "A", "telegram_chat_id": "1001", "email": "Ops@Acme.ru"}],
        ),
        Tenant(slug="globex", contacts=[{"name": "G", "telegram_chat_id": "-100200"}]),
        Tenant(slug="both1", contacts=[{"name": "S", "email": "shared@x.ru"}]),
        Tenant(slug="both2", contacts=[{"name": "S", "email": "shared@x.ru"}]),
    ]
    assert tenant_for(tenants, "telegram_chat_id", "1001") == "acme"
    assert tenant_for(tenants, "telegram_chat_id", "-100200") == "globex"
    assert tenant_for(tenants, "telegram_chat_id", "42") is None
    assert tenant_for(tenants, "email", "ops@acme.RU") == "acme"
    assert tenant_for(tenants, "email", "shared@x.ru") is None  # two tenants: nobody's
    assert tenant_for(tenants, "email", "") is None
