"""The ticket workflow's pure rules (SPEC §3.6), table-driven."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConflictError, InputError
from orchestrator.incidents.attachments import clean_content_type, clean_filename
from orchestrator.incidents.workflow import (
    PRIORITIES,
    PRIORITY_LABELS,
    STATUS_LABELS,
    STATUSES,
    TRANSITIONS,
    TYPE_LABELS,
    TYPES,
    TransitionError,
    check_priority,
    check_type,
    decide_transition,
    reopens,
)

ALLOWED = [
    ("new", "open"),
    ("new", "awaiting_info"),
    ("new", "solution_provided"),
    ("new", "closed"),
    ("open", "awaiting_info"),
    ("open", "solution_provided"),
    ("open", "closed"),
    ("awaiting_info", "open"),
    ("awaiting_info", "solution_provided"),
    ("awaiting_info", "closed"),
    ("solution_provided", "open"),
    ("solution_provided", "closed"),
    ("closed", "open"),
]
FORBIDDEN = [(a, b) for a in STATUSES for b in STATUSES if a != b and (a, b) not in ALLOWED]


def decide(current: str, wanted: str, comment: str = "fixed", type: str = "incident"):  # type: ignore[no-untyped-def]
    return decide_transition(
        number="2026120101000011", type=type, current=current, wanted=wanted, comment=comment
    )


@pytest.mark.parametrize(("current", "wanted"), ALLOWED)
def test_allowed_transitions(current: str, wanted: str) -> None:
    step = decide(current, wanted)
    assert step is not None
    assert (step.old, step.new) == (current, wanted)
    assert step.clears_open_key is (wanted == "closed")


@pytest.mark.parametrize(("current", "wanted"), FORBIDDEN)
def test_forbidden_transitions_name_current_and_allowed(current: str, wanted: str) -> None:
    with pytest.raises(TransitionError) as info:
        decide(current, wanted)
    assert isinstance(info.value, ConflictError)
    assert info.value.current == current
    assert info.value.allowed == TRANSITIONS[current]
    assert info.value.fields == {"current": current, "allowed": list(TRANSITIONS[current])}
    message = str(info.value)
    assert f"from {current} to {wanted}" in message
    assert all(s in message for s in TRANSITIONS[current])


def test_table_covers_every_status() -> None:
    assert set(TRANSITIONS) == set(STATUSES)
    assert len(ALLOWED) + len(FORBIDDEN) == len(STATUSES) * (len(STATUSES) - 1)


@pytest.mark.parametrize("status", STATUSES)
def test_same_status_is_no_change(status: str) -> None:
    assert decide(status, status, comment="") is None


@pytest.mark.parametrize("comment", ["", "   ", "\n\t"])
@pytest.mark.parametrize("current", ["new", "open", "awaiting_info"])
def test_solution_requires_a_comment(current: str, comment: str) -> None:
    with pytest.raises(InputError, match="requires a comment"):
        decide(current, "solution_provided", comment=comment)


def test_solution_comment_is_kept_stripped() -> None:
    step = decide("open", "solution_provided", comment="  restarted the PBX \n")
    assert step is not None and step.comment == "restarted the PBX"


@pytest.mark.parametrize(
    ("type", "closes_children"),
    [("mass_incident", True), ("incident", False), ("consultation", False)],
)
def test_closing_a_mass_incident_closes_children(type: str, closes_children: bool) -> None:
    step = decide("open", "closed", type=type)
    assert step is not None and step.closes_children is closes_children
    other = decide("new", "open", type=type)
    assert other is not None and other.closes_children is False


@pytest.mark.parametrize("wanted", ["reopened", "", "CLOSED"])
def test_unknown_status(wanted: str) -> None:
    with pytest.raises(InputError, match="status: unknown status"):
        decide("open", wanted)


@pytest.mark.parametrize(
    ("current", "customer", "expected"),
    [
        ("awaiting_info", True, True),
        ("solution_provided", True, True),
        ("new", True, False),
        ("open", True, False),
        ("closed", True, False),
        ("awaiting_info", False, False),
        ("solution_provided", False, False),
    ],
)
def test_customer_reply_reopens(current: str, customer: bool, expected: bool) -> None:
    assert reopens(current, customer=customer) is expected
    if expected:
        assert "open" in TRANSITIONS[current]


def test_priorities_and_types() -> None:
    assert PRIORITIES == ("low", "normal", "high", "critical")
    for p in PRIORITIES:
        assert check_priority(p) == p
    for t in TYPES:
        assert check_type(t) == t
    with pytest.raises(InputError, match="priority: unknown priority 'urgent'"):
        check_priority("urgent")
    with pytest.raises(InputError, match="type: unknown incident type 'bug'"):
        check_type("bug")


def test_labels_in_russian_and_english() -> None:
    assert STATUS_LABELS["solution_provided"]["ru"] == "Решение предоставлено"
    for table, keys in (
        (STATUS_LABELS, STATUSES),
        (TYPE_LABELS, TYPES),
        (PRIORITY_LABELS, PRIORITIES),
    ):
        assert set(table) == set(keys)
        assert all(set(v) == {"ru", "en"} and all(v.values()) for v in table.values())


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("screen.png", "screen.png"),
        ("C:\\Users\\me\\shot.png", "shot.png"),
        ("../../etc/passwd", "passwd"),
        ("a\x00b\r\n.png", "ab.png"),
        ("", "attachment"),
        (None, "attachment"),
        ("..", "attachment"),
        ("снимок экрана.png", "снимок экрана.png"),
    ],
)
def test_clean_filename(given: str | None, expected: str) -> None:
    assert clean_filename(given) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("image/png", "image/png"),
        ("Image/PNG; charset=x", "image/png"),
        ("text/html\r\nX-Evil: 1", "application/octet-stream"),
        (None, "application/octet-stream"),
        ("garbage", "application/octet-stream"),
    ],
)
def test_clean_content_type(given: str | None, expected: str) -> None:
    assert clean_content_type(given) == expected
