"""Reading a file named on the command line (``cpdops apply -f``) with limits: at most
``limit`` bytes (``limit + 1`` are read to know it is more), and a deadline for what is not a
regular file.

A regular file is read as it is. Anything else — a FIFO, a pipe (``-f <(sops -d fleet.yaml)``),
a character device such as ``/dev/zero`` or a terminal — is opened without blocking (opening a
FIFO that has no writer would wait for one forever) and read while data comes, until its end,
the size limit or the deadline. ``/dev/zero`` ends at the limit; a FIFO nobody writes to, at
the deadline.
"""

from __future__ import annotations

import os
import select
import stat
import time

from orchestrator.errors import FleetFileError

MAX_FILE_BYTES = 4 * 1024 * 1024
"""The largest fleet file read (4 MiB; a fleet of thousands of tenants is far below it)."""
READ_DEADLINE_S = 10.0
"""How long a FIFO, pipe or device may take to give its whole content."""


def _too_large(path: str, limit: int) -> FleetFileError:
    return FleetFileError(f"the file is larger than {limit} bytes ({limit // 1024} KiB)", path=path)


def read_limited(
    path: str, *, limit: int = MAX_FILE_BYTES, deadline_s: float = READ_DEADLINE_S
) -> bytes:
    """The bytes of ``path``; :class:`FleetFileError` when it cannot be read, is a directory,
    is larger than ``limit`` or (not a regular file) has not ended within ``deadline_s``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FleetFileError(
            f"cannot read the fleet file: {exc.strerror or exc}", path=path
        ) from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise FleetFileError("is a directory, not a file", path=path)
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(limit + 1)
        else:
            data = _read_stream(fd, path, limit, deadline_s)
    except OSError as exc:
        raise FleetFileError(
            f"cannot read the fleet file: {exc.strerror or exc}", path=path
        ) from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise _too_large(path, limit)
    return data


def _read_stream(fd: int, path: str, limit: int, deadline_s: float) -> bytes:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    deadline = time.monotonic() + deadline_s
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(max(1, int(left * 1000))):
            if time.monotonic() < deadline:
                continue
            raise FleetFileError(
                f"not a regular file, and it did not end within {deadline_s:g} s "
                "(a FIFO nobody writes to?)",
                path=path,
            )
        try:
            chunk = os.read(fd, min(65536, limit + 1 - size))
        except BlockingIOError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _too_large(path, limit)
