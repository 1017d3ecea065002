"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 15:29:30.019714
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("till_id", sa.String(length=64), nullable=True),
        sa.Column("checkout_id", sa.String(length=36), nullable=True),
        sa.Column("amount_value", sa.BigInteger(), nullable=True),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        sa.UniqueConstraint("chain", "seq", name=op.f("uq_audit_log_chain_seq")),
        sa.UniqueConstraint("hash", name=op.f("uq_audit_log_hash")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_checkout_id"), ["checkout_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_till_id"), ["till_id"], unique=False)

    op.create_table(
        "checkout_changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("till_id", sa.String(length=64), nullable=False),
        sa.Column("checkout_id", sa.String(length=36), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=True),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkout_changes")),
    )
    with op.batch_alter_table("checkout_changes", schema=None) as batch_op:
        batch_op.create_index("ix_checkout_changes_till_id_id", ["till_id", "id"], unique=False)

    op.create_table(
        "idempotent_requests",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("scope", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column(
            "response",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotent_requests")),
        sa.UniqueConstraint("scope", "key", name=op.f("uq_idempotent_requests_scope_key")),
    )
    op.create_table(
        "members",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("phone_hash", sa.String(length=64), nullable=False),
        sa.Column("phone_enc", sa.Text(), nullable=False),
        sa.Column("vipps_sub", sa.String(length=100), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("store_id", sa.String(length=64), nullable=True),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_members")),
        sa.UniqueConstraint("phone_hash", name=op.f("uq_members_phone_hash")),
        sa.UniqueConstraint("vipps_sub", name=op.f("uq_members_vipps_sub")),
    )
    op.create_table(
        "outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("checkout_id", sa.String(length=36), nullable=True),
        sa.Column("till_id", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("msn", sa.String(length=6), nullable=False),
        sa.Column("reference", sa.String(length=50), nullable=True),
        sa.Column("idempotency_key", sa.String(length=50), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "outcome_unknown", sa.Boolean(), server_default=sa.text("(false)"), nullable=False
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_outbox_idempotency_key")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_checkout_id_status", ["checkout_id", "status"], unique=False
        )
        batch_op.create_index(
            "ix_outbox_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )

    op.create_table(
        "stores",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("club_policy", sa.String(length=16), server_default="off", nullable=False),
        sa.Column(
            "member_price_hold", sa.Boolean(), server_default=sa.text("(false)"), nullable=False
        ),
        sa.Column("member_price_hold_seconds", sa.Integer(), server_default="20", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stores")),
    )
    op.create_table(
        "webhook_inbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("dedup_key", sa.String(length=64), nullable=False),
        sa.Column("msn", sa.String(length=6), nullable=True),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column(
            "body_encrypted", sa.Boolean(), server_default=sa.text("(false)"), nullable=False
        ),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(length=64), nullable=True),
        sa.Column("checkout_id", sa.String(length=36), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_inbox")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_webhook_inbox_dedup_key")),
    )
    with op.batch_alter_table("webhook_inbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_inbox_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )

    op.create_table(
        "webhook_registrations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("msn", sa.String(length=6), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column(
            "events",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("secret_enc", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_registrations")),
    )
    with op.batch_alter_table("webhook_registrations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_registrations_msn"), ["msn"], unique=False)

    op.create_table(
        "tills",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("msn", sa.String(length=6), nullable=False),
        sa.Column("merchant_qr_id", sa.String(length=64), nullable=False),
        sa.Column("location_description", sa.String(length=36), nullable=False),
        sa.Column("api_key_id", sa.String(length=32), nullable=False),
        sa.Column("api_key_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="ACTIVE", nullable=False),
        sa.Column("qr_status", sa.String(length=16), server_default="PENDING", nullable=False),
        sa.Column("qr_content", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("version", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], name=op.f("fk_tills_store_id_stores")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tills")),
        sa.UniqueConstraint("api_key_id", name=op.f("uq_tills_api_key_id")),
        sa.UniqueConstraint("merchant_qr_id", name=op.f("uq_tills_merchant_qr_id")),
    )
    with op.batch_alter_table("tills", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tills_store_id"), ["store_id"], unique=False)

    op.create_table(
        "checkins",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("till_id", sa.String(length=64), nullable=False),
        sa.Column("msn", sa.String(length=6), nullable=False),
        sa.Column("merchant_qr_id", sa.String(length=64), nullable=False),
        sa.Column("customer_token_enc", sa.Text(), nullable=False),
        sa.Column("initiated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("checkout_id", sa.String(length=36), nullable=True),
        sa.Column("inbox_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["till_id"], ["tills.id"], name=op.f("fk_checkins_till_id_tills")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkins")),
    )
    with op.batch_alter_table("checkins", schema=None) as batch_op:
        batch_op.create_index("ix_checkins_till_id_status", ["till_id", "status"], unique=False)

    op.create_table(
        "checkouts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("till_id", sa.String(length=64), nullable=False),
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("msn", sa.String(length=6), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("amount_value", sa.BigInteger(), nullable=False),
        sa.Column("original_amount_value", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column(
            "receipt",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "warnings",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("description", sa.String(length=100), nullable=False),
        sa.Column("capture_mode", sa.String(length=8), nullable=False),
        sa.Column("reference", sa.String(length=50), nullable=False),
        sa.Column("create_key", sa.String(length=200), nullable=True),
        sa.Column("create_request_hash", sa.String(length=64), nullable=True),
        sa.Column("customer_token_enc", sa.Text(), nullable=True),
        sa.Column("customer_token_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("psp_reference", sa.String(length=100), nullable=True),
        sa.Column("vipps_state", sa.String(length=16), nullable=True),
        sa.Column("authorized_value", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("captured_value", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("refunded_value", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cancelled_value", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("capture_pending_value", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("refund_pending_value", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("failure_detail", sa.Text(), nullable=True),
        sa.Column("member_id", sa.String(length=36), nullable=True),
        sa.Column("club_outcome", sa.String(length=32), nullable=True),
        sa.Column("club_note", sa.Text(), nullable=True),
        sa.Column("phone_enc", sa.Text(), nullable=True),
        sa.Column("ciba_auth_req_id", sa.String(length=200), nullable=True),
        sa.Column("pos_update_deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scanned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("payment_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("authorized_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("poll_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "mutating_calls",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.ForeignKeyConstraint(["till_id"], ["tills.id"], name=op.f("fk_checkouts_till_id_tills")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkouts")),
        sa.UniqueConstraint("msn", "reference", name=op.f("uq_checkouts_msn_reference")),
        sa.UniqueConstraint("till_id", "create_key", name=op.f("uq_checkouts_till_id_create_key")),
    )
    with op.batch_alter_table("checkouts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_checkouts_one_active_per_till",
            ["till_id"],
            unique=True,
            postgresql_where=sa.text(
                "state IN ('AWAITING_SCAN', 'IDENTIFYING', 'AWAITING_POS_UPDATE', 'PAYMENT_REQUESTED', 'CANCELLING', 'AUTHORIZED')"
            ),
            sqlite_where=sa.text(
                "state IN ('AWAITING_SCAN', 'IDENTIFYING', 'AWAITING_POS_UPDATE', 'PAYMENT_REQUESTED', 'CANCELLING', 'AUTHORIZED')"
            ),
        )
        batch_op.create_index(
            "ix_checkouts_state_next_poll_at", ["state", "next_poll_at"], unique=False
        )
        batch_op.create_index(
            "ix_checkouts_till_id_created_at", ["till_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("checkouts", schema=None) as batch_op:
        batch_op.drop_index("ix_checkouts_till_id_created_at")
        batch_op.drop_index("ix_checkouts_state_next_poll_at")
        batch_op.drop_index(
            "ix_checkouts_one_active_per_till",
            postgresql_where=sa.text(
                "state IN ('AWAITING_SCAN', 'IDENTIFYING', 'AWAITING_POS_UPDATE', 'PAYMENT_REQUESTED', 'CANCELLING', 'AUTHORIZED')"
            ),
            sqlite_where=sa.text(
                "state IN ('AWAITING_SCAN', 'IDENTIFYING', 'AWAITING_POS_UPDATE', 'PAYMENT_REQUESTED', 'CANCELLING', 'AUTHORIZED')"
            ),
        )

    op.drop_table("checkouts")
    with op.batch_alter_table("checkins", schema=None) as batch_op:
        batch_op.drop_index("ix_checkins_till_id_status")

    op.drop_table("checkins")
    with op.batch_alter_table("tills", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tills_store_id"))

    op.drop_table("tills")
    with op.batch_alter_table("webhook_registrations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_registrations_msn"))

    op.drop_table("webhook_registrations")
    with op.batch_alter_table("webhook_inbox", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_inbox_status_next_attempt_at")

    op.drop_table("webhook_inbox")
    op.drop_table("stores")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_status_next_attempt_at")
        batch_op.drop_index("ix_outbox_checkout_id_status")

    op.drop_table("outbox")
    op.drop_table("members")
    op.drop_table("idempotent_requests")
    with op.batch_alter_table("checkout_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_checkout_changes_till_id_id")

    op.drop_table("checkout_changes")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_till_id"))
        batch_op.drop_index(batch_op.f("ix_audit_log_checkout_id"))

    op.drop_table("audit_log")
