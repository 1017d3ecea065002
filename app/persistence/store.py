"""The one interface through which services load and save checkouts, commands and webhooks.

Two implementations: :class:`app.persistence.postgres.PostgresStore` (raw asyncpg, one round trip
per step: what production runs) and :class:`app.persistence.sqlite.SqliteStore` (SQLAlchemy Core
in ``BEGIN IMMEDIATE`` transactions: the embedded default, correct rather than fast). Both honour
the same contract, and the persistence tests run against both:

* ``load_*`` read without locking; ``save`` writes a :class:`TillWrite` atomically if and only if
  the till's revision is the one loaded, else raises :class:`RevisionConflict` and writes nothing.
* A save never commits anything the caller did not put in the write; the store owns its
  transactions (callers never begin or commit).
* ``store_inbox`` stores a batch of verified deliveries durably (duplicates by ``dedup_key``
  dropped) and matches each to its till or checkout in the same step.
* Claims are compare-and-set: a claimed row is leased to exactly one caller until its lease ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from app.domain.statuses import InboxStatus
from app.persistence.counters import StatementCounter
from app.persistence.records import (
    ChangeRecord,
    CheckoutRecord,
    CommandOutcome,
    CommandRecord,
    InboxOutcome,
    InboxRecord,
    LoadedCheckout,
    LoadedTill,
    PendingCommand,
    Saved,
    TillWrite,
)

# How the intake files a verified delivery (see STORE_INBOX in the Postgres store):
# ``decide``: a decision is needed (PENDING, processed right after); ``settle``: a signal that
# needs none (PROCESSED at once); ``nudge``: as settle, and an active checkout is polled now;
# ``failed``: not understood (FAILED, kept for inspection). Any of them is UNMATCHED when it
# matches no till or checkout of ours.
Disposition = Literal["decide", "settle", "nudge", "failed"]


@dataclass(frozen=True, slots=True)
class NewInboxEvent:
    dedup_key: str
    msn: str
    event_type: str
    reference: str | None
    merchant_qr_id: str | None
    body: str
    body_encrypted: bool
    event_time: datetime | None
    disposition: Disposition
    outcome: str | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class StoredInboxEvent:
    id: int
    dedup_key: str
    status: InboxStatus
    checkout_id: str | None


class Duplicate(Exception):
    """A save broke a unique constraint (e.g. a second active checkout for the till)."""

    def __init__(self, constraint: str) -> None:
        super().__init__(constraint)
        self.constraint = constraint


class CheckoutStore(Protocol):
    counter: StatementCounter

    async def close(self) -> None: ...

    async def load_checkout(
        self,
        checkout_id: str,
        *,
        inbox_id: int | None = None,
        request: tuple[str, str] | None = None,
    ) -> LoadedCheckout | None: ...

    async def load_by_reference(
        self, msn: str, reference: str, *, inbox_id: int | None = None
    ) -> LoadedCheckout | None: ...

    async def load_till(
        self, till_id: str, *, create_key: str | None, waiting_until: datetime
    ) -> LoadedTill | None: ...

    async def load_till_by_qr(
        self, msn: str, merchant_qr_id: str, *, inbox_id: int | None = None
    ) -> LoadedTill | None: ...

    async def read_checkout(self, checkout_id: str) -> CheckoutRecord | None: ...

    async def read_checkout_and_unfinished(
        self, checkout_id: str
    ) -> tuple[CheckoutRecord, list[PendingCommand]] | None: ...

    async def active_checkout(self, till_id: str) -> CheckoutRecord | None: ...

    async def changes_after(self, till_id: str, after: int, limit: int) -> list[ChangeRecord]: ...

    async def last_change_id(self, till_id: str) -> int: ...

    async def save(self, write: TillWrite, now: datetime) -> Saved: ...

    async def store_inbox(
        self, events: Sequence[NewInboxEvent], now: datetime, lease_until: datetime
    ) -> list[StoredInboxEvent]: ...

    async def finish_inbox(self, outcome: InboxOutcome, now: datetime) -> None: ...

    async def fail_inbox(
        self, inbox_id: int, error: str, now: datetime, *, base_seconds: float, cap_seconds: float
    ) -> float | None: ...

    async def claim_inbox(
        self, now: datetime, lease: timedelta, limit: int
    ) -> list[InboxRecord]: ...

    async def claim_outbox(
        self, now: datetime, lease: timedelta, limit: int
    ) -> list[CommandRecord]: ...

    async def finish_command(self, outcome: CommandOutcome, now: datetime) -> None: ...

    async def schedule_poll(
        self, checkout_id: str, now: datetime, every: float, *, slow_after: int, slow_every: float
    ) -> None: ...
