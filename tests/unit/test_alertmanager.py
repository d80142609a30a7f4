"""The Alertmanager intake: the pure alert → action decisions (table-driven), the ticket drafts,
the body schema, and ``ingest`` on a SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.migrate import upgrade
from orchestrator.db.models import Incident
from orchestrator.db.session import make_engine, make_session_factory
from orchestrator.incidents.alertmanager import (
    AlertmanagerAlert,
    AlertmanagerWebhook,
    Known,
    decide,
    dedup_key,
    draft,
    fingerprint,
    ingest,
    resolution_comment,
)

T0 = "2026-12-01T10:00:00Z"
T1 = "2026-12-01T11:00:00Z"


def alert(
    status: str = "firing",
    *,
    fp: str = "1a30ba71cca2921f",
    starts: str = T0,
    ends: str = "0001-01-01T00:00:00Z",
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "ProbeFailure", "tenant": "acme", **labels},
        "annotations": {"summary": "portal down", "description": "the portal answers 502"},
        "startsAt": starts,
        "endsAt": ends,
        "generatorURL": "http://prometheus:9090/graph?g0.expr=probe_success",
        "fingerprint": fp,
    }


def body(*alerts: dict[str, Any]) -> AlertmanagerWebhook:
    return AlertmanagerWebhook.model_validate(
        {
            "version": "4",
            "groupKey": '{}:{alertname="ProbeFailure"}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "cpdops",
            "groupLabels": {"alertname": "ProbeFailure"},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": list(alerts),
        }
    )


def one(**kw: Any) -> AlertmanagerAlert:
    return AlertmanagerAlert.model_validate(alert(**kw))


# --------------------------------------------------------------------------- decide


@pytest.mark.parametrize(
    ("name", "status", "known", "starts", "expected"),
    [
        ("firing new", "firing", None, T0, "open"),
        ("firing repeat", "firing", Known("n1", "2026-12-01T10:00:00+00:00"), T0, "repeat"),
        ("firing repeat other tz", "firing", Known("n1", "2026-12-01T10:00:00+00:00"),
         "2026-12-01T12:00:00+02:00", "repeat"),
        ("firing new occurrence", "firing", Known("n1", "2026-12-01T10:00:00+00:00"), T1, "join"),
        ("firing, ticket without alert entry", "firing", Known("n1", None), T0, "join"),
        ("resolved with ticket", "resolved", Known("n1", "2026-12-01T10:00:00+00:00"), T0,
         "resolve"),
        ("resolved without ticket", "resolved", None, T0, "ignore"),
    ],
)  # fmt: skip
def test_decide(name: str, status: str, known: Known | None, starts: str, expected: str) -> None:
    assert decide(one(status=status, starts=starts), known) == expected, name


def test_fingerprint_absent_is_a_stable_hash_of_the_sorted_labels() -> None:
    a = one(fp="", job="x", instance="y")
    b = AlertmanagerAlert.model_validate(
        {**alert(fp=""), "labels": {"instance": "y", "job": "x", **alert()["labels"]}}
    )
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(one(fp="", job="z", instance="y"))
    assert dedup_key(a) == f"am:{fingerprint(a)}"
    assert dedup_key(one()) == "am:1a30ba71cca2921f"


@pytest.mark.parametrize(
    ("labels", "kind", "tenant"),
    [
        ({}, "incident", "acme"),
        ({"severity": "critical"}, "incident", "acme"),
        ({"severity": "mass"}, "mass_incident", "acme"),
        ({"severity": "MASS_INCIDENT"}, "mass_incident", "acme"),
        ({"tenant": "", "smartcpd_tenant": "globex"}, "incident", "globex"),
        ({"tenant": ""}, "incident", None),
    ],
)
def test_draft_type_and_tenant(labels: dict[str, str], kind: str, tenant: str | None) -> None:
    d = draft(one(**labels))
    assert (d.type, d.tenant) == (kind, tenant)
    assert d.open_key == "am:1a30ba71cca2921f"


def test_draft_subject_description_evidence_redacted() -> None:
    a = AlertmanagerAlert.model_validate(
        {
            **alert(),
            "labels": {"alertname": "DbDown", "tenant": "acme", "db_password": "hunter2"},
            "annotations": {"description": "db gone", "API_Token": "t0k", "secret_url": "s"},
        }
    )
    d = draft(a)
    assert d.subject == "acme: DbDown"
    assert d.description == "db gone"
    assert d.evidence == {
        "fingerprint": "1a30ba71cca2921f",
        "alertname": "DbDown",
        "labels": {"alertname": "DbDown", "tenant": "acme"},
        "annotations": {"description": "db gone"},
        "startsAt": "2026-12-01T10:00:00+00:00",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=probe_success",
    }
    assert "hunter2" not in repr(d)


def test_resolution_comment_names_the_alert_and_the_time() -> None:
    text = resolution_comment(one(status="resolved", ends="2026-12-01T10:05:00+03:00"))
    assert "ProbeFailure" in text and "1a30ba71cca2921f" in text
    assert "2026-12-01T07:05:00+00:00" in text


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"version": "3"}, ("version",)),
        ({"alerts": [{**alert(), "status": "pending"}]}, ("alerts", 0, "status")),
        ({"alerts": [{**alert(), "startsAt": "yesterday"}]}, ("alerts", 0, "startsAt")),
        ({"alerts": [{**alert(), "labels": {"tenant": "x" * 64}}]}, ("alerts", 0, "labels")),
        ({"alerts": [{**alert(), "labels": {"a": "b\x00"}}]}, ("alerts", 0, "labels")),
        ({"alerts": [{**alert(), "labels": {"a": 1}}]}, ("alerts", 0, "labels", "a")),
    ],
)
def test_body_errors_name_the_field(change: dict[str, Any], loc: tuple[Any, ...]) -> None:
    good = body(alert()).model_dump(mode="json")
    with pytest.raises(ValidationError) as info:
        AlertmanagerWebhook.model_validate({**good, **change})
    assert info.value.errors()[0]["loc"] == loc


# --------------------------------------------------------------------------- ingest (store)


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'cpdops.db'}")
    upgrade(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def tickets(factory: sessionmaker[Session]) -> list[Incident]:
    with factory() as s:
        rows = list(s.scalars(select(Incident).order_by(Incident.id)))
        for row in rows:
            _ = row.events
        return rows


def test_firing_then_repeats_then_resolved(factory: sessionmaker[Session]) -> None:
    made: list[str] = []
    first = ingest(factory, body(alert()), system_id="01", on_created=made.append)
    assert (first.created, first.joined, first.resolved, first.ignored)[1:] == ([], [], 0)
    assert len(first.created) == 1 and made == ["incident"]
    number = first.created[0]
    (ticket,) = tickets(factory)
    assert (ticket.number, ticket.type, ticket.status, ticket.tenant, ticket.source) == (
        number,
        "incident",
        "new",
        "acme",
        "alertmanager",
    )
    assert ticket.subject == "acme: portal down"
    assert ticket.description == "the portal answers 502"
    entries = len(ticket.events)

    for _ in range(3):  # repeat_interval, retries: nothing new
        again = ingest(factory, body(alert()), system_id="01", on_created=made.append)
        assert (again.created, again.joined, again.resolved, again.ignored) == ([], [], [], 1)
    (ticket,) = tickets(factory)
    assert len(ticket.events) == entries and made == ["incident"]

    done = ingest(factory, body(alert("resolved", ends="2026-12-01T10:07:00Z")), system_id="01")
    assert (done.created, done.joined, done.resolved, done.ignored) == ([], [], [number], 0)
    (ticket,) = tickets(factory)
    assert ticket.status == "solution_provided" and ticket.open_key is None
    last = ticket.events[-1]
    assert (last.kind, last.author) == ("status", "alertmanager")
    assert last.data["to"] == "solution_provided"
    assert "2026-12-01T10:07:00+00:00" in last.body and "ProbeFailure" in last.body

    late = ingest(factory, body(alert("resolved")), system_id="01")  # resolved again: ignored
    assert (late.resolved, late.ignored) == ([], 1)
    assert len(tickets(factory)[0].events) == len(ticket.events)


def test_mixed_body_reads_each_alert_by_its_status(factory: sessionmaker[Session]) -> None:
    opened = ingest(factory, body(alert(fp="aaaa"), alert(fp="bbbb")), system_id="01")
    a, b = opened.created
    mixed = ingest(
        factory,
        body(
            alert("resolved", fp="aaaa", ends=T1),  # resolves a
            alert(fp="bbbb"),  # repeat of b
            alert(fp="cccc", severity="mass"),  # new
            alert("resolved", fp="dddd"),  # no ticket
            alert(fp="bbbb", starts=T1),  # b again, a new occurrence
        ),
        system_id="01",
    )
    assert mixed.resolved == [a]
    assert mixed.joined == [b]
    assert len(mixed.created) == 1 and mixed.ignored == 2
    by_number = {t.number: t for t in tickets(factory)}
    assert by_number[a].status == "solution_provided"
    assert by_number[b].status == "new"
    assert by_number[mixed.created[0]].type == "mass_incident"
    assert len(by_number) == 3


def test_same_alert_twice_in_one_body_opens_one_ticket(factory: sessionmaker[Session]) -> None:
    result = ingest(factory, body(alert(fp=""), alert(fp="")), system_id="01")
    assert len(result.created) == 1 and result.ignored == 1
    assert len(tickets(factory)) == 1


def test_firing_after_resolution_opens_a_new_ticket(factory: sessionmaker[Session]) -> None:
    first = ingest(factory, body(alert()), system_id="01").created
    ingest(factory, body(alert("resolved", ends=T1)), system_id="01")
    second = ingest(factory, body(alert(starts="2026-12-01T12:00:00Z")), system_id="01").created
    assert len(second) == 1 and second != first
