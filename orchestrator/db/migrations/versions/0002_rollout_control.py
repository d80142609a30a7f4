"""rollout control, progress, lease; instance waves and db safety

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 22:26:17.619077
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollout_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("wave", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("backup_path", sa.String(length=1000), nullable=True))
        batch_op.add_column(
            sa.Column("migrated", sa.Boolean(), nullable=False, server_default=sa.false())
        )

    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("control", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("progress", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("owner", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("lease_until")
        batch_op.drop_column("owner")
        batch_op.drop_column("progress")
        batch_op.drop_column("control")
        batch_op.drop_column("scheduled_for")

    with op.batch_alter_table("rollout_instances", schema=None) as batch_op:
        batch_op.drop_column("migrated")
        batch_op.drop_column("backup_path")
        batch_op.drop_column("wave")
