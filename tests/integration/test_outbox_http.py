"""The outbox's HTTP notifiers against local stand-ins (``http_fakes``) that check every
field of the request, on SQLite and PostgreSQL: Telegram (split at 4096, paced per chat,
``retry_after`` honoured, the token kept secret), the signed webhook, Znuny (one remote
ticket, created then updated, no duplicate after a lost answer), and each connector down for
a while delivering everything once it is back, exactly once."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.migrate import upgrade
from orchestrator.db.models import Incident, Notifier, OutboxMessage, RemoteTicket, Tenant
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from orchestrator.incidents import outbox
from orchestrator.incidents.attachments import add_attachment
from orchestrator.incidents.notifiers.telegram import message_text
from orchestrator.incidents.tickets import change_status, create_ticket, open_or_join
from tests.integration.http_fakes import (
    FakeReceiver,
    FakeTelegram,
    FakeZnuny,
    HttpServer,
    Reply,
)

TOKEN = "7310042:AAF-test-SECRET-token"
HOOK_SECRET = "hook-s3cret"


def _serve(service: Any) -> Iterator[HttpServer]:
    server = HttpServer(service)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def telegram() -> Iterator[HttpServer]:
    yield from _serve(FakeTelegram(TOKEN))


@pytest.fixture
def receiver() -> Iterator[HttpServer]:
    yield from _serve(FakeReceiver(HOOK_SECRET))


@pytest.fixture
def znuny() -> Iterator[HttpServer]:
    yield from _serve(FakeZnuny())


@pytest.fixture
def store(
    db_url: str,
    telegram: HttpServer,
    receiver: HttpServer,
    znuny: HttpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[sessionmaker[Session]]:
    monkeypatch.setenv("CPDOPS_TEST_TG_TOKEN", TOKEN)
    engine = make_engine(db_url)
    upgrade(engine)
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        s.add_all(
            [
                Tenant(
                    slug="t0",
                    name="Ромашка",
                    language="ru",
                    contacts=[
                        {"name": "Иван", "email": "ivan@t0.example", "telegram_chat_id": "1001"},
                        {"name": "Ops", "telegram_chat_id": "-1002"},
                    ],
                    channels=["telegram", "webhook", "otrs"],
                ),
                Tenant(
                    slug="t1",
                    name="Acme",
                    language="en",
                    contacts=[
                        {"name": "Ann", "email": "ann@t1.example", "telegram_chat_id": "2001"}
                    ],
                    channels=["telegram", "webhook", "otrs"],
                ),
                Tenant(slug="t2", name="Quiet", language="ru", contacts=[], channels=[]),
                Notifier(
                    name="tg",
                    kind="telegram",
                    settings={"bot_token": "${CPDOPS_TEST_TG_TOKEN}", "api_url": telegram.url},
                ),
                Notifier(
                    name="hook",
                    kind="webhook",
                    settings={"url": f"{receiver.url}/hooks/cpdops", "secret": HOOK_SECRET},
                ),
                Notifier(
                    name="desk",
                    kind="otrs",
                    settings={
                        "url": f"{znuny.url}/otrs",
                        "webservice": "CPD",
                        "user_login": "cpdops",
                        "password": "zn-s3cret",
                        "queue": "Support",
                        "customer_user": "major@vendor.example",
                    },
                ),
            ]
        )
    yield factory
    engine.dispose()


def _only(factory: sessionmaker[Session], *channels: str) -> None:
    """Give every tenant only ``channels`` (the tests look at one connector at a time)."""
    with session_scope(factory) as s:
        for tenant in s.scalars(select(Tenant)):
            if tenant.channels:
                tenant.channels = [c for c in tenant.channels if c in channels]


def _ticket(s: Session, tenant: str, subject: str = "SIP trunk DOWN", desc: str = "calls drop"):  # type: ignore[no-untyped-def]
    return create_ticket(
        s,
        system_id="01",
        type="incident",
        subject=subject,
        description=desc,
        author="eng",
        tenant=tenant,
        priority="high",
    )


def _rows(factory: sessionmaker[Session], channel: str | None = None) -> list[OutboxMessage]:
    with factory() as s:
        query = select(OutboxMessage).order_by(OutboxMessage.id)
        if channel:
            query = query.where(OutboxMessage.channel == channel)
        return list(s.scalars(query))


_T0: list[datetime] = []


@pytest.fixture(autouse=True)
def _clock() -> Iterator[None]:
    """The test's clock: ``_at(0)`` is a moment after every row the test makes is due."""
    _T0[:] = [datetime.now(UTC) + timedelta(seconds=5)]
    yield


