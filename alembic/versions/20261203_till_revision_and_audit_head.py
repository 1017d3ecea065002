"""tills carry their serialization revision and the head of their audit chain

* ``tills.revision``: bumped by every write a checkout decision depends on; a decision is saved
  only if the till's revision is still the one it was made from (one statement, no separate
  lock round trip).
* ``tills.audit_seq`` / ``tills.audit_head``: the last entry of the till's audit chain, so an
  append needs no read of the log. Back-filled from the log.
* ``checkouts.phone_enc`` is dropped: phone numbers are kept only for members.
* ``ix_outbox_status_lease_until``: the outbox claim looks for expired leases too.

Revision ID: 0003_hot_path
Revises: 0002
Create Date: 2026-12-03 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003_hot_path"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = "0" * 64


def upgrade() -> None:
    with op.batch_alter_table("tills", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("revision", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("audit_seq", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("audit_head", sa.String(64), server_default=GENESIS, nullable=False)
        )
    op.execute(
        """
        UPDATE tills SET
            audit_seq = (SELECT a.seq FROM audit_log a WHERE a.chain = tills.id
                         ORDER BY a.seq DESC LIMIT 1),
            audit_head = (SELECT a.hash FROM audit_log a WHERE a.chain = tills.id
                          ORDER BY a.seq DESC LIMIT 1)
        WHERE EXISTS (SELECT 1 FROM audit_log a WHERE a.chain = tills.id)
        """
    )
    with op.batch_alter_table("checkouts", schema=None) as batch_op:
        batch_op.drop_column("phone_enc")
    op.create_index("ix_outbox_status_lease_until", "outbox", ["status", "lease_until"])


def downgrade() -> None:
    op.drop_index("ix_outbox_status_lease_until", table_name="outbox")
    with op.batch_alter_table("checkouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phone_enc", sa.Text(), nullable=True))
    with op.batch_alter_table("tills", schema=None) as batch_op:
        batch_op.drop_column("audit_head")
        batch_op.drop_column("audit_seq")
        batch_op.drop_column("revision")
