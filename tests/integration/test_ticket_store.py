"""The ticket workflow on SQLite and a real PostgreSQL: status changes, replies, children,
attachments, priorities."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.migrate import upgrade
from orchestrator.db.models import Incident, IncidentAttachment, Tenant
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from orchestrator.errors import InputError, NotFoundError, TooLarge
from orchestrator.incidents.attachments import add_attachment, get_attachment
from orchestrator.incidents.numbers import is_valid_number
from orchestrator.incidents.tickets import (
    add_comment,
    change_status,
    create_ticket,
    get_by_number,
    open_or_join,
    set_priority,
)
from orchestrator.incidents.workflow import TransitionError


@pytest.fixture
def store(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    upgrade(engine)
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        s.add_all([Tenant(slug=f"t{i}", name=f"T{i}") for i in range(3)])
    yield factory
    engine.dispose()


def head_revision() -> str:
    """The newest migration (not a fixed number: branches add theirs)."""
    from alembic.script import ScriptDirectory

    from orchestrator.db.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def _open(s: Session, key: str, type: str = "incident", tenant: str | None = None) -> Incident:
    inc, created = open_or_join(
        s,
        system_id="01",
        open_key=key,
        type=type,
        subject=f"{key} DOWN",
        description="d",
        author="cpdops",
        source="monitor",
        tenant=tenant,
    )
    assert created
    return inc


def test_full_workflow_with_timeline(store: sessionmaker[Session]) -> None:
    with session_scope(store) as s:
        number = _open(s, "tenant:t0", tenant="t0").number
    with session_scope(store) as s:
        inc = get_by_number(s, number)
        assert change_status(s, inc, "open", author="eng")
        assert not change_status(s, inc, "open", author="eng"), "same status: no change"
        change_status(s, inc, "awaiting_info", author="eng", comment="which extension?")
        add_comment(s, inc, author="customer@t0", body="ext 204", customer=True)
        assert inc.status == "open", "a customer reply reopens awaiting_info"
        with pytest.raises(InputError, match="requires a comment"):
            change_status(s, inc, "solution_provided", author="eng", comment=" ")
        change_status(s, inc, "solution_provided", author="eng", comment="re-registered ext 204")
        assert inc.open_key == "tenant:t0"
        with pytest.raises(TransitionError, match="allowed from solution_provided: open, closed"):
            change_status(s, inc, "awaiting_info", author="eng")
        add_comment(s, inc, author="eng", body="internal note")
        assert inc.status == "solution_provided", "an engineer's comment does not reopen"
        add_comment(s, inc, author="customer@t0", body="still broken", customer=True)
        assert inc.status == "open"
        change_status(s, inc, "solution_provided", author="eng", comment="replaced the trunk")
        change_status(s, inc, "closed", author="eng")
        assert inc.open_key is None
    with store() as s:
        inc = get_by_number(s, number)
        kinds = [(e.kind, e.author, e.data.get("to")) for e in inc.events]
        assert kinds == [
            ("created", "cpdops", None),
            ("status", "eng", "open"),
            ("status", "eng", "awaiting_info"),
            ("comment", "customer@t0", None),
            ("status", "customer@t0", "open"),
            ("solution", "eng", "solution_provided"),
            ("comment", "eng", None),
            ("comment", "customer@t0", None),
            ("status", "customer@t0", "open"),
            ("solution", "eng", "solution_provided"),
            ("status", "eng", "closed"),
        ]
        solution = inc.events[5]
        assert solution.body == "re-registered ext 204"
        assert solution.data["label_ru"] == "Решение предоставлено"
        assert all(e.at is not None and e.at.tzinfo is not None for e in inc.events)
    # the key is free: the same failure again is a new ticket
    with session_scope(store) as s:
        assert _open(s, "tenant:t0", tenant="t0").number != number


def test_closing_a_mass_incident_closes_its_children(store: sessionmaker[Session]) -> None:
    with session_scope(store) as s:
        mass = _open(s, "mass:1", type="mass_incident")
        kids = [_open(s, f"tenant:t{i}", tenant=f"t{i}") for i in range(3)]
        for k in kids:
            k.parent_id = mass.id
        change_status(s, kids[2], "closed", author="eng")
        number, kid_numbers = mass.number, [k.number for k in kids]
    with session_scope(store) as s:
        mass = get_by_number(s, number)
        assert [c.number for c in mass.children] == kid_numbers
        change_status(s, mass, "closed", author="eng")
    with store() as s:
        for n in kid_numbers:
            kid = get_by_number(s, n)
            assert kid.status == "closed" and kid.open_key is None
            assert kid.parent is not None and kid.parent.number == number
        closed_by_parent = [
            e
            for n in kid_numbers[:2]
            for e in get_by_number(s, n).events
            if e.data.get("parent") == number
        ]
        assert len(closed_by_parent) == 2
        assert not any(e.data.get("parent") for e in get_by_number(s, kid_numbers[2]).events)


def test_create_ticket_priorities_and_attachments(store: sessionmaker[Session]) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10
    with session_scope(store) as s:
        inc = create_ticket(
            s,
            system_id="01",
            type="consultation",
            subject="How do I forward calls?",
            description="details",
            author="portal:anna",
            tenant="t1",
            priority="high",
        )
        att = add_attachment(
            s, inc, filename="shot.png", content_type="image/png", content=png, author="anna"
        )
        number, att_id = inc.number, att.id
        assert is_valid_number(number) and inc.open_key is None
        with pytest.raises(InputError, match="tenant: unknown tenant 'nope'"):
            create_ticket(
                s, system_id="01", type="incident", subject="x", author="a", tenant="nope"
            )
        with pytest.raises(InputError, match="priority: unknown priority"):
            create_ticket(s, system_id="01", type="incident", subject="x", author="a", priority="p")
        with pytest.raises(InputError, match="type: unknown incident type"):
            create_ticket(s, system_id="01", type="bug", subject="x", author="a")
        with pytest.raises(TooLarge):
            add_attachment(
                s, inc, filename="big", content_type=None, content=b"x" * 11, author="a", limit=10
            )
    with session_scope(store) as s:
        inc = get_by_number(s, number)
        assert set_priority(s, inc, "critical", author="eng")
        assert not set_priority(s, inc, "critical", author="eng")
        got = get_attachment(s, inc, att_id)
        assert got.content == png and got.size == len(png)
        assert got.sha256 == hashlib.sha256(png).hexdigest()
        with pytest.raises(NotFoundError):
            get_attachment(s, inc, att_id + 100)
    with store() as s:
        inc = get_by_number(s, number)
        assert inc.priority == "critical" and inc.status == "new"
        assert [e.kind for e in inc.events] == ["created", "attachment", "priority"]
        assert s.scalar(select(IncidentAttachment.filename)) == "shot.png"
        for bad in ("", "x", "2026120101000010\x00", "1" * 300):
            with pytest.raises(NotFoundError):
                get_by_number(s, bad)


def test_create_ticket_numbers_unique_under_concurrency(store: sessionmaker[Session]) -> None:
    import threading

    numbers: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(10)

    def worker() -> None:
        barrier.wait()
        try:
            for _ in range(10):
                with session_scope(store) as s:
                    inc = create_ticket(
                        s, system_id="07", type="consultation", subject="q", author="portal"
                    )
                    number = inc.number
                with lock:
                    numbers.append(number)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(numbers)) == 100
    assert all(is_valid_number(n) and n[8:10] == "07" for n in numbers)
    assert sorted(int(n[10:15]) for n in numbers) == list(range(1, 101))


def test_migration_0005_up_and_down_keeps_tickets(db_url: str) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from orchestrator.db.migrate import alembic_config, current_revision

    engine = make_engine(db_url)
    upgrade(engine, "0004")
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        number = _open(s, "tenant:old").number
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    with session_scope(factory) as s:
        inc = get_by_number(s, number)
        assert inc.attachments == [] and inc.children == []
        add_attachment(
            s, inc, filename="a.txt", content_type="text/plain", content=b"hi", author="a"
        )
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    assert "incident_attachments" not in inspect(engine).get_table_names()
    upgrade(engine)
    with factory() as s:
        assert get_by_number(s, number).subject == "tenant:old DOWN"
    engine.dispose()
