"""Plain records of what the hot paths read and write: no ORM identity map, no lazy loading.

A :class:`CheckoutRecord` mirrors one ``checkouts`` row (a test keeps the two in step). The
records are what services decide on and what the API renders; the ORM models in
:mod:`app.models` remain the schema and serve the operator paths (reports, listings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any

from app.domain.state_machine import CapturePolicy, CheckoutState, CommandKind
from app.domain.statuses import CheckInStatus, ClubPolicy, InboxStatus, OutboxStatus, TillStatus


@dataclass(slots=True)
class CheckoutRecord:
    id: str
    till_id: str
    store_id: str
    msn: str
    state: CheckoutState
    amount_value: int
    original_amount_value: int
    currency: str
    receipt: dict[str, Any]
    warnings: list[dict[str, Any]]
    description: str
    capture_mode: CapturePolicy
    reference: str
    create_key: str | None
    create_request_hash: str | None
    customer_token_enc: str | None
    customer_token_expires_at: datetime | None
    psp_reference: str | None
    vipps_state: str | None
    authorized_value: int
    captured_value: int
    refunded_value: int
    cancelled_value: int
    capture_pending_value: int
    refund_pending_value: int
    failure_code: str | None
    failure_detail: str | None
    member_id: str | None
    club_outcome: str | None
    club_note: str | None
    ciba_auth_req_id: str | None
    pos_update_deadline: datetime | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    scanned_at: datetime | None
    payment_requested_at: datetime | None
    authorized_at: datetime | None
    finished_at: datetime | None
    next_poll_at: datetime | None
    poll_count: int
    # Epoch seconds at which recent mutating Vipps calls for this reference ended.
    mutating_calls: Any
    version: int

    def copy(self) -> CheckoutRecord:
        return replace(self)

    @classmethod
    def from_mapping(cls, row: Any, prefix: str = "") -> CheckoutRecord:
        """From a database row (asyncpg ``Record``, SQLAlchemy ``RowMapping`` or ORM object
        attributes through ``vars``) whose keys are the column names, optionally prefixed."""
        values = {name: row[prefix + name] for name in CHECKOUT_COLUMNS}
        values["state"] = CheckoutState(values["state"])
        values["capture_mode"] = CapturePolicy(values["capture_mode"])
        return cls(**values)

    @classmethod
    def of(cls, obj: Any) -> CheckoutRecord:
        """From an ORM ``Checkout`` (operator paths)."""
        return cls.from_mapping({name: getattr(obj, name) for name in CHECKOUT_COLUMNS})

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CHECKOUT_COLUMNS}


CHECKOUT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(CheckoutRecord))

# Columns a decision may change. Written on every save of an existing checkout (the till's
# revision guarantees nothing else changed them since they were read); ``next_poll_at`` and
# ``poll_count`` are left out: the reconciler schedules polls outside decisions, and a save writes
# them only when the decision itself scheduled a poll (``CheckoutUpdate.schedule``).
DECISION_COLUMNS: tuple[str, ...] = (
    "state",
    "amount_value",
    "receipt",
    "warnings",
    "capture_mode",
    "customer_token_enc",
    "customer_token_expires_at",
    "psp_reference",
    "vipps_state",
    "authorized_value",
    "captured_value",
    "refunded_value",
    "cancelled_value",
    "capture_pending_value",
    "refund_pending_value",
    "failure_code",
    "failure_detail",
    "member_id",
    "club_outcome",
    "club_note",
    "ciba_auth_req_id",
    "pos_update_deadline",
    "updated_at",
    "scanned_at",
    "payment_requested_at",
    "authorized_at",
    "finished_at",
    "mutating_calls",
    "version",
)
POLL_COLUMNS: tuple[str, ...] = ("next_poll_at", "poll_count")


@dataclass(slots=True, frozen=True)
class TillRecord:
    """A till as a decision sees it: where it belongs, whether it sells, and its revision."""

    id: str
    store_id: str
    msn: str
    merchant_qr_id: str
    api_key_id: str
    status: TillStatus
    revision: int
    audit_seq: int
    audit_head: str


@dataclass(slots=True, frozen=True)
class StorePolicy:
    club_policy: ClubPolicy = ClubPolicy.OFF
    member_price_hold: bool = False
    member_price_hold_seconds: int = 0


@dataclass(slots=True, frozen=True)
class PendingCommand:
    """An unfinished outbox command, as far as a decision needs it (what is in flight)."""

    id: int
    kind: CommandKind
    amount: int | None


@dataclass(slots=True, frozen=True)
class WaitingCheckIn:
    id: str
    customer_token_enc: str
    initiated_at: datetime
    expires_at: datetime


@dataclass(slots=True)
class LoadedCheckout:
    """A checkout with everything a decision about it depends on, read in one statement.

    ``till.revision`` is the version of all of it: a save succeeds only while it is unchanged.
    """

    checkout: CheckoutRecord
    till: TillRecord
    policy: StorePolicy
    unfinished: list[PendingCommand]
    # The webhook being processed (when loaded for one): its status as stored right now.
    inbox_status: InboxStatus | None = None
    # A POS request's Idempotency-Key seen before under this scope: (request hash, stored answer).
    seen_request: str | None = None


@dataclass(slots=True)
class LoadedTill:
    """A till with what a new checkout or a scan depends on, read in one statement."""

    till: TillRecord
    policy: StorePolicy
    active: LoadedCheckout | None
    # The checkout created earlier with the same Idempotency-Key (checkout creation).
    keyed: CheckoutRecord | None = None
    # The newest check-in waiting for a checkout with enough token life left.
    waiting: WaitingCheckIn | None = None
    inbox_status: InboxStatus | None = None


@dataclass(slots=True, frozen=True)
class CommandRecord:
    """An outbox command as a worker performs it: the row, plus what travels with it from its
    checkout (the customer token, the rate-limit stamps), so a dispatch reads nothing first."""

    id: int
    checkout_id: str | None
    till_id: str | None
    kind: CommandKind
    msn: str
    reference: str | None
    idempotency_key: str
    payload: dict[str, Any]
    attempts: int
    outcome_unknown: bool
    customer_token_enc: str | None = None
    customer_token_expires_at: datetime | None = None
    mutating_calls: Any = None
    scanned_at: datetime | None = None
    store_id: str | None = None
    # False when the command's checkout row is gone or its link was cleared (by hand: the
    # service never deletes one). Such a command fails without calling Vipps.
    checkout_found: bool = True


@dataclass(slots=True, frozen=True)
class InboxRecord:
    id: int
    msn: str | None
    event_type: str
    reference: str | None
    body: str
    body_encrypted: bool
    status: InboxStatus
    attempts: int
    received_at: datetime


@dataclass(slots=True, frozen=True)
class ChangeRecord:
    """One row of a till's change feed (SSE), with the checkout as it is now."""

    id: int
    kind: str
    checkout_id: str | None
    data: dict[str, Any]
    checkout: CheckoutRecord | None


