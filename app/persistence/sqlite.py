"""The hot paths on SQLite (the embedded default): SQLAlchemy Core, correct rather than fast.

Same contract as the Postgres store (:mod:`app.persistence.store`). SQLite serializes writers
(``BEGIN IMMEDIATE``, see :mod:`app.db`), so a save checks the till's revision inside its
transaction and writes its parts one statement after another; a mismatch rolls everything back.
One process only: there is nobody to notify, the service signals its own waiters.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, func, insert, literal, or_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Select

from app.domain.state_machine import ACTIVE_STATES, CommandKind
from app.domain.statuses import (
    UNFINISHED_OUTBOX,
    UNPROCESSED_INBOX,
    CheckInStatus,
    ClubPolicy,
    InboxStatus,
    OutboxStatus,
    TillStatus,
)
from app.models import (
    AuditEntry,
    CheckIn,
    Checkout,
    CheckoutChange,
    IdempotentRequest,
    InboxEvent,
    OutboxCommand,
    Store,
    Till,
)
from app.persistence.counters import StatementCounter
from app.persistence.records import (
    DECISION_COLUMNS,
    POLL_COLUMNS,
    ChangeRecord,
    CheckoutRecord,
    CommandOutcome,
    CommandRecord,
    InboxOutcome,
    InboxRecord,
    LoadedCheckout,
    LoadedTill,
    PendingCommand,
    RevisionConflict,
    Saved,
    StorePolicy,
    TillRecord,
    TillWrite,
    WaitingCheckIn,
)
from app.persistence.store import Duplicate, NewInboxEvent, StoredInboxEvent

checkouts = cast(Table, Checkout.__table__)
tills = cast(Table, Till.__table__)
stores = cast(Table, Store.__table__)
outbox = cast(Table, OutboxCommand.__table__)
inbox = cast(Table, InboxEvent.__table__)
checkins = cast(Table, CheckIn.__table__)
changes = cast(Table, CheckoutChange.__table__)
audit_log = cast(Table, AuditEntry.__table__)
requests = cast(Table, IdempotentRequest.__table__)

ACTIVE = [state.value for state in ACTIVE_STATES]
UNFINISHED = [status.value for status in UNFINISHED_OUTBOX]
UNPROCESSED = [status.value for status in UNPROCESSED_INBOX]


def _till(row: RowMapping) -> TillRecord:
    return TillRecord(
        id=row["id"],
        store_id=row["store_id"],
        msn=row["msn"],
        merchant_qr_id=row["merchant_qr_id"],
        api_key_id=row["api_key_id"],
        status=TillStatus(row["status"]),
        revision=row["revision"],
        audit_seq=row["audit_seq"],
        audit_head=row["audit_head"],
    )


class SqliteStore:
    def __init__(self, engine: AsyncEngine, counter: StatementCounter) -> None:
        self._engine = engine
        self.counter = counter

    async def close(self) -> None:
        """The engine belongs to the application; nothing of its own to close."""

    # ---- plumbing -----------------------------------------------------------------------------

    async def _first(self, conn: AsyncConnection, statement: Any) -> RowMapping | None:
        self.counter.statement()
        return (await conn.execute(statement)).mappings().first()

    async def _all(self, conn: AsyncConnection, statement: Any) -> list[RowMapping]:
        self.counter.statement()
        return list((await conn.execute(statement)).mappings().all())

    async def _policy(self, conn: AsyncConnection, store_id: str) -> StorePolicy:
        row = await self._first(conn, select(stores).where(stores.c.id == store_id))
        if row is None:
            return StorePolicy()
        return StorePolicy(
            ClubPolicy(row["club_policy"]),
            bool(row["member_price_hold"]),
            int(row["member_price_hold_seconds"]),
        )

    async def _unfinished(self, conn: AsyncConnection, checkout_id: str) -> list[PendingCommand]:
        rows = await self._all(
            conn,
            select(outbox.c.id, outbox.c.kind, outbox.c.payload)
            .where(outbox.c.checkout_id == checkout_id, outbox.c.status.in_(UNFINISHED))
            .order_by(outbox.c.id),
        )
        return [
            PendingCommand(
                row["id"],
                CommandKind(row["kind"]),
                int(row["payload"]["amount"]) if (row["payload"] or {}).get("amount") else None,
            )
            for row in rows
        ]

    async def _inbox_status(
        self, conn: AsyncConnection, inbox_id: int | None
    ) -> InboxStatus | None:
        if inbox_id is None:
            return None
        row = await self._first(conn, select(inbox.c.status).where(inbox.c.id == inbox_id))
        return InboxStatus(row["status"]) if row is not None else None

    async def _loaded(
        self,
        conn: AsyncConnection,
        where: Select[Any],
        inbox_id: int | None,
        request: tuple[str, str] | None = None,
    ) -> LoadedCheckout | None:
        row = await self._first(conn, where)
        if row is None:
            return None
        checkout = CheckoutRecord.from_mapping(row)
        till_row = await self._first(conn, select(tills).where(tills.c.id == checkout.till_id))
        assert till_row is not None
        seen = None
        if request is not None:
            found = await self._first(
                conn,
                select(requests.c.request_hash).where(
                    requests.c.scope == request[0], requests.c.key == request[1]
                ),
            )
            seen = found["request_hash"] if found is not None else None
        return LoadedCheckout(
            checkout=checkout,
            till=_till(till_row),
            policy=await self._policy(conn, till_row["store_id"]),
            unfinished=await self._unfinished(conn, checkout.id),
            inbox_status=await self._inbox_status(conn, inbox_id),
            seen_request=seen,
        )

    async def _loaded_till(
        self, conn: AsyncConnection, till_row: RowMapping, inbox_id: int | None
    ) -> LoadedTill:
        till = _till(till_row)
        policy = await self._policy(conn, till.store_id)
        active_row = await self._first(
            conn,
            select(checkouts).where(checkouts.c.till_id == till.id, checkouts.c.state.in_(ACTIVE)),
        )
        active = None
        if active_row is not None:
            record = CheckoutRecord.from_mapping(active_row)
            active = LoadedCheckout(record, till, policy, await self._unfinished(conn, record.id))
        return LoadedTill(
            till, policy, active, inbox_status=await self._inbox_status(conn, inbox_id)
        )

    # ---- loads --------------------------------------------------------------------------------

    async def load_checkout(
        self,
        checkout_id: str,
        *,
        inbox_id: int | None = None,
        request: tuple[str, str] | None = None,
    ) -> LoadedCheckout | None:
        async with self._engine.connect() as conn:
            return await self._loaded(
                conn, select(checkouts).where(checkouts.c.id == checkout_id), inbox_id, request
            )

    async def load_by_reference(
        self, msn: str, reference: str, *, inbox_id: int | None = None
    ) -> LoadedCheckout | None:
        statement = select(checkouts).where(
            checkouts.c.msn == msn, checkouts.c.reference == reference
        )
        async with self._engine.connect() as conn:
            return await self._loaded(conn, statement, inbox_id)

    async def load_till(
        self, till_id: str, *, create_key: str | None, waiting_until: datetime
    ) -> LoadedTill | None:
        async with self._engine.connect() as conn:
            row = await self._first(conn, select(tills).where(tills.c.id == till_id))
            if row is None:
                return None
            loaded = await self._loaded_till(conn, row, None)
            if create_key is not None:
                keyed = await self._first(
                    conn,
                    select(checkouts).where(
                        checkouts.c.till_id == till_id, checkouts.c.create_key == create_key
                    ),
                )
                loaded.keyed = CheckoutRecord.from_mapping(keyed) if keyed is not None else None
            waiting = await self._first(
                conn,
                select(checkins)
                .where(
                    checkins.c.till_id == till_id,
                    checkins.c.status == CheckInStatus.WAITING.value,
                    checkins.c.expires_at > waiting_until,
                )
                .order_by(checkins.c.initiated_at.desc())
                .limit(1),
            )
            if waiting is not None:
                loaded.waiting = WaitingCheckIn(
                    waiting["id"],
                    waiting["customer_token_enc"],
                    waiting["initiated_at"],
                    waiting["expires_at"],
                )
            return loaded

    async def load_till_by_qr(
        self, msn: str, merchant_qr_id: str, *, inbox_id: int | None = None
    ) -> LoadedTill | None:
        async with self._engine.connect() as conn:
            row = await self._first(
                conn,
                select(tills).where(tills.c.merchant_qr_id == merchant_qr_id, tills.c.msn == msn),
            )
            return await self._loaded_till(conn, row, inbox_id) if row is not None else None

    async def read_checkout(self, checkout_id: str) -> CheckoutRecord | None:
        async with self._engine.connect() as conn:
            row = await self._first(conn, select(checkouts).where(checkouts.c.id == checkout_id))
        return CheckoutRecord.from_mapping(row) if row is not None else None

    async def read_checkout_and_unfinished(
        self, checkout_id: str
    ) -> tuple[CheckoutRecord, list[PendingCommand]] | None:
        async with self._engine.connect() as conn:
            row = await self._first(conn, select(checkouts).where(checkouts.c.id == checkout_id))
            if row is None:
                return None
            return CheckoutRecord.from_mapping(row), await self._unfinished(conn, checkout_id)

    async def active_checkout(self, till_id: str) -> CheckoutRecord | None:
        async with self._engine.connect() as conn:
            row = await self._first(
                conn,
                select(checkouts).where(
                    checkouts.c.till_id == till_id, checkouts.c.state.in_(ACTIVE)
                ),
            )
        return CheckoutRecord.from_mapping(row) if row is not None else None

    async def changes_after(self, till_id: str, after: int, limit: int) -> list[ChangeRecord]:
        columns = [c.label(f"c_{c.name}") for c in checkouts.c]
        statement = (
            select(changes, *columns)
            .select_from(changes.outerjoin(checkouts, checkouts.c.id == changes.c.checkout_id))
            .where(changes.c.till_id == till_id, changes.c.id > after)
            .order_by(changes.c.id)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = await self._all(conn, statement)
        return [
            ChangeRecord(
                row["id"],
                row["kind"],
                row["checkout_id"],
                row["data"] or {},
                CheckoutRecord.from_mapping(row, "c_") if row["c_id"] is not None else None,
            )
            for row in rows
        ]

    async def last_change_id(self, till_id: str) -> int:
        async with self._engine.connect() as conn:
            row = await self._first(
                conn,
                select(func.max(changes.c.id).label("last")).where(changes.c.till_id == till_id),
            )
        return int(row["last"] or 0) if row is not None else 0

    # ---- the decision's write -----------------------------------------------------------------

    async def save(self, write: TillWrite, now: datetime) -> Saved:
        try:
            async with self._engine.begin() as conn:
                self.counter.transaction()
                return await self._save(conn, write, now)
        except IntegrityError as exc:
            raise Duplicate(str(exc.orig)) from exc

    async def _execute(self, conn: AsyncConnection, statement: Any) -> Any:
        self.counter.statement()
        return await conn.execute(statement)

    async def _save(self, conn: AsyncConnection, write: TillWrite, now: datetime) -> Saved:
        row = await self._first(
            conn, select(tills.c.revision, tills.c.msn).where(tills.c.id == write.till_id)
        )
        if row is None or row["revision"] != write.expected_revision:
            raise RevisionConflict(write.till_id)
        bump: dict[str, Any] = {"revision": tills.c.revision + 1}
        if write.audit:
            bump |= {"audit_seq": write.audit[-1].seq, "audit_head": write.audit[-1].hash}
        await self._execute(conn, update(tills).where(tills.c.id == write.till_id).values(bump))
        if write.supersede_waiting:
            await self._execute(
                conn,
                update(checkins)
                .where(
                    checkins.c.till_id == write.till_id,
                    checkins.c.status == CheckInStatus.WAITING.value,
                )
                .values(status=CheckInStatus.SUPERSEDED.value),
            )
        if write.inserted is not None:
            await self._execute(conn, insert(checkouts).values(write.inserted.values()))
        if write.updated is not None:
            values = write.updated.values()
            columns = DECISION_COLUMNS + (POLL_COLUMNS if write.schedule_poll else ())
            await self._execute(
                conn,
                update(checkouts)
                .where(checkouts.c.id == write.updated.id)
                .values({c: values[c] for c in columns}),
            )
        checkout = write.inserted or write.updated
        command_ids: list[int] = []
        for command in write.commands:
            assert checkout is not None
            result = await self._execute(
                conn,
                insert(outbox)
                .values(
                    checkout_id=checkout.id,
                    till_id=write.till_id,
                    kind=command.kind.value,
                    msn=checkout.msn,
                    reference=checkout.reference,
                    idempotency_key=command.idempotency_key,
                    payload=command.payload,
                    status=(
                        OutboxStatus.IN_FLIGHT if command.claimed else OutboxStatus.PENDING
                    ).value,
                    attempts=1 if command.claimed else 0,
                    outcome_unknown=False,
                    lease_until=command.lease_until,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
                .returning(outbox.c.id),
            )
            command_ids.append(int(result.scalar_one()))
        change_ids: list[int] = []
        for change in write.changes:
            result = await self._execute(
                conn,
                insert(changes)
                .values(
                    till_id=write.till_id,
                    checkout_id=change.checkout_id,
                    kind=change.kind,
                    state=change.state,
                    data=change.data,
                    at=now,
                )
                .returning(changes.c.id),
            )
            change_ids.append(int(result.scalar_one()))
        for line in write.audit:
            await self._execute(
                conn,
                insert(audit_log).values(
                    chain=write.till_id,
                    seq=line.seq,
                    at=line.at,
                    actor=line.actor,
                    action=line.action,
                    till_id=write.till_id,
                    checkout_id=line.checkout_id,
                    amount_value=line.amount_value,
                    detail=line.detail,
                    prev_hash=line.prev_hash,
                    hash=line.hash,
                ),
            )
        if write.checkin is not None:
            checkin = write.checkin
            await self._execute(
                conn,
                insert(checkins).values(
                    id=checkin.id,
                    till_id=write.till_id,
                    msn=row["msn"],
                    merchant_qr_id=checkin.merchant_qr_id,
                    customer_token_enc=checkin.customer_token_enc,
                    initiated_at=checkin.initiated_at,
                    expires_at=checkin.expires_at,
                    status=checkin.status.value,
                    checkout_id=checkin.checkout_id,
                    inbox_id=checkin.inbox_id,
                    created_at=now,
                ),
            )
        if write.use_checkin is not None:
            checkin_id, checkout_id = write.use_checkin
            await self._execute(
                conn,
                update(checkins)
                .where(checkins.c.id == checkin_id)
                .values(status=CheckInStatus.USED.value, checkout_id=checkout_id),
            )
        if write.inbox is not None:
            await self._finish_inbox(conn, write.inbox, now, only_unprocessed=False)
        if write.command is not None:
            await self._finish_command(conn, write.command, now)
        if write.request is not None:
            await self._execute(
                conn,
                insert(requests).values(
                    scope=write.request.scope,
                    key=write.request.key,
                    request_hash=write.request.request_hash,
                    created_at=now,
                ),
            )
        return Saved(command_ids, change_ids)

    # ---- the inbox ----------------------------------------------------------------------------

    async def store_inbox(
        self, events: Sequence[NewInboxEvent], now: datetime, lease_until: datetime
    ) -> list[StoredInboxEvent]:
        stored: list[StoredInboxEvent] = []
        async with self._engine.begin() as conn:
            self.counter.transaction()
            for event in events:
                checkout_id = till_id = None
                checkout_state = None
                if event.reference is not None:
                    found = await self._first(
                        conn,
                        select(checkouts.c.id, checkouts.c.state).where(
                            checkouts.c.msn == event.msn,
                            checkouts.c.reference == event.reference,
                        ),
                    )
                    if found is not None:
                        checkout_id, checkout_state = found["id"], found["state"]
                if event.merchant_qr_id is not None:
                    found = await self._first(
                        conn,
                        select(tills.c.id).where(
                            tills.c.merchant_qr_id == event.merchant_qr_id,
                            tills.c.msn == event.msn,
                        ),
                    )
                    till_id = found["id"] if found is not None else None
                if event.disposition == "failed":
                    status = InboxStatus.FAILED
                elif checkout_id is None and till_id is None:
                    status = InboxStatus.UNMATCHED
                elif event.disposition in ("settle", "nudge"):
                    status = InboxStatus.PROCESSED
                else:
                    status = InboxStatus.PENDING
                pending = status is InboxStatus.PENDING
                done = status in (InboxStatus.PROCESSED, InboxStatus.UNMATCHED)
                statement = (
                    sqlite_insert(inbox)
                    .values(
                        dedup_key=event.dedup_key,
                        msn=event.msn,
                        event_type=event.event_type,
                        reference=event.reference,
                        body=event.body,
                        body_encrypted=event.body_encrypted,
                        event_time=event.event_time,
                        received_at=now,
                        status=status.value,
                        attempts=1 if pending else 0,
                        next_attempt_at=lease_until if pending else now + timedelta(days=3650),
                        last_error=event.last_error,
                        outcome=(
                            event.outcome
                            if status is InboxStatus.PROCESSED
                            else "unmatched"
                            if status is InboxStatus.UNMATCHED
                            else None
                        ),
                        checkout_id=checkout_id,
                        processed_at=now if done else None,
                    )
                    .on_conflict_do_nothing(index_elements=["dedup_key"])
                    .returning(inbox.c.id)
                )
                inserted = (await self._execute(conn, statement)).scalar_one_or_none()
                if inserted is None:
                    continue
                stored.append(StoredInboxEvent(int(inserted), event.dedup_key, status, checkout_id))
                if (
                    event.disposition == "nudge"
                    and status is InboxStatus.PROCESSED
                    and checkout_state in ACTIVE
                ):
                    await self._execute(
                        conn,
                        update(checkouts)
                        .where(checkouts.c.id == checkout_id)
                        .values(next_poll_at=now),
                    )
        return stored

    async def _finish_inbox(
        self, conn: AsyncConnection, outcome: InboxOutcome, now: datetime, *, only_unprocessed: bool
    ) -> None:
        statement = update(inbox).where(inbox.c.id == outcome.inbox_id)
        if only_unprocessed:
            statement = statement.where(inbox.c.status.in_(UNPROCESSED))
        await self._execute(
            conn,
            statement.values(
                status=outcome.status.value,
                outcome=outcome.outcome,
                checkout_id=outcome.checkout_id,
                processed_at=now,
                last_error=None,
            ),
        )

    async def finish_inbox(self, outcome: InboxOutcome, now: datetime) -> None:
        async with self._engine.begin() as conn:
            self.counter.transaction()
            await self._finish_inbox(conn, outcome, now, only_unprocessed=True)

    async def fail_inbox(
        self, inbox_id: int, error: str, now: datetime, *, base_seconds: float, cap_seconds: float
    ) -> float | None:
        async with self._engine.begin() as conn:
            self.counter.transaction()
            row = await self._first(
                conn,
                select(inbox.c.attempts).where(
                    inbox.c.id == inbox_id, inbox.c.status.in_(UNPROCESSED)
                ),
            )
            if row is None:
                return None
            delay = float(min(cap_seconds, base_seconds * 2 ** max(0, row["attempts"] - 1)))
            await self._execute(
                conn,
                update(inbox)
                .where(inbox.c.id == inbox_id)
                .values(
                    status=InboxStatus.FAILED.value,
                    last_error=error,
                    next_attempt_at=now + timedelta(seconds=delay),
                ),
            )
            return delay

    async def claim_inbox(self, now: datetime, lease: timedelta, limit: int) -> list[InboxRecord]:
        async with self._engine.begin() as conn:
            self.counter.transaction()
            rows = await self._all(
                conn,
                select(inbox)
                .where(inbox.c.status.in_(UNPROCESSED), inbox.c.next_attempt_at <= now)
                .order_by(inbox.c.id)
                .limit(limit),
            )
            if not rows:
                return []
            ids = [row["id"] for row in rows]
            await self._execute(
                conn,
                update(inbox)
                .where(inbox.c.id.in_(ids))
                .values(next_attempt_at=now + lease, attempts=inbox.c.attempts + 1),
            )
        return [
            InboxRecord(
                row["id"],
                row["msn"],
                row["event_type"],
                row["reference"],
                row["body"],
                row["body_encrypted"],
                InboxStatus(row["status"]),
                row["attempts"] + 1,
                row["received_at"],
            )
            for row in rows
        ]

    # ---- the outbox ---------------------------------------------------------------------------

    async def claim_outbox(
        self, now: datetime, lease: timedelta, limit: int
    ) -> list[CommandRecord]:
        earlier = outbox.alias("earlier")
        blocked = (
            select(literal(1))
            .where(
                earlier.c.checkout_id == outbox.c.checkout_id,
                earlier.c.id < outbox.c.id,
                earlier.c.status.in_(UNFINISHED),
            )
            .exists()
        )
        due = or_(
            and_(outbox.c.status == OutboxStatus.PENDING.value, outbox.c.next_attempt_at <= now),
            and_(outbox.c.status == OutboxStatus.IN_FLIGHT.value, outbox.c.lease_until <= now),
        )
        async with self._engine.begin() as conn:
            self.counter.transaction()
            rows = await self._all(
                conn,
                select(outbox)
                .where(due, or_(outbox.c.checkout_id.is_(None), ~blocked))
                .order_by(outbox.c.id)
                .limit(limit),
            )
            claimed: list[CommandRecord] = []
            for row in rows:
                await self._execute(
                    conn,
                    update(outbox)
                    .where(outbox.c.id == row["id"])
                    .values(
                        status=OutboxStatus.IN_FLIGHT.value,
                        lease_until=now + lease,
                        attempts=outbox.c.attempts + 1,
                        updated_at=now,
                    ),
                )
                checkout = None
                if row["checkout_id"] is not None:
                    checkout = await self._first(
                        conn, select(checkouts).where(checkouts.c.id == row["checkout_id"])
                    )
                claimed.append(
                    CommandRecord(
                        id=row["id"],
                        checkout_id=row["checkout_id"],
                        till_id=row["till_id"],
                        kind=CommandKind(row["kind"]),
                        msn=row["msn"],
                        reference=row["reference"],
                        idempotency_key=row["idempotency_key"],
                        payload=row["payload"] or {},
                        attempts=row["attempts"] + 1,
                        outcome_unknown=row["outcome_unknown"],
                        customer_token_enc=checkout["customer_token_enc"] if checkout else None,
                        customer_token_expires_at=(
                            checkout["customer_token_expires_at"] if checkout else None
                        ),
                        mutating_calls=checkout["mutating_calls"] if checkout else None,
                        scanned_at=checkout["scanned_at"] if checkout else None,
                        store_id=checkout["store_id"] if checkout else None,
                        checkout_found=checkout is not None,
                    )
                )
        return claimed

    async def _finish_command(
        self, conn: AsyncConnection, outcome: CommandOutcome, now: datetime
    ) -> None:
        values: dict[str, Any] = {
            "status": outcome.status.value,
            "last_error": outcome.last_error,
            "outcome_unknown": outbox.c.outcome_unknown | outcome.outcome_unknown,
            "lease_until": None,
            "updated_at": now,
            "completed_at": now
            if outcome.status in (OutboxStatus.DONE, OutboxStatus.FAILED)
            else None,
        }
        if outcome.result is not None:
            values["result"] = outcome.result
        if outcome.next_attempt_at is not None:
            values["next_attempt_at"] = outcome.next_attempt_at
        await self._execute(
            conn,
            update(outbox)
            .where(outbox.c.id == outcome.command_id, outbox.c.status.in_(UNFINISHED))
            .values(values),
        )

    async def finish_command(self, outcome: CommandOutcome, now: datetime) -> None:
        async with self._engine.begin() as conn:
            self.counter.transaction()
            await self._finish_command(conn, outcome, now)

    # ---- the reconciler -----------------------------------------------------------------------

    async def schedule_poll(
        self, checkout_id: str, now: datetime, every: float, *, slow_after: int, slow_every: float
    ) -> None:
        async with self._engine.begin() as conn:
            self.counter.transaction()
            row = await self._first(
                conn,
                select(checkouts.c.poll_count).where(
                    checkouts.c.id == checkout_id, checkouts.c.state.in_(ACTIVE)
                ),
            )
            if row is None:
                return
            seconds = max(every, slow_every) if row["poll_count"] >= slow_after else every
            await self._execute(
                conn,
                update(checkouts)
                .where(checkouts.c.id == checkout_id)
                .values(
                    poll_count=checkouts.c.poll_count + 1,
                    next_poll_at=now + timedelta(seconds=seconds),
                ),
            )
