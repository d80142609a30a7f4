"""Leader election on a real PostgreSQL (orchestrator/leader.py), step by step, no sleeping."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from orchestrator.leader import Leadership, replica_id
from tests.integration.ha import pg_database


def test_one_leader_the_lock_moves_when_its_session_ends() -> None:
    with pg_database("cpdops_leader") as url:
        engine = create_engine(url)
        changes: list[tuple[str, bool]] = []
        a_id, b_id = replica_id(), replica_id()
        a = Leadership(engine, a_id, on_change=lambda v: changes.append(("a", v)))
        b = Leadership(engine, b_id, on_change=lambda v: changes.append(("b", v)))
        try:
            assert a.step() is True and b.step() is False and b.step() is False
            assert a.leader() == b.leader() == a_id
            assert changes == [("a", True)]
            assert a.dead([a_id, b_id, "host:1:cli"]) == set(), "both alive; a CLI owner is skipped"

            # a's session ends as when its process is SIGKILLed: its backend is terminated
            with engine.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :n"
                    ),
                    {"n": f"cpdops {a_id}"[:63]},
                )
            assert b.step() is True, "the lock went with a's session"
            assert b.leader() == b_id
            assert b.dead([a_id, b_id]) == {a_id}
            assert a.step() is False, "a notices its connection failed and steps down"
            assert changes == [("a", True), ("b", True), ("a", False)]
            assert a.step() is False, "a reconnects as a follower"
            assert b.dead([a_id, b_id]) == set()
        finally:
            a.stop()
            b.stop()
            engine.dispose()


def test_sqlite_has_one_replica_that_always_leads(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    seen: list[bool] = []
    only = Leadership(engine, replica_id(), on_change=seen.append)
    only.start()
    try:
        assert only.leading and seen == [True]
        assert only.leader() == only.replica_id
        assert only.dead([only.replica_id]) == set()
    finally:
        only.stop()
        engine.dispose()
