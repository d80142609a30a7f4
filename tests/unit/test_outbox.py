"""The outbox's pure parts: back-off, the notification text in both languages, the mail."""

from __future__ import annotations

from email import message_from_bytes, policy
from typing import Any

import pytest

from orchestrator.incidents.notifiers.smtp import build_message, ticket_message_id
from orchestrator.incidents.outbox import Notification, backoff, dedup_key, render


@pytest.mark.parametrize(
    ("attempts", "rand", "expected"),
    [
        (0, 0.5, 0.0),
        (1, 0.5, 5.0),
        (2, 0.5, 10.0),
        (3, 0.5, 20.0),
        (3, 1.0, 22.0),
        (4, 0.5, 30.0),  # capped at 30 s: a receiver back after an outage waits at most that
        (10, 0.5, 30.0),
        (500, 0.5, 30.0),  # no overflow
        (1, 0.0, 4.5),  # -10 % jitter
        (1, 1.0, 5.5),  # +10 % jitter
        (20, 1.0, 33.0),  # jitter applies to the cap too
    ],
)
def test_backoff(attempts: int, rand: float, expected: float) -> None:
    assert backoff(attempts, rand=lambda: rand) == pytest.approx(expected)


def test_backoff_without_jitter_and_other_base() -> None:
    assert [backoff(n, base=1, cap=8, jitter=0) for n in range(1, 6)] == [1, 2, 4, 8, 8]
    assert backoff(11, cap=3600, jitter=0) == 3600.0  # a larger cap, configured


def test_dedup_key() -> None:
    assert (
        dedup_key("email", "a@b.ru", "2026120101000017", 42) == "email:a@b.ru:2026120101000017:42"
    )
    assert len(dedup_key("email", "x" * 400, "1", 1)) == 255


def _payload(**over: Any) -> dict[str, Any]:
    base = {
        "number": "2026120101000017",
        "subject": "SIP trunk DOWN",
        "type": "incident",
        "status": "new",
        "kind": "created",
        "comment": "",
        "language": "ru",
        "contact_name": "Иван",
    }
    return {**base, **over}


@pytest.mark.parametrize(
    ("over", "subject", "contains", "lacks"),
    [
        (
            {},
            "[Ticket#2026120101000017] SIP trunk DOWN",
            [
                "Здравствуйте, Иван!",
                "Зарегистрирована заявка 2026120101000017 (Инцидент).",
                "Статус: Новая",
                "[Ticket#2026120101000017]",
            ],
            ["Hello"],
        ),
        (
            {"language": "en"},
            "[Ticket#2026120101000017] SIP trunk DOWN",
            [
                "Hello Иван,",
                "Ticket 2026120101000017 (Incident) has been registered.",
                "Status: New",
            ],
            ["Здравствуйте"],
        ),
        (
            {"status": "solution_provided", "kind": "solution", "comment": "trunk re-registered"},
            "[Ticket#2026120101000017] SIP trunk DOWN",
            ["«Решение предоставлено»", "Решение:\ntrunk re-registered"],
            ["Comment"],
        ),
        (
            {
                "status": "solution_provided",
                "kind": "solution",
                "comment": "fixed",
                "language": "en",
            },
            "[Ticket#2026120101000017] SIP trunk DOWN",
            ["Solution provided", "Solution:\nfixed"],
            ["Решение"],
        ),
        (
            {
                "status": "awaiting_info",
                "kind": "status",
                "comment": "which extension?",
                "type": "mass_incident",
            },
            "[Ticket#2026120101000017] SIP trunk DOWN",
            ["изменён: «Запрошена информация»", "Комментарий:\nwhich extension?"],
            [],
        ),
        (
            {"language": "de", "contact_name": ""},  # anything but ru is English
            "[Ticket#2026120101000017] SIP trunk DOWN",
            ["has been registered"],
            ["Hello"],
        ),
    ],
)
def test_render(over: dict[str, Any], subject: str, contains: list[str], lacks: list[str]) -> None:
    out = render(_payload(**over))
    assert out.subject == subject
    for text in contains:
        assert text in out.body
    for text in lacks:
        assert text not in out.body


def test_build_message_threads_by_ticket() -> None:
    sender = "CPD support <support@cpd.example.ru>"
    first = build_message(Notification(7, "email", "ivan@t1.ru", _payload()), sender)
    later = build_message(
        Notification(9, "email", "ivan@t1.ru", _payload(kind="status", status="open")), sender
    )
    root = ticket_message_id("2026120101000017", sender)
    assert root == "<ticket-2026120101000017@cpd.example.ru>"
    assert first["Message-ID"] != later["Message-ID"]
    assert first["Message-ID"] == "<ticket-2026120101000017.7@cpd.example.ru>"
    for msg in (first, later):
        assert msg["In-Reply-To"] == root and msg["References"] == root
        assert msg["To"] == "ivan@t1.ru"
    parsed = message_from_bytes(first.as_bytes(), policy=policy.default)
    assert str(parsed["Subject"]) == "[Ticket#2026120101000017] SIP trunk DOWN"
    body = parsed.get_body(("plain",))
    assert body is not None and "Зарегистрирована заявка" in body.get_content()
