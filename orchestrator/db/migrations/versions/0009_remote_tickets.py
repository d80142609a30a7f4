"""remote_tickets: our ticket's id and number on a remote desk (OTRS/Znuny)

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "remote_tickets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("notifier", sa.String(length=63), nullable=False),
        sa.Column("incident_number", sa.String(length=32), nullable=False),
        sa.Column("remote_id", sa.String(length=64), nullable=False),
        sa.Column("remote_number", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("notifier", "incident_number"),
    )
    with op.batch_alter_table("remote_tickets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_remote_tickets_incident_number"), ["incident_number"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("remote_tickets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_remote_tickets_incident_number"))
    op.drop_table("remote_tickets")
