"""The rollout journal: each step is written before it acts and closed when it ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import RolloutInstance, RolloutStep
from orchestrator.db.session import session_scope
from rollouts import faults
from rollouts.gates import GateProgress


class Journal:
    """Writes steps in their own short transactions, so they are durable at once.

    The detail a step began with is remembered in memory, so closing it is one UPDATE (and,
    with ``instance``, the instance's fields change in the same transaction). A step begun
    by another process (known only from the database) is read back first.
    """

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._open: dict[int, dict[str, Any]] = {}

    def begin(self, instance_id: int, step: str, **detail: Any) -> int:
        with session_scope(self._factory) as s:
            row = RolloutStep(instance_id=instance_id, step=step, state="started", detail=detail)
            s.add(row)
            s.flush()
            step_id = row.id
        with self._lock:
            self._open[step_id] = detail
        return step_id

    def end(
        self,
        step_id: int,
        state: str,
        *,
        instance: tuple[int, dict[str, Any]] | None = None,
        **detail: Any,
    ) -> None:
        """Close a step; ``instance=(id, fields)`` also sets those instance fields."""
        with self._lock:
            began = self._open.pop(step_id, None)
        with session_scope(self._factory) as s:
            if began is None:
                began = dict(s.get_one(RolloutStep, step_id).detail or {})
            s.execute(
                update(RolloutStep)
                .where(RolloutStep.id == step_id)
                .values(state=state, detail={**began, **detail}, finished_at=datetime.now(UTC))
            )
            if instance is not None:
                _set(s, instance[0], instance[1])

    def note(self, step_id: int, **detail: Any) -> None:
        """Add to an open step's detail while it runs (e.g. a gate's ``progress``); what it
        began with stays as it was, so the step's end replaces the note."""
        with self._lock:
            began = dict(self._open.get(step_id) or {})
        with session_scope(self._factory) as s:
            s.execute(
                update(RolloutStep)
                .where(RolloutStep.id == step_id, RolloutStep.state == "started")
                .values(detail={**began, **detail})
            )

    def gate_progress(
        self, step_id: int, *, every_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> Callable[[GateProgress], None]:
        """A gate's ``on_attempt``: notes its progress on the step — when the passes or the
        last answer change, else at most every ``every_s``."""
        last: list[Any] = [None, -every_s]

        def report(p: GateProgress) -> None:
            key = (p.passes, p.last)
            if key == last[0] and clock() - last[1] < every_s:
                return
            last[:] = [key, clock()]
            self.note(step_id, progress=p.as_detail())

        return report

    def close_dangling(self, instance_ids: list[int]) -> int:
        """Close the steps of these instances a dead process left ``started``
        (``faults.dangling``); how many."""
        with self._lock:
            own = set(self._open)
        with session_scope(self._factory) as s:
            rows = s.execute(
                select(RolloutStep.id, RolloutStep.state).where(
                    RolloutStep.instance_id.in_(instance_ids), RolloutStep.state == "started"
                )
            ).all()
            ids = faults.dangling([(int(i), str(st)) for i, st in rows], own)
            now = datetime.now(UTC)
            for step in s.scalars(select(RolloutStep).where(RolloutStep.id.in_(ids))):
                step.state = faults.DANGLING_STATE
                step.detail = {**(step.detail or {}), "error": faults.DANGLING_ERROR}
                step.finished_at = now
        return len(ids)

    def last(self, instance_id: int) -> tuple[str, str, dict[str, Any]] | None:
        """The instance's latest step: (step, state, detail), or None."""
        with self._factory() as s:
            row = s.scalars(
                select(RolloutStep)
                .where(RolloutStep.instance_id == instance_id)
                .order_by(RolloutStep.id.desc())
                .limit(1)
            ).first()
            return (row.step, row.state, dict(row.detail or {})) if row is not None else None

    def set_instance(self, instance_id: int, **fields: Any) -> None:
        with session_scope(self._factory) as s:
            _set(s, instance_id, fields)


def _set(s: Session, instance_id: int, fields: dict[str, Any]) -> None:
    s.execute(update(RolloutInstance).where(RolloutInstance.id == instance_id).values(**fields))
