"""The outbox against a real SMTP server (aiosmtpd on 127.0.0.1), on SQLite and PostgreSQL:
mail only to the affected tenants' contacts, in their language, threaded per ticket; the
server down for a while loses nothing and sends nothing twice."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.context import build_context
from orchestrator.db.migrate import upgrade
from orchestrator.db.models import Incident, Notifier, OutboxMessage, Tenant
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from orchestrator.incidents import outbox
from orchestrator.incidents.tickets import change_status, create_ticket, open_or_join
from orchestrator.scheduler import make_scheduler
from orchestrator.settings import Settings

SENDER = "CPD support <support@cpd.example.ru>"


@dataclass
class Collector:
    """aiosmtpd handler: keeps every accepted message, parsed."""

    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # address → its 5xx/4xx RCPT reply

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 OK"

    def per_recipient(self) -> Counter[str]:
        return Counter(r for rcpts, _ in self.messages for r in rcpts)


class SmtpServer:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.collector = Collector()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.collector, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(db_url: str, smtp: SmtpServer) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    upgrade(engine)
    factory = make_session_factory(engine)

    def contacts(slug: str) -> list[dict[str, Any]]:
        return [
            {"name": f"Admin {slug}", "email": f"admin@{slug}.example"},
            {"name": f"Ops {slug}", "email": f"ops@{slug}.example"},
            {"name": "Phone only", "phone": "+7 900 000-00-00"},
        ]

    with session_scope(factory) as s:
        s.add_all(
            [
                Tenant(
                    slug="t0", name="T0", language="ru", contacts=contacts("t0"), channels=["email"]
                ),
                Tenant(
                    slug="t1", name="T1", language="en", contacts=contacts("t1"), channels=["email"]
                ),
                Tenant(
                    slug="t2", name="T2", language="ru", contacts=contacts("t2"), channels=["email"]
                ),
                Tenant(slug="t3", name="T3", language="ru", contacts=contacts("t3"), channels=[]),
                Notifier(
                    name="mail",
                    kind="smtp",
                    settings={
                        "host": "127.0.0.1",
                        "port": smtp.port,
                        "starttls": False,
                        "username": None,
                        "password": None,
                        "sender": SENDER,
                    },
                ),
            ]
        )
    yield factory
    engine.dispose()


def _ticket(s: Session, tenant: str, subject: str = "SIP trunk DOWN") -> Incident:
    return create_ticket(
        s,
        system_id="01",
        type="incident",
        subject=subject,
        description="calls drop",
        author="eng",
        tenant=tenant,
    )


def _rows(factory: sessionmaker[Session]) -> list[OutboxMessage]:
    with factory() as s:
        return list(s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def _later(minutes: float) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def test_mail_to_affected_tenants_only_in_their_language(
    store: sessionmaker[Session], smtp: SmtpServer
) -> None:
    with session_scope(store) as s:
        n0 = _ticket(s, "t0").number
        n1 = _ticket(s, "t1", "Portal slow").number
    report = outbox.deliver_due(store, _later(0.1))
    assert len(report.sent) == 4 and not report.retried
    assert smtp.collector.per_recipient() == {
        "admin@t0.example": 1,
        "ops@t0.example": 1,
        "admin@t1.example": 1,
        "ops@t1.example": 1,
    }
    by_to = {rcpts[0]: msg for rcpts, msg in smtp.collector.messages}
    ru, en = by_to["admin@t0.example"], by_to["admin@t1.example"]
    assert str(ru["Subject"]) == f"[Ticket#{n0}] SIP trunk DOWN"
    assert str(en["Subject"]) == f"[Ticket#{n1}] Portal slow"
    ru_body = ru.get_body(("plain",))
    en_body = en.get_body(("plain",))
    assert ru_body is not None and en_body is not None
    assert "Здравствуйте, Admin t0!" in ru_body.get_content()
    assert f"Зарегистрирована заявка {n0} (Инцидент)." in ru_body.get_content()
    assert f"Ticket {n1} (Incident) has been registered." in en_body.get_content()
    assert "Здравствуйте" not in en_body.get_content()
    root = f"<ticket-{n0}@cpd.example.ru>"
    assert ru["In-Reply-To"] == root and ru["References"] == root
    assert ru["Message-ID"] != by_to["ops@t0.example"]["Message-ID"]

    # The solution, in Russian, threaded with the first mail.
    with session_scope(store) as s:
        inc = s.scalars(select(Incident).where(Incident.number == n0)).one()
        change_status(s, inc, "open", author="eng")
        change_status(s, inc, "solution_provided", author="eng", comment="Транк перерегистрирован")
    outbox.deliver_due(store, _later(0.2))
    solution = [m for r, m in smtp.collector.messages if r == ["admin@t0.example"]][-1]
    body = solution.get_body(("plain",))
    assert body is not None
    assert "«Решение предоставлено»" in body.get_content()
    assert "Транк перерегистрирован" in body.get_content()
    assert solution["References"] == root
    assert smtp.collector.per_recipient()["admin@t0.example"] == 3  # created, open, solution
    assert smtp.collector.per_recipient()["admin@t1.example"] == 1
    assert not any(r[0].endswith(("t2.example", "t3.example")) for r, _ in smtp.collector.messages)


def test_mass_incident_tells_its_childrens_tenants(
    store: sessionmaker[Session], smtp: SmtpServer
) -> None:
    with session_scope(store) as s:
        mass, _ = open_or_join(
            s,
            system_id="01",
            open_key="mass:host-a",
            type="mass_incident",
            subject="host-a DOWN",
            description="5 tenants",
            author="cpdops",
            source="monitor",
        )
        for slug in ("t0", "t2", "t3"):
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
        number = mass.number
    outbox.deliver_due(store, _later(0.1))
    mails = [(r[0], m) for r, m in smtp.collector.messages if f"[Ticket#{number}]" in m["Subject"]]
    # The mass incident's solution reaches t0 and t2 (t3 has no e-mail channel).
    assert sorted(to for to, _ in mails) == [
        "admin@t0.example",
        "admin@t2.example",
        "ops@t0.example",
        "ops@t2.example",
    ]


def test_server_down_nothing_lost_then_delivered_exactly_once(
    store: sessionmaker[Session], smtp: SmtpServer
) -> None:
    smtp.stop()
    with session_scope(store) as s:
        for slug in ("t0", "t1", "t0"):
            _ticket(s, slug)
    report = outbox.deliver_due(store, _later(0.1))
    assert len(report.retried) == 6 and not report.sent
    rows = _rows(store)
    assert [r.state for r in rows] == ["pending"] * 6
    assert all(r.attempts == 1 and r.last_error for r in rows)
    assert "ConnectionRefusedError" in str(rows[0].last_error)
    # Not due yet: the back-off holds them.
    assert outbox.deliver_due(store, _later(0.1)).retried == []
    report = outbox.deliver_due(store, _later(1))
    assert len(report.retried) == 6
    assert {r.attempts for r in _rows(store)} == {2}

    smtp.start()
    report = outbox.deliver_due(store, _later(60))
    assert len(report.sent) == 6
    assert outbox.deliver_due(store, _later(120)).sent == []
    assert smtp.collector.per_recipient() == {
        "admin@t0.example": 2,
        "ops@t0.example": 2,
        "admin@t1.example": 1,
        "ops@t1.example": 1,
    }
    rows = _rows(store)
    assert all(r.state == "sent" and r.sent_at and r.last_error is None for r in rows)


def test_dead_after_max_attempts(store: sessionmaker[Session], smtp: SmtpServer) -> None:
    smtp.stop()
    with session_scope(store) as s:
        _ticket(s, "t1")
    outbox.deliver_due(store, _later(1), max_attempts=2, retry_for_s=0)
    report = outbox.deliver_due(store, _later(10), max_attempts=2, retry_for_s=0)
    assert len(report.dead) == 2
    assert {(r.state, r.attempts) for r in _rows(store)} == {("dead", 2)}
    smtp.start()
    assert outbox.deliver_due(store, _later(100)).sent == []


def test_failing_row_lives_for_retry_for_s_beyond_max_attempts(
    store: sessionmaker[Session], smtp: SmtpServer
) -> None:
    smtp.stop()
    with session_scope(store) as s:
        _ticket(s, "t1")
    start = datetime.now(UTC)
    for n in range(1, 5):  # 4 attempts ≥ max_attempts, but only 160 s of the 1 h retry_for_s
        report = outbox.deliver_due(store, start + timedelta(seconds=40 * n), max_attempts=2)
        assert len(report.retried) == 2 and not report.dead
    assert {(r.state, r.attempts) for r in _rows(store)} == {("pending", 4)}
    cap = start + timedelta(seconds=160 + 33)
    assert all(r.next_attempt_at <= cap for r in _rows(store)), "back-off ≤ 30 s (+10 %)"
    report = outbox.deliver_due(store, start + timedelta(seconds=3700), max_attempts=2)
    assert len(report.dead) == 2, "past retry_for_s and max_attempts: dead"


def test_smtp_5xx_rejection_is_dead_at_once_and_requeue_sends_it(
    store: sessionmaker[Session], smtp: SmtpServer
) -> None:
    smtp.collector.refuse["admin@t1.example"] = "550 5.1.1 <admin@t1.example>: no such user"
    smtp.collector.refuse["ops@t1.example"] = "450 4.2.1 mailbox busy, try later"
    with session_scope(store) as s:
        _ticket(s, "t1")
    report = outbox.deliver_due(store, _later(0))
    rows = {r.recipient: r for r in _rows(store)}
    dead, busy = rows["admin@t1.example"], rows["ops@t1.example"]
    assert report.dead == [dead.id] and report.retried == [busy.id]
    assert (dead.state, dead.attempts) == ("dead", 1)
    assert dead.last_error == (
        "permanent: SmtpRejected: admin@t1.example: 550 5.1.1 <admin@t1.example>: no such user"
    )
    assert busy.state == "pending" and "450" in (busy.last_error or "")
    smtp.collector.refuse.clear()  # the mailbox exists now; the operator requeues the dead one
    with session_scope(store) as s:
        assert outbox.requeue(s, s.get_one(OutboxMessage, dead.id), _later(1))
    report = outbox.deliver_due(store, _later(60))
    assert sorted(report.sent) == sorted([dead.id, busy.id])
    assert smtp.collector.per_recipient() == {"admin@t1.example": 1, "ops@t1.example": 1}
    with session_scope(store) as s:  # a sent one is not requeued: it would arrive twice
        assert not outbox.requeue(s, s.get_one(OutboxMessage, dead.id))


def test_enqueue_twice_one_row_and_rollback_none(store: sessionmaker[Session]) -> None:
    with session_scope(store) as s:
        inc = _ticket(s, "t1")
        created = inc.events[0]
        assert outbox.enqueue_event(s, inc, created) == 0, "the second enqueue adds nothing"
    assert len(_rows(store)) == 2
    with store() as s:
        _ticket(s, "t0")
        s.flush()
        s.rollback()
    assert len(_rows(store)) == 2, "a rolled-back ticket leaves no notification"


def test_claim_of_dead_worker_is_taken_over_after_lease(
    store: sessionmaker[Session], smtp: SmtpServer
) -> None:
    with session_scope(store) as s:
        _ticket(s, "t1")
    now = datetime.now(UTC)
    claimed = outbox._claim(store, now, "crashed-worker", 60, 50)  # then the process died
    assert len(claimed) == 2
    assert outbox.deliver_due(store, now + timedelta(seconds=30), owner="w2").sent == []
    report = outbox.deliver_due(store, now + timedelta(seconds=61), owner="w2")
    assert len(report.sent) == 2
    assert smtp.collector.per_recipient() == {"admin@t1.example": 1, "ops@t1.example": 1}
    assert {r.attempts for r in _rows(store)} == {2}


def test_login_with_password_from_the_environment(
    store: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        logins.append((data.login, data.password))
        if data.password == b"s3cret":
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)  # aiosmtpd answers 535

    server = SmtpServer()
    server.controller = Controller(
        server.collector,
        hostname="127.0.0.1",
        port=server.port,
        authenticator=authenticator,
        auth_require_tls=False,
    )
    server.controller.start()
    try:
        with session_scope(store) as s:
            row = s.scalars(select(Notifier)).one()
            row.settings = {
                **row.settings,
                "port": server.port,
                "username": "cpdops",
                "password": "${CPDOPS_TEST_SMTP_PASSWORD}",
            }
            _ticket(s, "t1")
        monkeypatch.setenv("CPDOPS_TEST_SMTP_PASSWORD", "wrong")
        report = outbox.deliver_due(store, _later(0.1))
        assert len(report.retried) == 2 and not server.collector.messages
        assert "SMTPAuthenticationError" in str(_rows(store)[0].last_error)
        monkeypatch.setenv("CPDOPS_TEST_SMTP_PASSWORD", "s3cret")
        assert len(outbox.deliver_due(store, _later(10)).sent) == 2
        assert (b"cpdops", b"s3cret") in logins
        assert server.collector.per_recipient() == {"admin@t1.example": 1, "ops@t1.example": 1}
    finally:
        server.stop()


def test_serve_scheduler_delivers(db_url: str, smtp: SmtpServer) -> None:
    ctx = build_context(Settings(database_url=db_url, outbox_interval_s=0.2))
    try:
        with session_scope(ctx.factory) as s:
            s.add(
                Tenant(
                    slug="t9",
                    name="T9",
                    language="en",
                    channels=["email"],
                    contacts=[{"name": "A", "email": "a@t9.example"}],
                )
            )
            s.add(
                Notifier(
                    name="mail",
                    kind="smtp",
                    settings={"host": "127.0.0.1", "port": smtp.port, "sender": SENDER},
                )
            )
        scheduler = make_scheduler(ctx)
        assert scheduler.get_job("deliver-outbox", jobstore="internal") is not None
        scheduler.start()
        try:
            with session_scope(ctx.factory) as s:
                number = _ticket(s, "t9").number
            deadline = time.monotonic() + 15
            while not smtp.collector.messages and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            scheduler.shutdown(wait=True)
        [(rcpts, msg)] = smtp.collector.messages
        assert rcpts == ["a@t9.example"] and str(msg["Subject"]).startswith(f"[Ticket#{number}]")
    finally:
        ctx.close()


def test_racing_workers_send_each_mail_once(store: sessionmaker[Session], smtp: SmtpServer) -> None:
    with session_scope(store) as s:
        numbers = [_ticket(s, "t0", f"ticket {i}").number for i in range(15)]
    now = _later(0.1)
    with ThreadPoolExecutor(4) as pool:
        reports = list(
            pool.map(lambda i: outbox.deliver_due(store, now, owner=f"w{i}", batch=8), range(8))
        )
    # A worker that loses a race for a row skips it; what is left goes at the next run.
    reports.append(outbox.deliver_due(store, now, owner="w-last"))
    assert outbox.deliver_due(store, now, owner="w-check").sent == []
    sent = [row_id for r in reports for row_id in r.sent]
    assert len(sent) == len(set(sent)) == 30
    assert smtp.collector.per_recipient() == {"admin@t0.example": 15, "ops@t0.example": 15}
    subjects = Counter(str(m["Subject"]) for _, m in smtp.collector.messages)
    assert set(subjects.values()) == {2} and len(subjects) == len(numbers)


def test_starttls_verifies_the_server(
    store: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    server = SmtpServer()
    server.controller = Controller(
        server.collector,
        hostname="127.0.0.1",
        port=server.port,
        tls_context=tls,
        require_starttls=True,
    )
    server.controller.start()
    try:
        with session_scope(store) as s:
            row = s.scalars(select(Notifier)).one()
            row.settings = {**row.settings, "port": server.port, "starttls": True}
            _ticket(s, "t1")
        # The server's certificate is not trusted yet: nothing is sent in the clear.
        report = outbox.deliver_due(store, _later(0.1))
        assert len(report.retried) == 2 and not server.collector.messages
        assert "CERTIFICATE_VERIFY_FAILED" in str(_rows(store)[0].last_error)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        assert len(outbox.deliver_due(store, _later(10)).sent) == 2
        assert server.collector.per_recipient() == {"admin@t1.example": 1, "ops@t1.example": 1}
    finally:
        server.stop()
