"""cpdops's own exception tree.

Every failure that crosses a module boundary is one of these; third-party errors
(Docker SDK, SQLAlchemy, httpx) are converted once, where they happen, with
``raise ... from exc``.

    CpdopsError
    ├── InputError            bad input from a user: API 4xx / CLI exit 2
    │   ├── FleetFileError    the fleet file is malformed (names key and line)
    │   ├── NotFoundError     an object named by the user does not exist
    │   ├── ConflictError     the request clashes with current state (e.g. overlap)
    │   └── TooLarge          an upload over its size limit (API 413)
    ├── DockerError           anything the Docker boundary reports
    │   ├── HostUnreachable   the engine endpoint does not answer
    │   ├── ImageNotFound     an image is not present on a host and cannot be pulled
    │   └── ContainerError    a container operation failed
    └── OperationFailed       an operation ran and failed (CLI exit 1), e.g. a rollout
"""

from __future__ import annotations

from collections.abc import Sequence


class CpdopsError(Exception):
    """Base of every cpdops error."""


class InputError(CpdopsError):
    """The user's input is wrong; nothing was changed."""


class FleetFileError(InputError):
    """The fleet file is malformed.

    ``errors`` lists every problem found as ``(key_path, line, message)``, e.g.
    ``("tenants[2].ring", 14, "invalid value 'beta'; ...")``; an error raised with a single
    message has one entry ``("", line, message)``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        line: int | None = None,
        errors: Sequence[tuple[str, int | None, str]] | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.message = message
        self.errors: list[tuple[str, int | None, str]] = (
            list(errors) if errors is not None else [("", line, message)]
        )
        where = path
        if line is not None:
            where = f"{path}:{line}" if path else f"line {line}"
        super().__init__(f"{where}: {message}" if where else message)


class NotFoundError(InputError):
    """An object named by the user does not exist."""


class ConflictError(InputError):
    """The request conflicts with the current state."""


class TooLarge(InputError):
    """An upload (an attachment) is bigger than its limit."""


class DockerError(CpdopsError):
    """A Docker engine operation failed."""


class HostUnreachable(DockerError):
    """A Docker engine endpoint does not answer."""


class ImageNotFound(DockerError):
    """An image is not present on a host and cannot be pulled."""


class ContainerError(DockerError):
    """A container operation failed."""


class OperationFailed(CpdopsError):
    """An operation ran to its end and failed (e.g. a rollout rolled back)."""
