"""monitor_changes: every monitor status change at its own time (written late after an outage)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitor_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("monitor_id", sa.String(length=255), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("old", sa.Integer(), nullable=False),
        sa.Column("new", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("monitor_id", "at", name="uq_monitor_changes_monitor_at"),
    )
    with op.batch_alter_table("monitor_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_monitor_changes_tenant"), ["tenant"], unique=False)
        batch_op.create_index(batch_op.f("ix_monitor_changes_at"), ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("monitor_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_monitor_changes_at"))
        batch_op.drop_index(batch_op.f("ix_monitor_changes_tenant"))
    op.drop_table("monitor_changes")
