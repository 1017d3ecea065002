"""Queries and writes. No business decisions: the service decides, this module persists.

Locking rules (the service relies on them):

* :func:`lock_till` serializes everything that touches one till's checkouts: Postgres takes the
  till row ``FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` already serializes all writers.
* :func:`claim_outbox` and :func:`claim_inbox` are compare-and-set claims with
  ``FOR UPDATE SKIP LOCKED`` on Postgres, so any number of replicas can run workers; a claim is a
  lease, and an expired lease (a crashed worker) is claimable again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import Select, and_, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.models import (
    ACTIVE_CHECKOUT_STATES,
    AuditEntry,
    CheckIn,
    Checkout,
    CheckoutChange,
    IdempotentRequest,
    InboxEvent,
    OutboxCommand,
    Store,
    Till,
    WebhookRegistration,
)

T = TypeVar("T")


async def _one(session: AsyncSession, statement: Select[tuple[T]]) -> T | None:
    result: T | None = await session.scalar(statement)
    return result


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _insert(session: AsyncSession, table: Any) -> Any:
    return (postgresql.insert if _is_postgres(session) else sqlite.insert)(table)


# ---- stores and tills -------------------------------------------------------------------------


async def get_store(session: AsyncSession, store_id: str) -> Store | None:
    return await session.get(Store, store_id)


async def get_till(session: AsyncSession, till_id: str) -> Till | None:
    return await session.get(Till, till_id)


async def get_till_by_key_id(session: AsyncSession, key_id: str) -> Till | None:
    return await _one(session, select(Till).where(Till.api_key_id == key_id))


async def get_till_by_qr(session: AsyncSession, merchant_qr_id: str) -> Till | None:
    return await _one(session, select(Till).where(Till.merchant_qr_id == merchant_qr_id))


async def lock_till(session: AsyncSession, till_id: str) -> Till | None:
    """Load the till and hold its lock until the transaction ends."""
    statement = select(Till).where(Till.id == till_id).with_for_update()
    return await _one(session, statement.execution_options(populate_existing=True))


async def list_tills(
    session: AsyncSession, *, store_id: str | None = None, status: str | None = None
) -> Sequence[Till]:
    statement = select(Till).order_by(Till.store_id, Till.id)
    if store_id:
        statement = statement.where(Till.store_id == store_id)
    if status:
        statement = statement.where(Till.status == status)
    return (await session.scalars(statement)).all()


# ---- checkouts --------------------------------------------------------------------------------


async def get_checkout(session: AsyncSession, checkout_id: str) -> Checkout | None:
    return await session.get(Checkout, checkout_id, populate_existing=True)


async def get_checkout_by_reference(
    session: AsyncSession, msn: str, reference: str
) -> Checkout | None:
    return await _one(
        session, select(Checkout).where(Checkout.msn == msn, Checkout.reference == reference)
    )


async def get_checkout_by_create_key(
    session: AsyncSession, till_id: str, key: str
) -> Checkout | None:
    return await _one(
        session, select(Checkout).where(Checkout.till_id == till_id, Checkout.create_key == key)
    )


async def active_checkout(session: AsyncSession, till_id: str) -> Checkout | None:
    return await _one(
        session,
        select(Checkout)
        .where(Checkout.till_id == till_id, Checkout.state.in_(ACTIVE_CHECKOUT_STATES))
        .execution_options(populate_existing=True),
    )


async def list_checkouts(
    session: AsyncSession,
    *,
    till_id: str | None = None,
    store_id: str | None = None,
    states: Sequence[str] | None = None,
    older_than: datetime | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> Sequence[Checkout]:
    statement = select(Checkout).order_by(Checkout.created_at.desc()).limit(limit)
    if till_id:
        statement = statement.where(Checkout.till_id == till_id)
    if store_id:
        statement = statement.where(Checkout.store_id == store_id)
    if states:
        statement = statement.where(Checkout.state.in_(states))
    if older_than:
        statement = statement.where(Checkout.updated_at < older_than)
    if since:
        statement = statement.where(Checkout.created_at >= since)
    if until:
        statement = statement.where(Checkout.created_at < until)
    return (await session.scalars(statement)).all()


async def checkouts_due_for_poll(
    session: AsyncSession, states: Sequence[str], now: datetime, limit: int
) -> Sequence[Checkout]:
    """Checkouts waiting on Vipps whose next poll is due and that have no Vipps call queued."""
    pending = exists().where(
        OutboxCommand.checkout_id == Checkout.id,
        OutboxCommand.status.in_(("PENDING", "IN_FLIGHT")),
    )
    statement = (
        select(Checkout)
        .where(Checkout.state.in_(states), Checkout.next_poll_at <= now, ~pending)
        .order_by(Checkout.next_poll_at)
        .limit(limit)
    )
    return (await session.scalars(statement)).all()


async def checkouts_past_deadline(
    session: AsyncSession, now: datetime, limit: int
) -> Sequence[Checkout]:
    """Unscanned checkouts past their expiry and member-price holds past their deadline."""
    statement = (
        select(Checkout)
        .where(
            or_(
                and_(Checkout.state == "AWAITING_SCAN", Checkout.expires_at <= now),
                and_(Checkout.state == "AWAITING_POS_UPDATE", Checkout.pos_update_deadline <= now),
            )
        )
        .limit(limit)
    )
    return (await session.scalars(statement)).all()


async def checkouts_identifying_past(
    session: AsyncSession, token_deadline: datetime, limit: int
) -> Sequence[Checkout]:
    """Checkouts still in the club step whose customer token expires by ``token_deadline``."""
    statement = (
        select(Checkout)
        .where(
            Checkout.state == "IDENTIFYING",
            Checkout.customer_token_expires_at <= token_deadline,
        )
        .limit(limit)
    )
    return (await session.scalars(statement)).all()


# ---- check-ins --------------------------------------------------------------------------------


async def waiting_checkin(session: AsyncSession, till_id: str, now: datetime) -> CheckIn | None:
    return await _one(
        session,
        select(CheckIn)
        .where(CheckIn.till_id == till_id, CheckIn.status == "WAITING", CheckIn.expires_at > now)
        .order_by(CheckIn.initiated_at.desc())
        .limit(1),
    )


async def supersede_waiting_checkins(session: AsyncSession, till_id: str, status: str) -> None:
    await session.execute(
        update(CheckIn)
        .where(CheckIn.till_id == till_id, CheckIn.status == "WAITING")
        .values(status=status)
    )


async def expire_checkins(session: AsyncSession, now: datetime) -> int:
    result = await session.execute(
        update(CheckIn)
        .where(CheckIn.status == "WAITING", CheckIn.expires_at <= now)
        .values(status="EXPIRED")
    )
    return int(getattr(result, "rowcount", 0) or 0)


# ---- changes (SSE feed) -----------------------------------------------------------------------


async def changes_after(
    session: AsyncSession, till_id: str, after_id: int, limit: int = 100
) -> Sequence[CheckoutChange]:
    return (
        await session.scalars(
            select(CheckoutChange)
            .where(CheckoutChange.till_id == till_id, CheckoutChange.id > after_id)
            .order_by(CheckoutChange.id)
            .limit(limit)
        )
    ).all()


async def last_change_id(session: AsyncSession, till_id: str) -> int:
    value = await session.scalar(
        select(func.max(CheckoutChange.id)).where(CheckoutChange.till_id == till_id)
    )
    return int(value or 0)


# ---- inbox ------------------------------------------------------------------------------------


async def insert_inbox(session: AsyncSession, values: dict[str, Any]) -> int | None:
    """Insert unless the dedup key exists. Returns the new id, or ``None`` for a duplicate."""
    statement = (
        _insert(session, InboxEvent)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .returning(InboxEvent.id)
    )
    return (await session.execute(statement)).scalar_one_or_none()


_INBOX_COLUMNS = (
    "dedup_key", "msn", "event_type", "reference", "body", "body_encrypted", "event_time",
    "received_at", "status", "attempts", "next_attempt_at", "last_error",
)  # fmt: skip
_INSERT_INBOX_PG = """
    INSERT INTO webhook_inbox (dedup_key, msn, event_type, reference, body, body_encrypted,
                               event_time, received_at, status, attempts, next_attempt_at,
                               last_error)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING id
