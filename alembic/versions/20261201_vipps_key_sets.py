"""vipps key sets: each sales unit's own API keys, encrypted

Vipps MobilePay gives every sales unit (MSN) its own client_id, client_secret and subscription
key. A chain with one sales unit per store needs one key set per store; they are added and
rotated by operators and stored here encrypted. Partner keys and the configured default keys
stay in the settings.

Revision ID: 20261201_vipps_key_sets
Revises: store_display_language
Create Date: 2026-12-01 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "20261201_vipps_key_sets"
down_revision: str | None = "store_display_language"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "vipps_key_sets",
        sa.Column("msn", sa.String(length=6), nullable=False),
        sa.Column("client_id_enc", sa.Text(), nullable=False),
        sa.Column("client_secret_enc", sa.Text(), nullable=False),
        sa.Column("subscription_key_enc", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("msn", name=op.f("pk_vipps_key_sets")),
    )


def downgrade() -> None:
    op.drop_table("vipps_key_sets")
