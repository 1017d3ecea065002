"""ORM models: the persistent shape of tills, checkouts, the inbox, the outbox and the rest.

No business decisions here. Invariants the schema itself enforces:

* ``uq_checkouts_msn_reference``: a Vipps ``reference`` is unique per sales unit (MSN), as at Vipps.
* ``ix_checkouts_one_active_per_till``: a partial unique index — at most one checkout per till in
  an active state. Two concurrent "create checkout" calls for one till cannot both commit.
* ``uq_inbox_dedup_key``: a webhook delivered twice is stored once.
* ``uq_outbox_idempotency_key``: one Vipps side effect per idempotency key.
* Secrets and customer tokens are stored encrypted (columns ending in ``_enc``), never in clear.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime
from app.domain.state_machine import CapturePolicy, CheckoutState, CommandKind
from app.domain.statuses import (
    CheckInStatus,
    ClubPolicy,
    InboxStatus,
    OutboxStatus,
    QrStatus,
    RegistrationStatus,
    TillStatus,
)

JsonType = JSON().with_variant(JSONB(), "postgresql")
# SQLite has no BIGINT autoincrement; INTEGER PRIMARY KEY is its 64-bit rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")

# States in which a checkout still occupies its till. Kept literal (not imported from the domain)
# because migrations must not change when code does; tests check both lists agree.
ACTIVE_CHECKOUT_STATES = (
    "AWAITING_SCAN",
    "IDENTIFYING",
    "AWAITING_POS_UPDATE",
    "PAYMENT_REQUESTED",
    "CANCELLING",
    "AUTHORIZED",
)
_ACTIVE_SQL = "state IN (" + ", ".join(f"'{s}'" for s in ACTIVE_CHECKOUT_STATES) + ")"


def _ts(nullable: bool = False) -> Mapped[Any]:
    return mapped_column(UTCDateTime(), nullable=nullable)


def _status(enum: type[StrEnum], length: int) -> Enum:
    """A typed status column stored as its plain string value (VARCHAR, no database enum type:
    adding a status needs no migration, and raw SQL on the hot paths compares plain text)."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class Store(Base):
    __tablename__ = "stores"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    club_policy: Mapped[ClubPolicy] = mapped_column(
        _status(ClubPolicy, 16), server_default=ClubPolicy.OFF.value
    )
    member_price_hold: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    member_price_hold_seconds: Mapped[int] = mapped_column(Integer, server_default="20")
    # Customer display language: nb | da | fi | en; NULL follows the browser's Accept-Language.
    display_language: Mapped[str | None] = mapped_column(String(8), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())


class Till(Base):
    __tablename__ = "tills"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id"), index=True)
    msn: Mapped[str] = mapped_column(String(6))
    merchant_qr_id: Mapped[str] = mapped_column(String(64), unique=True)
    location_description: Mapped[str] = mapped_column(String(36))
    api_key_id: Mapped[str] = mapped_column(String(32), unique=True)
    api_key_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[TillStatus] = mapped_column(
        _status(TillStatus, 16), server_default=TillStatus.ACTIVE.value
    )
    qr_status: Mapped[QrStatus] = mapped_column(
        _status(QrStatus, 16), server_default=QrStatus.PENDING.value
    )
    qr_content: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    # Bumped on every change of the till's checkouts; SSE consumers resume from it.
    version: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # The till's serialization point. Every write that a checkout decision depends on (the
    # till's checkouts, their outbox commands, its check-ins) bumps ``revision`` in the same
    # transaction, under the till row's lock; a decision is saved only if ``revision`` is still
    # the one it was made from (persistence.checkouts, optimistic save).
    revision: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # Head of the till's audit chain (see AuditEntry): read with the till, so appending an
    # entry needs no read of the log.
    audit_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    audit_head: Mapped[str] = mapped_column(String(64), server_default="0" * 64)


