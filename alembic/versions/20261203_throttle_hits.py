"""throttle hits: rate-limit and failure counts shared by the replicas

One row per (key, 5-second slot, replica). Each replica adds its counts and reads the others' in
one statement per sync interval (app/throttle.py). UNLOGGED on Postgres: the counts are worth
keeping only for minutes, so they skip the write-ahead log.

Revision ID: throttle_hits_shared_counts
Revises: admin_keys_named_roles
Create Date: 2026-12-03 12:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "throttle_hits_shared_counts"
down_revision: str | None = "admin_keys_named_roles"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "throttle_hits",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("replica", sa.String(length=36), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", "slot", "replica", name=op.f("pk_throttle_hits")),
    )
    with op.batch_alter_table("throttle_hits", schema=None) as batch_op:
        batch_op.create_index("ix_throttle_hits_slot", ["slot"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE throttle_hits SET UNLOGGED")


def downgrade() -> None:
    with op.batch_alter_table("throttle_hits", schema=None) as batch_op:
        batch_op.drop_index("ix_throttle_hits_slot")
    op.drop_table("throttle_hits")
