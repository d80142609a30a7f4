"""The rollout journal: each step is written before it acts and closed when it ends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import RolloutInstance, RolloutStep
from orchestrator.db.session import session_scope


class Journal:
    """Writes steps in their own short transactions, so they are durable at once."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory

    def begin(self, instance_id: int, step: str, **detail: Any) -> int:
        with session_scope(self._factory) as s:
            row = RolloutStep(instance_id=instance_id, step=step, state="started", detail=detail)
            s.add(row)
            s.flush()
            return row.id

    def end(self, step_id: int, state: str, **detail: Any) -> None:
        with session_scope(self._factory) as s:
            row = s.get_one(RolloutStep, step_id)
            row.state = state
            row.detail = {**row.detail, **detail}
            row.finished_at = datetime.now(UTC)

    def set_instance(self, instance_id: int, **fields: Any) -> None:
        with session_scope(self._factory) as s:
            row = s.get_one(RolloutInstance, instance_id)
            for key, value in fields.items():
                setattr(row, key, value)