# ---- what a save writes -------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class NewCommand:
    kind: CommandKind
    idempotency_key: str
    payload: dict[str, Any]
    # Written already claimed (IN_FLIGHT under a lease) for a dispatch right after the commit.
    claimed: bool
    lease_until: datetime | None


@dataclass(slots=True, frozen=True)
class NewChange:
    kind: str
    checkout_id: str | None
    state: str | None
    data: dict[str, Any]


@dataclass(slots=True, frozen=True)
class AuditLine:
    """An audit entry with its place in the till's chain (hash already computed)."""

    seq: int
    at: datetime
    actor: str
    action: str
    checkout_id: str | None
    amount_value: int | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(slots=True, frozen=True)
class NewCheckIn:
    id: str
    merchant_qr_id: str
    customer_token_enc: str
    initiated_at: datetime
    expires_at: datetime
    status: CheckInStatus
    checkout_id: str | None
    inbox_id: int | None


@dataclass(slots=True, frozen=True)
class InboxOutcome:
    """How processing a stored webhook ended."""

    inbox_id: int
    status: InboxStatus
    outcome: str
    checkout_id: str | None


@dataclass(slots=True, frozen=True)
class CommandOutcome:
    """How one attempt of an outbox command ended (recorded with what it decided)."""

    command_id: int
    status: OutboxStatus  # DONE | FAILED | PENDING (retry)
    last_error: str | None
    result: dict[str, Any] | None = None
    next_attempt_at: datetime | None = None
    outcome_unknown: bool = False


@dataclass(slots=True, frozen=True)
class SeenRequest:
    scope: str
    key: str
    request_hash: str


@dataclass(slots=True)
class TillWrite:
    """Everything one decision writes for one till, saved atomically or not at all.

    The save succeeds only if the till's ``revision`` is still ``expected_revision`` (then it
    becomes ``expected_revision + 1``); otherwise it raises :class:`RevisionConflict` and writes
    nothing. ``audit`` continues the chain whose head was read with the till.
    """

    till_id: str
    expected_revision: int
    inserted: CheckoutRecord | None = None
    updated: CheckoutRecord | None = None
    schedule_poll: bool = False  # write next_poll_at / poll_count of ``updated`` too
    commands: Sequence[NewCommand] = ()
    changes: Sequence[NewChange] = ()
    audit: Sequence[AuditLine] = ()
    checkin: NewCheckIn | None = None
    supersede_waiting: bool = False  # mark the till's WAITING check-ins SUPERSEDED first
    use_checkin: tuple[str, str] | None = None  # (check-in id, checkout id): it becomes USED
    inbox: InboxOutcome | None = None
    command: CommandOutcome | None = None
    request: SeenRequest | None = None
    # (checkout id, version) to announce to waiters on every replica once committed; a checkout
    # id of ``None`` wakes the till's feed only.
    announce: Sequence[tuple[str | None, int | None]] = ()


@dataclass(slots=True, frozen=True)
class Saved:
    """Ids the database gave to what a save inserted, in the order given."""

    command_ids: list[int] = field(default_factory=list)
    change_ids: list[int] = field(default_factory=list)


class RevisionConflict(Exception):
    """The till changed since the decision was made: load again and decide again."""

    def __init__(self, till_id: str) -> None:
        super().__init__(f"till {till_id} changed since the decision was made")
        self.till_id = till_id
