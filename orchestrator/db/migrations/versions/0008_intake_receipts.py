"""intake_receipts: exactly-once intake of Telegram updates and inbound mail

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "intake_receipts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=False),
        sa.Column("incident_number", sa.String(length=32), nullable=True),
        sa.Column("sender", sa.String(length=255), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source", "external_id"),
    )
    with op.batch_alter_table("intake_receipts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_intake_receipts_incident_number"), ["incident_number"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("intake_receipts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_intake_receipts_incident_number"))
    op.drop_table("intake_receipts")
