"""The rollout journal on SQLite and a real PostgreSQL: steps a dead runner left open are
closed on reconcile (issue #12 item 10), the taking-over process's own steps are not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.migrate import upgrade
from orchestrator.db.models import Rollout, RolloutInstance, RolloutStep
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from rollouts import faults
from rollouts.journal import Journal


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def _instances(factory: sessionmaker[Session], count: int) -> list[int]:
    with session_scope(factory) as s:
        rollout = Rollout(image="smartcpd:2", status="running", progress={})
        s.add(rollout)
        for n in range(count):
            rollout.instances.append(
                RolloutInstance(
                    position=n, wave=0, tenant=f"t{n}", host="d1", container_name=f"c{n}"
                )
            )
        s.flush()
        return [i.id for i in rollout.instances]


def _steps(
    factory: sessionmaker[Session], instance_id: int
) -> list[tuple[str, str, dict[str, object]]]:
    with factory() as s:
        rows = s.get_one(RolloutInstance, instance_id).steps
        return [(st.step, st.state, dict(st.detail or {})) for st in rows]


def test_close_dangling_closes_what_a_dead_runner_left_and_nothing_of_its_own(
    factory: sessionmaker[Session],
) -> None:
    a, b = _instances(factory, 2)
    dead = Journal(factory)  # the runner that was killed mid-gate
    done = dead.begin(a, "pull", image="smartcpd:2")
    dead.end(done, "ok")
    dead.begin(a, "gate", expect_version="2")
    taking_over = Journal(factory)
    own = taking_over.begin(b, "pull", image="smartcpd:2")

    assert taking_over.close_dangling([a, b]) == 1
    steps = _steps(factory, a)
    assert [(name, state) for name, state, _ in steps] == [("pull", "ok"), ("gate", "interrupted")]
    assert steps[1][2] == {"expect_version": "2", "error": faults.DANGLING_ERROR}
    with factory() as s:
        assert s.get_one(RolloutStep, own).state == "started"  # its own step runs on
        gate = s.get_one(RolloutStep, done + 1)
        assert gate.finished_at is not None
    assert taking_over.close_dangling([a, b]) == 0
    taking_over.end(own, "ok")
    assert _steps(factory, b)[0][1] == "ok"