def _at(seconds: float) -> datetime:
    return _T0[0] + timedelta(seconds=seconds)


def _drain(factory: sessionmaker[Session], start: float, step: float = 1.0) -> float:
    """Run the worker, moving the clock, until nothing is pending; returns the clock."""
    clock = start
    for _ in range(200):
        outbox.deliver_due(factory, _at(clock))
        if all(r.state != "pending" for r in _rows(factory)):
            return clock
        clock += step
    raise AssertionError(f"still pending: {[(r.id, r.last_error) for r in _rows(factory)]}")


# --------------------------------------------------------------------------- Telegram


def test_telegram_split_at_4096_in_russian_paced_per_chat(
    store: sessionmaker[Session], telegram: HttpServer
) -> None:
    _only(store, "telegram")
    fake = telegram.service
    assert isinstance(fake, FakeTelegram)
    long = "\n".join(f"Строка {i}: абонент не дозвонился до оператора." for i in range(150))
    with session_scope(store) as s:
        number = _ticket(s, "t0", desc=long).number
    rows = _rows(store)
    assert [(r.recipient, r.payload.get("part")) for r in rows] == [
        ("1001", 1),
        ("1001", 2),
        ("-1002", 1),
        ("-1002", 2),
    ]
    assert rows[1].dedup_key.endswith(".2") and rows[0].dedup_key + ".2" == rows[1].dedup_key

    report = outbox.deliver_due(store, _at(0))
    # One message per chat per second: each chat's first part now, its second held back.
    assert sorted(report.sent) == [rows[0].id, rows[2].id]
    assert sorted(report.deferred) == [rows[1].id, rows[3].id]
    held = {r.id: r for r in _rows(store)}
    for row_id in report.deferred:
        assert held[row_id].attempts == 0, "a paced row has not used an attempt"
        assert held[row_id].next_attempt_at == _at(1)
    assert outbox.deliver_due(store, _at(0.5)).sent == []
    assert sorted(outbox.deliver_due(store, _at(1)).sent) == [rows[1].id, rows[3].id]

    assert fake.problems == []
    assert [chat for chat, _ in fake.sent] == [1001, -1002, 1001, -1002]
    for chat, row in ((1001, rows[0]), (-1002, rows[2])):
        first, second = [text for c, text in fake.sent if c == chat]
        assert first.startswith(f"(1/2)\n[Ticket#{number}] SIP trunk DOWN")
        assert second.startswith("(2/2)\n")
        whole = first.removeprefix("(1/2)\n") + second.removeprefix("(2/2)\n")
        with store() as s:
            payload = s.get_one(OutboxMessage, row.id).payload
        assert whole == message_text(payload)
        assert f"Зарегистрирована заявка {number} (Инцидент)." in first
        assert "Строка 149" in second
    assert {r.state for r in _rows(store)} == {"sent"}