"""


async def store_inbox_event(session: AsyncSession, values: dict[str, Any]) -> int | None:
    """Insert and commit one webhook (the intake's only write); ``None`` for a duplicate.

    On Postgres this is a single statement in autocommit on the session's asyncpg connection —
    one round trip, prepared once per connection (asyncpg's statement cache) — instead of
    BEGIN / INSERT / COMMIT through the ORM, which was most of the intake's CPU
    (benchmarks/README.md). ``values`` holds exactly the ``_INBOX_COLUMNS``. Elsewhere (SQLite)
    the ORM insert in its own transaction.
    """
    if _is_postgres(session):
        connection = await session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        # Only outside a transaction does the INSERT commit on its own. A session that already
        # ran a statement has one open (the asyncpg adapter begins lazily), and closing the
        # session would silently roll the event back after we answered 2xx: use the ORM then.
        if not driver.is_in_transaction():
            try:
                inserted: int | None = await driver.fetchval(
                    _INSERT_INBOX_PG, *(values[column] for column in _INBOX_COLUMNS)
                )
            except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as exc:
                # SQLAlchemy did not see this error, so it cannot tell that the connection is
                # dead (the database restarted): discard it rather than return it to the pool.
                await connection.invalidate(exc)
                raise
            except asyncpg.PostgresError as exc:
                if driver.is_closed():  # e.g. terminated by the server (admin shutdown)
                    await connection.invalidate(exc)
                raise
            return inserted
        inserted = await insert_inbox(session, values)
        await session.commit()
        return inserted
    async with session.begin():
        return await insert_inbox(session, values)


async def claim_inbox(
    session: AsyncSession, now: datetime, lease: timedelta, limit: int
) -> Sequence[InboxEvent]:
    """Claim due PENDING/FAILED events: mark them leased by moving next_attempt_at forward."""
    candidates = (
        select(InboxEvent.id)
        .where(InboxEvent.status.in_(("PENDING", "FAILED")), InboxEvent.next_attempt_at <= now)
        .order_by(InboxEvent.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list((await session.scalars(candidates)).all())
    if not ids:
        return []
    await session.execute(
        update(InboxEvent)
        .where(InboxEvent.id.in_(ids))
        .values(next_attempt_at=now + lease, attempts=InboxEvent.attempts + 1)
    )
    rows = await session.scalars(
        select(InboxEvent)
        .where(InboxEvent.id.in_(ids))
        .order_by(InboxEvent.id)
        .execution_options(populate_existing=True)
    )
    return rows.all()


async def list_inbox(
    session: AsyncSession, *, statuses: Sequence[str] | None = None, limit: int = 100
) -> Sequence[InboxEvent]:
    statement = select(InboxEvent).order_by(InboxEvent.id.desc()).limit(limit)
    if statuses:
        statement = statement.where(InboxEvent.status.in_(statuses))
    return (await session.scalars(statement)).all()


# ---- outbox -----------------------------------------------------------------------------------


async def claim_outbox(
    session: AsyncSession, now: datetime, lease: timedelta, limit: int
) -> Sequence[OutboxCommand]:
    """Claim due commands, at most the first unfinished one per checkout (commands of a checkout
    run strictly in order: a capture never overtakes the create it depends on)."""
    earlier = aliased(OutboxCommand)
    blocked = exists().where(
        earlier.checkout_id == OutboxCommand.checkout_id,
        earlier.id < OutboxCommand.id,
        earlier.status.in_(("PENDING", "IN_FLIGHT")),
    )
    due = or_(
        and_(OutboxCommand.status == "PENDING", OutboxCommand.next_attempt_at <= now),
        and_(OutboxCommand.status == "IN_FLIGHT", OutboxCommand.lease_until <= now),
    )
    candidates = (
        select(OutboxCommand.id)
        .where(due, or_(OutboxCommand.checkout_id.is_(None), ~blocked))
        .order_by(OutboxCommand.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list((await session.scalars(candidates)).all())
    if not ids:
        return []
    await session.execute(
        update(OutboxCommand)
        .where(OutboxCommand.id.in_(ids))
        .values(
            status="IN_FLIGHT",
            lease_until=now + lease,
            attempts=OutboxCommand.attempts + 1,
            updated_at=now,
        )
    )
    rows = await session.scalars(
        select(OutboxCommand)
        .where(OutboxCommand.id.in_(ids))
        .order_by(OutboxCommand.id)
        .execution_options(populate_existing=True)
    )
    return rows.all()


async def get_outbox(session: AsyncSession, command_id: int) -> OutboxCommand | None:
    return await session.get(OutboxCommand, command_id, populate_existing=True)


async def count_outbox_kind(session: AsyncSession, checkout_id: str, kind: str) -> int:
    value = await session.scalar(
        select(func.count())
        .select_from(OutboxCommand)
        .where(OutboxCommand.checkout_id == checkout_id, OutboxCommand.kind == kind)
    )
    return int(value or 0)


async def pending_commands(session: AsyncSession, checkout_id: str) -> Sequence[OutboxCommand]:
    return (
        await session.scalars(
            select(OutboxCommand)
            .where(
                OutboxCommand.checkout_id == checkout_id,
                OutboxCommand.status.in_(("PENDING", "IN_FLIGHT")),
            )
            .order_by(OutboxCommand.id)
        )
    ).all()


async def queue_stats(session: AsyncSession, now: datetime) -> dict[str, tuple[int, float]]:
    """Depth and age in seconds of the oldest item, for the inbox and the outbox."""
    stats: dict[str, tuple[int, float]] = {}
    for name, model, statuses, stamp in (
        ("inbox", InboxEvent, ("PENDING", "FAILED"), InboxEvent.received_at),
        ("outbox", OutboxCommand, ("PENDING", "IN_FLIGHT"), OutboxCommand.created_at),
    ):
        row = (
            await session.execute(
                select(func.count(), func.min(stamp)).where(model.status.in_(statuses))
            )
        ).one()
        oldest = row[1]
        age = 0.0
        if oldest is not None:
            if oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=now.tzinfo)
            age = max(0.0, (now - oldest).total_seconds())
        stats[name] = (int(row[0]), age)
    return stats


# ---- webhook registrations --------------------------------------------------------------------


async def registrations_for_msn(session: AsyncSession, msn: str) -> Sequence[WebhookRegistration]:
    return (
        await session.scalars(
            select(WebhookRegistration)
            .where(WebhookRegistration.msn == msn)
            .order_by(WebhookRegistration.created_at.desc())
        )
    ).all()


async def all_registrations(session: AsyncSession) -> Sequence[WebhookRegistration]:
    return (
        await session.scalars(
            select(WebhookRegistration).order_by(
                WebhookRegistration.msn, WebhookRegistration.created_at
            )
        )
    ).all()


# ---- POS idempotency --------------------------------------------------------------------------


async def get_idempotent_request(
    session: AsyncSession, scope: str, key: str
) -> IdempotentRequest | None:
    return await _one(
        session,
        select(IdempotentRequest).where(
            IdempotentRequest.scope == scope, IdempotentRequest.key == key
        ),
    )


# ---- operator reports -------------------------------------------------------------------------


async def checkouts_created_between(
    session: AsyncSession, since: datetime, until: datetime, *, store_id: str | None = None
) -> Sequence[Checkout]:
    """Every checkout created in ``[since, until)``, by store, till and time (no limit)."""
    statement = (
        select(Checkout)
        .where(Checkout.created_at >= since, Checkout.created_at < until)
        .order_by(Checkout.store_id, Checkout.till_id, Checkout.created_at)
    )
    if store_id:
        statement = statement.where(Checkout.store_id == store_id)
    return (await session.scalars(statement)).all()


async def done_commands_by_checkout(
    session: AsyncSession, checkout_ids: Sequence[str], kind: str
) -> dict[str, int]:
    """How many commands of ``kind`` Vipps accepted (``DONE``), per checkout."""
    if not checkout_ids:
        return {}
    rows = await session.execute(
        select(OutboxCommand.checkout_id, func.count())
        .where(
            OutboxCommand.checkout_id.in_(checkout_ids),
            OutboxCommand.kind == kind,
            OutboxCommand.status == "DONE",
        )
        .group_by(OutboxCommand.checkout_id)
    )
    return {str(checkout_id): int(count) for checkout_id, count in rows.all()}


async def unmatched_payment_events(
    session: AsyncSession, since: datetime, until: datetime, *, msns: Sequence[str] | None = None
) -> Sequence[InboxEvent]:
    """Payment webhooks received in ``[since, until)`` for references we have no checkout of."""
    statement = (
        select(InboxEvent)
        .where(
            InboxEvent.status == "UNMATCHED",
            InboxEvent.event_type.like("epayments.payment.%"),
            InboxEvent.received_at >= since,
            InboxEvent.received_at < until,
        )
        .order_by(InboxEvent.id)
    )
    if msns is not None:
        statement = statement.where(InboxEvent.msn.in_(msns))
    return (await session.scalars(statement)).all()


async def audit_entries_in_order(session: AsyncSession) -> AsyncIterator[AuditEntry]:
    """The whole audit log by chain and sequence, streamed in batches."""
    result = await session.stream_scalars(
        select(AuditEntry)
        .order_by(AuditEntry.chain, AuditEntry.seq)
        .execution_options(yield_per=1000)
    )
    async for entry in result:
        yield entry


async def audit_for_checkout(session: AsyncSession, checkout_id: str) -> Sequence[AuditEntry]:
    """The checkout's audit entries — till requests, Vipps events, worker results — in order."""
    return (
        await session.scalars(
            select(AuditEntry)
            .where(AuditEntry.checkout_id == checkout_id)
            .order_by(AuditEntry.chain, AuditEntry.seq)
        )
    ).all()
