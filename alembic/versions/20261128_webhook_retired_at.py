"""webhook registrations: when a rotated-out registration stopped being the active one

A retired registration is already deleted at Vipps, but deliveries Vipps signed with its secret
before the deletion may still arrive (retries); its secret keeps verifying for a grace period
counted from ``retired_at``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_registrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_registrations", schema=None) as batch_op:
        batch_op.drop_column("retired_at")
