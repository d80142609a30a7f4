"""Whether an error means "the state database is unavailable" (it restarted, the network to
it broke, no pooled connection came free): the API answers 503 then, and the monitor state
changes wait in memory for it (``orchestrator.change_writer``) instead of being dropped."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

RETRY_AFTER_S = 5  # Retry-After of the 503: about a connect timeout


def database_unavailable(error: BaseException) -> bool:
    """A connection-level failure: worth retrying once the database is back. A constraint
    violation, a bad statement or a bug is not (retrying would fail the same way)."""
    if isinstance(error, sa_exc.TimeoutError):  # the pool: no connection came free in time
        return True
    if isinstance(error, sa_exc.DBAPIError):
        return bool(
            error.connection_invalidated
            or isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError)
        )
    return False


def describe(error: BaseException) -> str:
    """A one-line reason without the SQL statement nor its parameters (they may hold data)."""
    original = getattr(error, "orig", None)
    text = str(original if original is not None else error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first[:300]