def test_telegram_429_retry_after_is_honoured_and_order_kept(
    store: sessionmaker[Session], telegram: HttpServer
) -> None:
    _only(store, "telegram")
    fake = telegram.service
    assert isinstance(fake, FakeTelegram)
    fake.flood[1001] = 7
    with session_scope(store) as s:
        inc = _ticket(s, "t0")
        change_status(s, inc, "open", author="eng")
    created_1001, created_1002, open_1001, open_1002 = _rows(store)
    report = outbox.deliver_due(store, _at(0))
    assert report.sent == [created_1002.id]
    assert sorted(report.deferred) == [created_1001.id, open_1001.id, open_1002.id]
    rows = {r.id: r for r in _rows(store)}
    flooded = rows[created_1001.id]
    assert flooded.attempts == 0 and flooded.state == "pending"
    assert flooded.next_attempt_at == _at(7)
    assert "retry after 7" in str(flooded.last_error)
    assert rows[open_1001.id].next_attempt_at == _at(7), "behind the flooded one of its chat"
    assert rows[open_1002.id].next_attempt_at == _at(1), "paced behind its chat's last one"

    assert outbox.deliver_due(store, _at(1)).sent == [open_1002.id]
    assert outbox.deliver_due(store, _at(6.9)).sent == []
    assert outbox.deliver_due(store, _at(7)).sent == [created_1001.id]
    assert outbox.deliver_due(store, _at(8)).sent == [open_1001.id]
    assert fake.problems == []
    texts_1001 = [text for chat, text in fake.sent if chat == 1001]
    assert len(texts_1001) == 2
    assert "Зарегистрирована заявка" in texts_1001[0] and "«В работе»" in texts_1001[1]
    assert sum(1 for r in fake.requests if r.json()["chat_id"] == 1001) == 3  # one was a 429


