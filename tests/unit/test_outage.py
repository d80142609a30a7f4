"""Which database errors mean "unavailable" (503, retried) and the writer's retry delays."""

from __future__ import annotations

from sqlalchemy import exc

from orchestrator.change_writer import retry_delay
from orchestrator.db.outage import database_unavailable, describe


def test_connection_errors_are_unavailable_and_others_are_not() -> None:
    refused = exc.OperationalError("SELECT 1", {}, Exception("connection refused\nDETAIL: x"))
    assert database_unavailable(refused)
    assert describe(refused) == "connection refused"
    assert database_unavailable(exc.InterfaceError("SELECT 1", {}, Exception("closed")))
    assert database_unavailable(exc.TimeoutError("QueuePool limit reached"))
    invalidated = exc.DBAPIError("SELECT 1", {}, Exception("x"), connection_invalidated=True)
    assert database_unavailable(invalidated)
    assert not database_unavailable(exc.IntegrityError("INSERT", {}, Exception("duplicate")))
    assert not database_unavailable(exc.ProgrammingError("SELEC", {}, Exception("syntax")))
    assert not database_unavailable(ValueError("a bug"))


def test_retry_delays_double_up_to_five_seconds() -> None:
    assert [retry_delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
