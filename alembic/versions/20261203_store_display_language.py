"""stores: the language of the customer display (nb, da, fi, en; NULL follows the browser)

Revision ID: store_display_language
Revises: 0003_hot_path
Create Date: 2026-12-03 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "store_display_language"
down_revision: str | None = "0003_hot_path"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("display_language", sa.String(length=8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stores", schema=None) as batch_op:
        batch_op.drop_column("display_language")