class Checkout(Base):
    __tablename__ = "checkouts"
    __table_args__ = (
        UniqueConstraint("msn", "reference"),
        UniqueConstraint("till_id", "create_key"),
        Index(
            "ix_checkouts_one_active_per_till",
            "till_id",
            unique=True,
            postgresql_where=text(_ACTIVE_SQL),
            sqlite_where=text(_ACTIVE_SQL),
        ),
        Index("ix_checkouts_state_next_poll_at", "state", "next_poll_at"),
        Index("ix_checkouts_till_id_created_at", "till_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    till_id: Mapped[str] = mapped_column(ForeignKey("tills.id"))
    store_id: Mapped[str] = mapped_column(String(64))
    msn: Mapped[str] = mapped_column(String(6))
    state: Mapped[CheckoutState] = mapped_column(_status(CheckoutState, 24))
    amount_value: Mapped[int] = mapped_column(BigInteger)
    original_amount_value: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    receipt: Mapped[dict[str, Any]] = mapped_column(JsonType)
    warnings: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    description: Mapped[str] = mapped_column(String(100))
    capture_mode: Mapped[CapturePolicy] = mapped_column(_status(CapturePolicy, 8))
    reference: Mapped[str] = mapped_column(String(50))
    create_key: Mapped[str | None] = mapped_column(String(200))
    create_request_hash: Mapped[str | None] = mapped_column(String(64))
    customer_token_enc: Mapped[str | None] = mapped_column(Text)
    customer_token_expires_at: Mapped[datetime | None] = _ts(nullable=True)
    psp_reference: Mapped[str | None] = mapped_column(String(100))
    vipps_state: Mapped[str | None] = mapped_column(String(16))
    authorized_value: Mapped[int] = mapped_column(BigInteger, server_default="0")
    captured_value: Mapped[int] = mapped_column(BigInteger, server_default="0")
    refunded_value: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cancelled_value: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # What the outbox has on its way to Vipps (captures / refunds decided, not yet answered): a
    # cache for readers. Decisions derive it from the unfinished outbox commands instead.
    capture_pending_value: Mapped[int] = mapped_column(BigInteger, server_default="0")
    refund_pending_value: Mapped[int] = mapped_column(BigInteger, server_default="0")
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_detail: Mapped[str | None] = mapped_column(Text)
    # Customer club
    member_id: Mapped[str | None] = mapped_column(String(36))
    club_outcome: Mapped[str | None] = mapped_column(String(32))
    club_note: Mapped[str | None] = mapped_column(Text)
    ciba_auth_req_id: Mapped[str | None] = mapped_column(String(200))
    pos_update_deadline: Mapped[datetime | None] = _ts(nullable=True)
    # Timeline
    created_at: Mapped[datetime] = _ts()
    updated_at: Mapped[datetime] = _ts()
    expires_at: Mapped[datetime] = _ts()
    scanned_at: Mapped[datetime | None] = _ts(nullable=True)
    payment_requested_at: Mapped[datetime | None] = _ts(nullable=True)
    authorized_at: Mapped[datetime | None] = _ts(nullable=True)
    finished_at: Mapped[datetime | None] = _ts(nullable=True)
    # Reconciler: when to ask Vipps next, how often it has.
    next_poll_at: Mapped[datetime | None] = _ts(nullable=True)
    poll_count: Mapped[int] = mapped_column(Integer, server_default="0")
    # Epoch stamps of recent mutating Vipps calls per operation ({"CAPTURE": [...], ...}); rows
    # written before per-operation budgets hold one list for all operations
    # (app.domain.call_budget). The outbox's rate limit.
    mutating_calls: Mapped[dict[str, list[float]] | list[float]] = mapped_column(
        JsonType, default=list
    )
    version: Mapped[int] = mapped_column(Integer, server_default="1")


class CheckIn(Base):
    """A ``user.checked-in.v1`` matched to a till: used by a checkout, waiting, or set aside."""

    __tablename__ = "checkins"
    __table_args__ = (Index("ix_checkins_till_id_status", "till_id", "status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    till_id: Mapped[str] = mapped_column(ForeignKey("tills.id"))
    msn: Mapped[str] = mapped_column(String(6))
    merchant_qr_id: Mapped[str] = mapped_column(String(64))
    customer_token_enc: Mapped[str] = mapped_column(Text)
    initiated_at: Mapped[datetime] = _ts()
    expires_at: Mapped[datetime] = _ts()
    status: Mapped[CheckInStatus] = mapped_column(_status(CheckInStatus, 24))
    checkout_id: Mapped[str | None] = mapped_column(String(36))
    inbox_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _ts()


class InboxEvent(Base):
    """Every signed webhook we accepted, stored before anything acts on it."""

    __tablename__ = "webhook_inbox"
    __table_args__ = (
        Index("ix_webhook_inbox_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True)
    msn: Mapped[str | None] = mapped_column(String(6))
    event_type: Mapped[str] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(64))
    # Raw body as received. Check-in bodies carry a customer token and are stored encrypted.
    body: Mapped[str] = mapped_column(Text)
    body_encrypted: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    event_time: Mapped[datetime | None] = _ts(nullable=True)
    received_at: Mapped[datetime] = _ts()
    status: Mapped[InboxStatus] = mapped_column(_status(InboxStatus, 16))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = _ts()
    last_error: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(String(64))
    checkout_id: Mapped[str | None] = mapped_column(String(36))
    processed_at: Mapped[datetime | None] = _ts(nullable=True)


class OutboxCommand(Base):
    """A Vipps call decided in a committed transaction, performed afterwards by a worker.

    Retries reuse ``idempotency_key`` and the body built from the same stored data, so Vipps
    answers a repeat with the original result. Commands of one checkout run strictly in id order.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_outbox_status_lease_until", "status", "lease_until"),
        Index("ix_outbox_checkout_id_status", "checkout_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    checkout_id: Mapped[str | None] = mapped_column(String(36))
    till_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[CommandKind] = mapped_column(_status(CommandKind, 32))
    msn: Mapped[str] = mapped_column(String(6))
    reference: Mapped[str | None] = mapped_column(String(50))
    idempotency_key: Mapped[str] = mapped_column(String(50), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    status: Mapped[OutboxStatus] = mapped_column(_status(OutboxStatus, 16))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = _ts()
    lease_until: Mapped[datetime | None] = _ts(nullable=True)
    # Set when an attempt may have reached Vipps without us learning the result.
    outcome_unknown: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = _ts()
    updated_at: Mapped[datetime] = _ts()
    completed_at: Mapped[datetime | None] = _ts(nullable=True)


class WebhookRegistration(Base):
    __tablename__ = "webhook_registrations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # Vipps's registration id
    msn: Mapped[str] = mapped_column(String(6), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JsonType)
    secret_enc: Mapped[str] = mapped_column(Text)
    status: Mapped[RegistrationStatus] = mapped_column(_status(RegistrationStatus, 16))
    created_at: Mapped[datetime] = _ts()
    retired_at: Mapped[datetime | None] = _ts(nullable=True)


class Member(Base):
    """A customer-club member. The phone number is kept only as a keyed hash plus ciphertext."""

    __tablename__ = "members"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    phone_hash: Mapped[str] = mapped_column(String(64), unique=True)
    phone_enc: Mapped[str] = mapped_column(Text)
    vipps_sub: Mapped[str | None] = mapped_column(String(100), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    store_id: Mapped[str | None] = mapped_column(String(64))
    enrolled_at: Mapped[datetime] = _ts()


class AuditEntry(Base):
    """Append-only, hash-chained: ``hash = sha256(prev_hash || canonical entry)``.

    One chain per till (``chain`` = till id), appended under the till's lock, so tills never wait
    for each other; operator actions without a till share the ``admin`` chain.
    """

    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("chain", "seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    chain: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = _ts()
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    till_id: Mapped[str | None] = mapped_column(String(64), index=True)
    checkout_id: Mapped[str | None] = mapped_column(String(36), index=True)
    amount_value: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class CheckoutChange(Base):
    """One row per visible change of a checkout; its id is the SSE event id per till."""

    __tablename__ = "checkout_changes"
    __table_args__ = (Index("ix_checkout_changes_till_id_id", "till_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    till_id: Mapped[str] = mapped_column(String(64))
    checkout_id: Mapped[str | None] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str | None] = mapped_column(String(24))
    data: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    at: Mapped[datetime] = _ts()


class IdempotentRequest(Base):
    """POS ``Idempotency-Key`` memory for mutating calls other than checkout creation."""

    __tablename__ = "idempotent_requests"
    __table_args__ = (UniqueConstraint("scope", "key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(128))  # e.g. "checkout:<id>:refund"
    key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = _ts()


class VippsKeySet(Base):
    """A sales unit's own Vipps API keys (``client_id``, ``client_secret``, subscription key),
    encrypted like every other secret here. ``fingerprint`` tells key sets apart in listings
    without revealing any of them (see ``app.vipps.credentials.Credentials.fingerprint``)."""

    __tablename__ = "vipps_key_sets"

    msn: Mapped[str] = mapped_column(String(6), primary_key=True)
    client_id_enc: Mapped[str] = mapped_column(Text)
    client_secret_enc: Mapped[str] = mapped_column(Text)
    subscription_key_enc: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = _ts()
    rotated_at: Mapped[datetime | None] = _ts(nullable=True)


class AdminKey(Base):
    """A named operator credential with its roles (``vipps-pos admin-keys create``).

    Stored as the SHA-256 of the key (the key is 256 random bits, shown once), like till keys.
    A revoked key keeps its row (the audit trail names it); only active keys' names are unique.
    """

    __tablename__ = "admin_keys"
    __table_args__ = (
        Index(
            "ix_admin_keys_active_name",
            "name",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
            sqlite_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the key's public id
    name: Mapped[str] = mapped_column(String(40))
    roles: Mapped[str] = mapped_column(String(64))  # comma separated: operator,money,monitor
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = _ts()
    revoked_at: Mapped[datetime | None] = _ts(nullable=True)


class ThrottleHit(Base):
    """How replicas share rate limits and failure counts (app/throttle.py): the requests (or
    failures) one replica counted for one key in one time slot. Each replica adds its counts and
    reads everyone else's in one statement per sync interval, and deletes slots older than the
    longest window. Unlogged on Postgres: losing it in a crash only forgets recent counts."""

    __tablename__ = "throttle_hits"
    __table_args__ = (Index("ix_throttle_hits_slot", "slot"),)

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    slot: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    replica: Mapped[str] = mapped_column(String(36), primary_key=True)
    hits: Mapped[int] = mapped_column(Integer)
    last_at: Mapped[float] = mapped_column(Float)  # unix time of the newest hit
