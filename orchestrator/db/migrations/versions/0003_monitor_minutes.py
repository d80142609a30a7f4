"""monitor minute aggregates

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 22:49:26.743275
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitor_minutes",
        sa.Column("monitor_id", sa.String(length=255), nullable=False),
        sa.Column("minute", sa.Integer(), nullable=False),
        sa.Column("checks", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("maintenance", sa.Integer(), nullable=False),
        sa.Column("duration_sum", sa.Double(), nullable=False),
        sa.Column("duration_max", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("monitor_id", "minute"),
    )


def downgrade() -> None:
    op.drop_table("monitor_minutes")
