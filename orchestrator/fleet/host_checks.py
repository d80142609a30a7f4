"""Host health checks (the I/O around ``host_health``): the leader pings every Docker host every
``CPDOPS_HOST_CHECK_S`` with a short timeout, each on its own thread, so one hung host never
delays the others; the results go through :func:`host_health.decide`, transitions are stored
in ``hosts.status``/``status_reason``/``status_since`` and reported to the callbacks.

Callbacks (run in the checking thread, one host at a time):

* ``on_held(name, held, reason)``: the host failed a check (``held``) or answers again — the
  caller holds or releases the monitors of the host's tenants;
* ``on_transition(name, old, new)``: ``ok`` → ``unreachable`` or back, after it was stored.

:meth:`HostChecker.confirm` lets the incident engine ask, on a monitor DOWN, whether the
monitor's host is answering: the DOWN of a dead host's tenant is held instead of opening a
tenant incident, even when the monitor noticed before the periodic check.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Host
from orchestrator.db.session import session_scope
from orchestrator.errors import CpdopsError, HostUnreachable
from orchestrator.fleet.host_health import (
    OK,
    UNREACHABLE,
    Check,
    HostHealth,
    attributed_to_host,
    decide,
    transition,
)
from orchestrator.fleet.hosts import HostRegistry
from orchestrator.fleet.runtime import DockerHost

log = logging.getLogger(__name__)

OnHeld = Callable[[str, bool, str], None]
OnTransition = Callable[[str, HostHealth, HostHealth], None]


def utc_now() -> datetime:
    return datetime.now(UTC)


class HostChecker:
    def __init__(
        self,
        factory: sessionmaker[Session],
        hosts: HostRegistry,
        *,
        failure_threshold: int = 2,
        timeout_s: float = 3.0,
        settle_s: float = 60.0,
        on_held: OnHeld | None = None,
        on_transition: OnTransition | None = None,
        clock: Callable[[], datetime] = utc_now,
        max_threads: int = 32,
    ) -> None:
        self._factory = factory
        self._hosts = hosts
        self._threshold = failure_threshold
        self._timeout = timeout_s
        self._settle = settle_s
        self.on_held = on_held
        self.on_transition = on_transition
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="cpdops-ping")
        self._lock = threading.Lock()  # guards _states, _pingers, _checked
        self._apply_lock = threading.Lock()  # one decision (and its callbacks) at a time
        self._states: dict[str, HostHealth] = {}
        self._checked: dict[str, float] = {}  # monotonic time of the last check
        self._pingers: dict[str, tuple[str, DockerHost]] = {}

    # --- state ----------------------------------------------------------------------------
    def states(self) -> dict[str, HostHealth]:
        with self._lock:
            return dict(self._states)

    def held(self, name: str) -> bool:
        with self._lock:
            state = self._states.get(name)
        return state is not None and state.held

    def held_hosts(self) -> set[str]:
        with self._lock:
            return {name for name, state in self._states.items() if state.held}

    def reset(self) -> None:
        """Forget the states (this replica no longer leads): the holds are released."""
        with self._apply_lock:
            with self._lock:
                held = [n for n, s in self._states.items() if s.held]
                self._states.clear()
                self._checked.clear()
            for name in held:
                self._call_held(name, False, "no longer leading")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for _key, pinger in self._pingers.values():
                pinger.close()
            self._pingers.clear()

    # --- checks ---------------------------------------------------------------------------
    def check_all(self) -> dict[str, HostHealth]:
        """Ping every host at once; a host that does not answer in the timeout failed."""
        hosts = self._hosts.hosts()
        names = {h.name for h in hosts}
        with self._lock:
            for gone in [n for n in self._states if n not in names]:
                del self._states[gone]
        futures: dict[str, Future[Check]] = {
            h.name: self._pool.submit(self._ping, h) for h in hosts
        }
        wait(list(futures.values()), timeout=self._timeout + 1.0)
        for name, future in futures.items():
            if future.done():
                check = future.result()
            else:  # a ping stuck past its socket timeout still counts as a failure now
                check = Check(False, self._clock(), f"no answer within {self._timeout:g} s")
            self._apply(name, check)
        return self.states()

    def confirm(self, name: str) -> bool:
        """Whether a monitor DOWN on ``name`` belongs to the host's outage: it is held, or came
        back less than ``settle_s`` ago (``host_health.attributed_to_host``), or a ping now
        fails (a monitor DOWN is worth a ping: the last periodic check may predate the
        outage)."""
        with self._lock:
            state = self._states.get(name)
        if attributed_to_host(state, self._clock(), settle_s=self._settle):
            return True
        host = next((h for h in self._hosts.hosts() if h.name == name), None)
        if host is None:
            return False  # not a Docker host of the registry (e.g. a database server)
        return self._apply(name, self._ping(host)).held

    def _pinger(self, host: DockerHost) -> DockerHost:
        """A connection of its own with the short timeout (the registry's waits 60 s)."""
        key = f"{host.url}|{host.tls!r}"
        with self._lock:
            cached = self._pingers.get(host.name)
            if cached is not None and cached[0] == key:
                return cached[1]
            if cached is not None:
                cached[1].close()
            pinger = DockerHost(
                host.name, host.url, tls=host.tls, timeout=max(1, math.ceil(self._timeout))
            )
            self._pingers[host.name] = (key, pinger)
            return pinger

    def _ping(self, host: DockerHost) -> Check:
        at = self._clock()
        try:
            if host.url.startswith("unix://"):
                self._connect_unix(host)
            self._pinger(host).ping()
        except CpdopsError as exc:
            return Check(False, at, str(exc))
        except Exception as exc:  # a bug or an odd transport error: still a failed check
            return Check(False, at, f"{type(exc).__name__}: {exc}")
        return Check(True, at)

    def _connect_unix(self, host: DockerHost) -> None:
        """A plain connect first: docker-py leaks the socket of a refused connect."""
        path = host.url.removeprefix("unix://")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(self._timeout)
            try:
                sock.connect(path)
            except OSError as exc:
                raise HostUnreachable(f"host {host.name} ({host.url}): {exc}") from exc

    def _apply(self, name: str, check: Check) -> HostHealth:
        with self._apply_lock:
            with self._lock:
                old = self._states.get(name)
            was_held = old is not None and old.held
            if old is None:
                old = self._load(name)
            new = decide(old, check, failure_threshold=self._threshold)
            with self._lock:
                self._states[name] = new
                self._checked[name] = time.monotonic()
            if new.held and not was_held:
                log.warning("host %s failed a check: holding its monitors: %s", name, check.reason)
                self._call_held(name, True, new.reason or check.reason or "no answer")
            changed = transition(old, new)
            if changed is not None:
                self._store(name, new)
                log.log(
                    logging.WARNING if changed == UNREACHABLE else logging.INFO,
                    "host %s is %s%s",
                    name,
                    changed,
                    f": {new.reason}" if new.reason else "",
                )
                if self.on_transition is not None:
                    try:
                        self.on_transition(name, old, new)
                    except Exception:
                        log.exception("host transition handler failed host=%s", name)
            if was_held and not new.held:
                self._call_held(name, False, "answers again")
            return new

    def _call_held(self, name: str, held: bool, reason: str) -> None:
        if self.on_held is None:
            return
        try:
            self.on_held(name, held, reason)
        except Exception:
            log.exception("host hold handler failed host=%s", name)

    def _load(self, name: str) -> HostHealth:
        """The stored state (a restarted leader goes on from it)."""
        with self._factory() as s:
            row = s.scalars(select(Host).where(Host.name == name)).first()
            if row is None or row.status != UNREACHABLE:
                return HostHealth(OK, 0, None, row.status_since if row is not None else None)
            return HostHealth(UNREACHABLE, self._threshold, row.status_reason, row.status_since)

    def _store(self, name: str, state: HostHealth) -> None:
        with session_scope(self._factory) as s:
            row = s.scalars(select(Host).where(Host.name == name)).first()
            if row is None:
                return  # the implicit local host has no row
            row.status, row.status_reason, row.status_since = (
                state.status,
                state.reason,
                state.since,
            )
