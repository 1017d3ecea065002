"""admin keys: named operator credentials with roles, stored hashed

Each key has a name (unique among active keys), roles (operator, money, monitor) and the SHA-256
of the key; the audit trail names the key that acted. Revoked keys keep their row.

Revision ID: admin_keys_named_roles
Revises: 20261201_vipps_key_sets
Create Date: 2026-12-03 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "admin_keys_named_roles"
down_revision: str | None = "20261201_vipps_key_sets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admin_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("roles", sa.String(length=64), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_keys")),
    )
    with op.batch_alter_table("admin_keys", schema=None) as batch_op:
        batch_op.create_index(
            "ix_admin_keys_active_name",
            ["name"],
            unique=True,
            postgresql_where=sa.text("revoked_at IS NULL"),
            sqlite_where=sa.text("revoked_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("admin_keys", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_admin_keys_active_name",
            postgresql_where=sa.text("revoked_at IS NULL"),
            sqlite_where=sa.text("revoked_at IS NULL"),
        )
    op.drop_table("admin_keys")
