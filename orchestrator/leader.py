"""Leader election between ``cpdops serve`` replicas sharing one PostgreSQL database.

Each replica holds one dedicated connection (its own NullPool engine, autocommit, TCP
keepalives) named ``application_name = "cpdops <replica id>"``. The leader is the replica
whose connection holds the session advisory lock ``LEADER_KEY``; the others try to take it
every ``poll_s``. PostgreSQL releases a session lock the moment the session ends — the
holder's process dying (SIGKILL included) closes its socket, its backend exits — so a
follower takes over at its next poll, with no lease to wait out and no clocks to trust. The
leader checks its connection every poll too, and steps down when it fails (the database
restarted, the network broke): from then on it may no longer hold the lock.

The same connections tell which replicas are alive (``pg_stat_activity``): the rollout
executor uses that to take over the rollouts of a dead replica at once, instead of waiting
for their lease to lapse (see ``RolloutExecutor.dead_owners``).

On SQLite there is one replica: it always leads (``cpdops serve`` on a SQLite file must not
be started twice on one file).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# pg_try_advisory_lock(bigint): ASCII "cpdo" + "lead"; locks are per database.
LEADER_KEY = 0x6370646F6C656164
_APP_PREFIX = "cpdops "
# Rollout owners of replicas start with this (the others — `cpdops rollout start` in a shell —
# have no election connection, so their liveness is judged by their lease alone).
REPLICA_PREFIX = "replica-"
_NAME_MAX = 63  # NAMEDATALEN - 1: PostgreSQL truncates application_name there


def replica_id() -> str:
    """A new replica id: random part first, so truncation to 63 bytes keeps ids distinct."""
    return f"{REPLICA_PREFIX}{uuid.uuid4().hex[:8]}@{socket.gethostname()}:{os.getpid()}"


def app_name(replica_id: str) -> str:
    return (_APP_PREFIX + replica_id)[:_NAME_MAX]


class Leadership:
    """Elects one leader among the replicas; calls ``on_change(leading)`` on every change
    (from its own thread). ``poll_s`` bounds how long a follower waits after the leader died.

    ``on_follow()`` is called when this follower sees the lock held by another session — another
    replica leads — once per such period. Stepping down because the database connection failed
    is not that: nobody may lead (the database restarted), so a replica keeps its monitors
    probing until ``on_follow`` (docs/scaling.md, "Faults")."""

    def __init__(
        self,
        engine: Engine,
        replica_id: str,
        *,
        on_change: Callable[[bool], None] | None = None,
        on_follow: Callable[[], None] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.replica_id = replica_id
        self.on_change = on_change
        self.on_follow = on_follow
        self._other_leads = False
        self._poll = poll_s
        self._postgres = engine.dialect.name == "postgresql"
        self._queries = engine  # the pooled engine, for leader() and dead()
        self._engine: Engine | None = None
        if self._postgres:
            self._engine = create_engine(
                engine.url,
                poolclass=NullPool,
                isolation_level="AUTOCOMMIT",
                connect_args={
                    "application_name": app_name(replica_id),
                    "connect_timeout": 5,
                    "keepalives": 1,
                    "keepalives_idle": 5,
                    "keepalives_interval": 2,
                    "keepalives_count": 2,
                },
            )
        self._conn: Connection | None = None
        self._leading = not self._postgres
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def postgres(self) -> bool:
        return self._postgres

    @property
    def leading(self) -> bool:
        return self._leading

    def start(self) -> None:
        if not self._postgres:
            if self.on_change is not None:
                self.on_change(True)
            return
        self.step()  # the first attempt before serving: a lone replica leads at once
        self._thread = threading.Thread(target=self._run, name="cpdops-leader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self._close()
        if self._engine is not None:
            self._engine.dispose()

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            self.step()

    def step(self) -> bool:
        """One election round: keep (leader) or try to take (follower) the lock."""
        with self._lock:
            was = self._leading
            other_was = self._other_leads
            try:
                if self._conn is None:
                    assert self._engine is not None
                    self._conn = self._engine.connect()
                if was:
                    self._conn.execute(text("SELECT 1"))
                    now = True
                else:
                    now = bool(
                        self._conn.execute(
                            text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_KEY}
                        ).scalar_one()
                    )
            except SQLAlchemyError as exc:
                if was:
                    log.error("leadership lost: the database connection failed: %s", exc)
                else:
                    log.warning("leader election: database unavailable: %s", exc)
                self._close()
                now = False
                self._other_leads = False
            else:
                # the lock query answered and we do not hold it: another session does
                self._other_leads = not now
            self._leading = now
            other_now = self._other_leads
        if now != was:
            log.info("replica %s is now %s", self.replica_id, "LEADER" if now else "a follower")
            if self.on_change is not None:
                try:
                    self.on_change(now)
                except Exception:
                    log.exception("leadership change handler failed")
        if other_now and not other_was:
            log.info("replica %s follows: another replica leads", self.replica_id)
            if self.on_follow is not None:
                try:
                    self.on_follow()
                except Exception:
                    log.exception("follow handler failed")
        return now

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()  # really closes the socket: the lock goes with it
                self._conn.close()
            except SQLAlchemyError:
                pass
            self._conn = None

    def leader(self) -> str | None:
        """The id of the replica that leads now (from any replica), None when none does."""
        if not self._postgres:
            return self.replica_id
        query = text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid = :hi AND l.objid = :lo "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        try:
            with self._queries.connect() as conn:
                name = conn.execute(
                    query, {"hi": LEADER_KEY >> 32, "lo": LEADER_KEY & 0xFFFFFFFF}
                ).scalar()
        except SQLAlchemyError:
            return None
        return str(name).removeprefix(_APP_PREFIX) if name else None

    def dead(self, owners: Iterable[str]) -> set[str]:
        """Of these replica ids, those with no live connection (their process is gone)."""
        wanted = {o for o in owners if o.startswith(REPLICA_PREFIX)}
        if not wanted or not self._postgres:
            return set()
        try:
            with self._queries.connect() as conn:
                live = set(
                    conn.scalars(
                        text(
                            "SELECT application_name FROM pg_stat_activity "
                            "WHERE datname = current_database() AND application_name LIKE :p"
                        ),
                        {"p": _APP_PREFIX + "%"},
                    )
                )
        except SQLAlchemyError:
            return set()  # cannot tell: nobody is declared dead
        return {o for o in wanted if app_name(o) not in live}