def test_telegram_failures_keep_the_token_secret(
    store: sessionmaker[Session], telegram: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    _only(store, "telegram")
    caplog.set_level(logging.DEBUG)
    telegram.stop()
    with session_scope(store) as s:
        _ticket(s, "t1")
    assert outbox.deliver_due(store, _at(0)).retried
    [row] = _rows(store)
    assert row.attempts == 1
    assert "Connection refused" in str(row.last_error) and TOKEN not in str(row.last_error)

    telegram.start()
    with session_scope(store) as s:  # a wrong token: Telegram answers 401 {"ok": false}
        s.scalars(select(Notifier).where(Notifier.kind == "telegram")).one().settings = {
            "bot_token": TOKEN.replace("SECRET", "WRONG"),
            "api_url": telegram.url,
        }
    assert outbox.deliver_due(store, _at(60)).retried == [row.id]
    [row] = _rows(store)
    assert row.attempts == 2 and row.state == "pending"
    assert row.last_error == "TelegramError: Telegram error 401: Unauthorized"
    for secret in (TOKEN, TOKEN.replace("SECRET", "WRONG"), "AAF-test"):
        assert secret not in caplog.text
        assert secret not in str(row.last_error)
    assert "outbox retry" in caplog.text


def test_telegram_down_for_a_while_then_everything_exactly_once(
    store: sessionmaker[Session], telegram: HttpServer
) -> None:
    _only(store, "telegram")
    fake = telegram.service
    assert isinstance(fake, FakeTelegram)
    telegram.stop()
    with session_scope(store) as s:
        inc = _ticket(s, "t0")
        _ticket(s, "t1", "Portal slow")
        change_status(s, inc, "solution_provided", author="eng", comment="Транк перерегистрирован")
    outbox.deliver_due(store, _at(0))
    outbox.deliver_due(store, _at(30))
    rows = _rows(store)
    assert len(rows) == 5 and {r.state for r in rows} == {"pending"}
    firsts = [r for r in rows if r.payload["kind"] == "created"]
    assert len(firsts) == 3 and {r.attempts for r in firsts} == {2}
    assert all("Connection refused" in str(r.last_error) for r in firsts)
    # The solutions wait behind their chat's first message: no attempt used.
    assert {r.attempts for r in rows if r not in firsts} == {0}

    telegram.start()
    _drain(store, 3600)
    assert Counter(chat for chat, _ in fake.sent) == {1001: 2, -1002: 2, 2001: 1}
    assert len(set(fake.sent)) == 5, "no message twice"
    solution = [text for chat, text in fake.sent if chat == 1001][1]
    assert "«Решение предоставлено»" in solution and "Транк перерегистрирован" in solution
    assert fake.problems == []


# --------------------------------------------------------------------------- webhook


def test_webhook_signed_once_per_tenant_with_idempotency_key(
    store: sessionmaker[Session], receiver: HttpServer
) -> None:
    _only(store, "webhook")
    fake = receiver.service
    assert isinstance(fake, FakeReceiver)
    with session_scope(store) as s:
        number = _ticket(s, "t0").number
    [row] = _rows(store)
    assert (row.channel, row.recipient) == ("webhook", "t0")
    assert outbox.deliver_due(store, _at(0)).sent == [row.id]
    assert fake.problems == []
    [delivery] = fake.deliveries
    assert delivery.headers["idempotency-key"] == row.dedup_key
    assert delivery.json() == {
        "event_id": row.payload["event_id"],
        "dedup_key": f"webhook:t0:{number}:{row.payload['event_id']}",
        "number": number,
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

    # A mass incident: one row per tenant with the webhook channel (t2 has none).
    with session_scope(store) as s:
        mass, _ = open_or_join(
            s,
            system_id="01",
            open_key="mass:host-a",
            type="mass_incident",
            subject="host-a DOWN",
            description="3 tenants",
            author="cpdops",
            source="monitor",
        )
        for slug in ("t0", "t1", "t2"):
            child, _ = open_or_join(
                s,
                system_id="01",
                open_key=f"tenant:{slug}",
                type="incident",
                subject=f"{slug} DOWN",
                description="d",
                author="cpdops",
                source="monitor",
                tenant=slug,
            )
            child.parent_id = mass.id
        s.flush()
        change_status(s, mass, "solution_provided", author="cpdops", comment="host-a is back")
        mass_number = mass.number
    # The receiver fails the first one: it comes again, the same bytes, the same key.
    fake.answers = [Reply(503)]
    _drain(store, 10)
    assert fake.problems == []
    solutions = [
        body
        for body in fake.events.values()
        if body["number"] == mass_number and body["kind"] == "solution"
    ]
    assert sorted(b["tenant"] for b in solutions) == ["t0", "t1"]
    assert all(b["comment"] == "host-a is back" and b["ticket_tenant"] is None for b in solutions)
    keys = Counter(d.headers["idempotency-key"] for d in fake.deliveries)
    [twice] = [k for k, n in keys.items() if n > 1]
    assert keys[twice] == 2
    first, again = [d for d in fake.deliveries if d.headers["idempotency-key"] == twice]
    assert first.body == again.body, "a retry sends the same bytes"
    assert len(fake.deliveries) == len(fake.events) + 1  # one failed, each acted on once


def test_webhook_down_for_a_while_then_everything_exactly_once(
    store: sessionmaker[Session], receiver: HttpServer
) -> None:
    _only(store, "webhook")
    fake = receiver.service
    assert isinstance(fake, FakeReceiver)
    receiver.stop()
    with session_scope(store) as s:
        inc = _ticket(s, "t0")
        _ticket(s, "t1")
        change_status(s, inc, "open", author="eng")
    outbox.deliver_due(store, _at(0))
    outbox.deliver_due(store, _at(30))
    rows = _rows(store)
    assert len(rows) == 3 and all(r.state == "pending" for r in rows)
    assert [r.attempts for r in rows] == [2, 2, 0], "the status change waits behind the create"
    receiver.start()
    _drain(store, 3600)
    assert fake.problems == []
    assert len(fake.deliveries) == 3 == len(fake.events)
    assert set(fake.events) == {r.dedup_key for r in rows}


def test_webhook_4xx_is_dead_at_once_and_the_ticket_waits_no_more(
    store: sessionmaker[Session], receiver: HttpServer
) -> None:
    """A 422 (the receiver refuses the body) is dead at the first try with the reason; the
    ticket's next row is then not held behind it; a 408 and a 429 stay retried."""
    _only(store, "webhook")
    fake = receiver.service
    assert isinstance(fake, FakeReceiver)
    fake.answers = [Reply(422, {"error": "unknown tenant"}), Reply(408), Reply(429)]
    with session_scope(store) as s:
        inc = _ticket(s, "t0")
        _ticket(s, "t1")
    report = outbox.deliver_due(store, _at(0))
    created_t0, created_t1 = _rows(store)
    assert report.dead == [created_t0.id] and report.retried == [created_t1.id]
    assert (created_t0.state, created_t0.attempts) == ("dead", 1)
    assert (
        created_t0.last_error == 'permanent: WebhookRejected: HTTP 422: {"error": "unknown tenant"}'
    )
    with session_scope(store) as s:
        change_status(s, s.get_one(Incident, inc.id), "open", author="eng")
    report = outbox.deliver_due(store, _at(60))  # t1's create: 429 (retried); t0's status: sent
    assert len(report.sent) == 1 and report.retried == [created_t1.id] and not report.dead
    _drain(store, 3600)
    assert {r.state for r in _rows(store)} == {"sent", "dead"}
    assert [r.id for r in _rows(store) if r.state == "dead"] == [created_t0.id]
    assert fake.problems == []


# --------------------------------------------------------------------------- Znuny


def _znuny(server: HttpServer) -> FakeZnuny:
    assert isinstance(server.service, FakeZnuny)
    return server.service


def test_znuny_create_then_updates_to_the_same_ticket(
    store: sessionmaker[Session], znuny: HttpServer
) -> None:
    _only(store, "otrs")
    fake = _znuny(znuny)
    with session_scope(store) as s:
        inc = _ticket(s, "t0")
        add_attachment(
            s, inc, filename="shot.png", content_type="image/png", content=b"\x89PNG-1", author="c"
        )
        number = inc.number
    [row] = _rows(store)
    assert (row.channel, row.recipient) == ("otrs", "ticket")
    assert outbox.deliver_due(store, _at(0)).sent == [row.id]
    assert fake.problems == []
    [remote] = fake.tickets.values()
    assert remote.ticket == {
        "Title": "SIP trunk DOWN",
        "Queue": "Support",
        "State": "new",
        "Priority": "4 high",
        "CustomerUser": "ivan@t0.example",
        "Type": "Unclassified",
    }
    assert remote.dynamic == {"CpdopsKey": f"cpdops:desk:{number}", "CpdopsTicketNumber": number}
    assert remote.attachments == [
        {"Content": b"\x89PNG-1", "ContentType": "image/png", "Filename": "shot.png"}
    ]
    assert remote.articles[0]["Subject"] == f"[Ticket#{number}] SIP trunk DOWN"
    assert "Зарегистрирована заявка" in remote.articles[0]["Body"]

    with session_scope(store) as s:
        inc = s.scalars(select(Incident).where(Incident.number == number)).one()
        change_status(s, inc, "open", author="eng")
        change_status(s, inc, "solution_provided", author="eng", comment="Транк перерегистрирован")
    assert len(outbox.deliver_due(store, _at(10)).sent) == 2
    assert fake.problems == []
    assert list(fake.tickets) == [remote.ticket_id], "no second remote ticket"
    assert remote.states == ["new", "open", "pending auto close+"]
    assert len(remote.articles) == 3 and "Транк перерегистрирован" in remote.articles[2]["Body"]
    patches = [r for r in fake.requests if r.method == "PATCH"]
    assert {r.path.rsplit("/", 1)[1] for r in patches} == {remote.ticket_id}
    assert patches[1].json()["Ticket"] == {
        "State": "pending auto close+",
        "PendingTime": {"Diff": 10080},
    }
    with store() as s:
        [kept] = s.scalars(select(RemoteTicket))
        assert (kept.notifier, kept.incident_number) == ("desk", number)
        assert (kept.remote_id, kept.remote_number) == (remote.ticket_id, remote.number)


def test_znuny_error_answer_is_retried_and_the_update_waits(
    store: sessionmaker[Session], znuny: HttpServer
) -> None:
    _only(store, "otrs")
    fake = _znuny(znuny)
    fake.error_next = ["TicketCreate"]
    with session_scope(store) as s:
        inc = _ticket(s, "t1")
        change_status(s, inc, "awaiting_info", author="eng", comment="Which extension?")
    create_row, update_row = _rows(store)
    report = outbox.deliver_due(store, _at(0))
    assert report.retried == [create_row.id] and report.deferred == [update_row.id]
    rows = {r.id: r for r in _rows(store)}
    assert rows[create_row.id].attempts == 1
    assert "TicketCreate.InvalidParameter" in str(rows[create_row.id].last_error)
    assert rows[update_row.id].attempts == 0, "waiting for the create is not a failed attempt"
    assert not fake.tickets and not [r for r in fake.requests if r.method == "PATCH"]

    _drain(store, 60)
    assert fake.problems == []
    [remote] = fake.tickets.values()
    assert remote.states == ["new", "pending reminder"]
    assert remote.ticket["CustomerUser"] == "ann@t1.example"
    assert (
        "Which extension?" in remote.articles[1]["Body"]
        and "Comment:" in remote.articles[1]["Body"]
    )


def test_znuny_lost_create_answer_makes_no_second_ticket(
    store: sessionmaker[Session], znuny: HttpServer
) -> None:
    _only(store, "otrs")
    fake = _znuny(znuny)
    fake.drop_next_create_answer = True
    with session_scope(store) as s:
        inc = _ticket(s, "t0")
        change_status(s, inc, "open", author="eng")
        number = inc.number
    create_row, _ = _rows(store)
    report = outbox.deliver_due(store, _at(0))
    assert report.retried == [create_row.id]
    assert len(fake.tickets) == 1, "Znuny made the ticket; we did not hear"
    _drain(store, 60)
    assert fake.problems == []
    [remote] = fake.tickets.values()
    assert remote.states == ["new", "open"] and len(remote.articles) == 2
    searches = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/Ticket")]
    assert searches[-1].query["DynamicField_CpdopsKey"] == [f"cpdops:desk:{number}"]
    with store() as s:
        assert s.scalars(select(RemoteTicket.remote_id)).all() == [remote.ticket_id]


def test_znuny_mass_incident_is_one_remote_ticket(
    store: sessionmaker[Session], znuny: HttpServer
) -> None:
    _only(store, "otrs")
    fake = _znuny(znuny)
    with session_scope(store) as s:
        mass, _ = open_or_join(
            s,
            system_id="01",
            open_key="mass:host-a",
            type="mass_incident",
            subject="host-a DOWN",
            description="2 tenants",
            author="cpdops",
            source="monitor",
        )
        children = []
        for slug in ("t0", "t1"):
            child, _ = open_or_join(
                s,
                system_id="01",
                open_key=f"tenant:{slug}",
                type="incident",
                subject=f"{slug} DOWN",
                description="d",
                author="cpdops",
                source="monitor",
                tenant=slug,
            )
            child.parent_id = mass.id
            children.append(child.number)
        s.flush()
        change_status(s, mass, "solution_provided", author="cpdops", comment="host-a is back")
        mass_number = mass.number
    mass_rows = [r for r in _rows(store) if r.incident_number == mass_number]
    assert [r.payload["kind"] for r in mass_rows] == ["solution"], "one row, not one per tenant"
    _drain(store, 0)
    assert fake.problems == []
    by_number = {t.dynamic["CpdopsTicketNumber"]: t for t in fake.tickets.values()}
    assert set(by_number) == {mass_number, *children}
    major = by_number[mass_number]
    assert major.ticket["CustomerUser"] == "major@vendor.example"
    assert major.states == ["pending auto close+"] and len(major.articles) == 1


def test_znuny_down_for_a_while_then_everything_exactly_once(
    store: sessionmaker[Session], znuny: HttpServer
) -> None:
    _only(store, "otrs")
    fake = _znuny(znuny)
    znuny.stop()
    with session_scope(store) as s:
        for slug in ("t0", "t1"):
            inc = _ticket(s, slug)
            change_status(s, inc, "open", author="eng")
            change_status(s, inc, "closed", author="eng")
    outbox.deliver_due(store, _at(0))
    outbox.deliver_due(store, _at(30))
    rows = _rows(store)
    assert len(rows) == 6 and {r.state for r in rows} == {"pending"}
    assert all(r.attempts >= 1 for r in rows if r.payload["kind"] == "created")
    assert all(r.attempts == 0 for r in rows if r.payload["kind"] != "created")
    znuny.start()
    _drain(store, 3600)
    assert fake.problems == []
    assert len(fake.tickets) == 2
    for remote in fake.tickets.values():
        assert remote.states == ["new", "open", "closed successful"]
        assert len(remote.articles) == 3
    assert len([r for r in fake.requests if r.method == "POST"]) == 2
