"""declared monitors (API and fleet file)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 10:12:41.208311
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "declared_monitors",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("host", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=1000), nullable=False),
        sa.Column("interval_s", sa.Double(), nullable=True),
        sa.Column("timeout_s", sa.Double(), nullable=True),
        sa.Column("failure_threshold", sa.Integer(), nullable=True),
        sa.Column("recovery_threshold", sa.Integer(), nullable=True),
        sa.Column("expect_status", sa.JSON(), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("declared_monitors", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_declared_monitors_tenant"), ["tenant"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("declared_monitors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_declared_monitors_tenant"))
    op.drop_table("declared_monitors")
