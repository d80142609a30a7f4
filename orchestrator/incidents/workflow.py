"""The ticket workflow as pure decisions (SPEC §3.6): which status change is allowed, what it
implies, and when a reply reopens a ticket. No database here; ``tickets`` acts on the result.

    new ─▶ open ─▶ awaiting_info ⇄ open ─▶ solution_provided ─▶ closed
    (``solution_provided`` needs a comment, shown as «Решение предоставлено»;
     a customer reply on awaiting_info / solution_provided reopens: ─▶ open)
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import ConflictError, InputError

TYPES = ("incident", "mass_incident", "consultation", "development_request")
STATUSES = ("new", "open", "awaiting_info", "solution_provided", "closed")
PRIORITIES = ("low", "normal", "high", "critical")
STATUS_LABELS = {
    "new": {"ru": "Новая", "en": "New"},
    "open": {"ru": "В работе", "en": "Open"},
    "awaiting_info": {"ru": "Запрошена информация", "en": "Awaiting information"},
    "solution_provided": {"ru": "Решение предоставлено", "en": "Solution provided"},
    "closed": {"ru": "Закрыта", "en": "Closed"},
}
TYPE_LABELS = {
    "incident": {"ru": "Инцидент", "en": "Incident"},
    "mass_incident": {"ru": "Массовый инцидент", "en": "Mass incident"},
    "consultation": {"ru": "Консультация", "en": "Consultation"},
    "development_request": {"ru": "Запрос на доработку", "en": "Development request"},
}
PRIORITY_LABELS = {
    "low": {"ru": "Низкий", "en": "Low"},
    "normal": {"ru": "Обычный", "en": "Normal"},
    "high": {"ru": "Высокий", "en": "High"},
    "critical": {"ru": "Критический", "en": "Critical"},
}
# Allowed transitions (SPEC §3.6); a customer reply reopens a solved ticket.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "new": ("open", "awaiting_info", "solution_provided", "closed"),
    "open": ("awaiting_info", "solution_provided", "closed"),
    "awaiting_info": ("open", "solution_provided", "closed"),
    "solution_provided": ("open", "closed"),
    "closed": ("open",),
}
ACTIVE = ("new", "open", "awaiting_info")
# A customer's reply on a ticket in one of these statuses puts it back to ``open``.
REOPENED_BY_CUSTOMER = ("awaiting_info", "solution_provided")


class TransitionError(ConflictError):
    """A status change that TRANSITIONS forbids; names the current and the allowed statuses."""

    def __init__(self, number: str, current: str, wanted: str) -> None:
        self.current = current
        self.wanted = wanted
        self.allowed = TRANSITIONS[current]
        self.fields = {"current": current, "allowed": list(self.allowed)}
        super().__init__(
            f"incident {number} cannot go from {current} to {wanted}; "
            f"allowed from {current}: {', '.join(self.allowed)}"
        )


@dataclass(frozen=True)
class Transition:
    """What one allowed status change does."""

    old: str
    new: str
    comment: str
    clears_open_key: bool  # closed: the failure's next occurrence opens a new ticket
    closes_children: bool  # closing a mass incident resolves the tenant incidents under it


def decide_transition(
    *, number: str, type: str, current: str, wanted: str, comment: str
) -> Transition | None:
    """The change from ``current`` to ``wanted``, or None when it is already there.

    Raises InputError for an unknown status or a missing solution comment, TransitionError
    (a ConflictError, HTTP 409) for a change the workflow forbids.
    """
    if wanted not in STATUSES:
        raise InputError(
            f"status: unknown status {wanted!r}; expected one of {', '.join(STATUSES)}"
        )
    if wanted == current:
        return None
    if wanted not in TRANSITIONS[current]:
        raise TransitionError(number, current, wanted)
    comment = comment.strip()
    if wanted == "solution_provided" and not comment:
        raise InputError(
            "comment: status solution_provided («Решение предоставлено») requires a comment "
            "that says what the solution is"
        )
    return Transition(
        old=current,
        new=wanted,
        comment=comment,
        clears_open_key=wanted == "closed",
        closes_children=wanted == "closed" and type == "mass_incident",
    )


def reopens(current: str, *, customer: bool) -> bool:
    """Whether a reply puts the ticket back to ``open``: a customer's, on a ticket waiting for
    them (awaiting_info) or solved but not yet closed (solution_provided)."""
    return customer and current in REOPENED_BY_CUSTOMER


def check_priority(priority: str) -> str:
    if priority not in PRIORITIES:
        raise InputError(
            f"priority: unknown priority {priority!r}; expected one of {', '.join(PRIORITIES)}"
        )
    return priority


def check_type(type: str) -> str:
    if type not in TYPES:
        raise InputError(
            f"type: unknown incident type {type!r}; expected one of {', '.join(TYPES)}"
        )
    return type
