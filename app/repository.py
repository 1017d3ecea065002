"""Queries of the operator paths (listings, reports, registrations, the reconciler's passes),
through the ORM. No business decisions: the service decides, this module reads and writes.

The hot paths — checkouts, their commands, webhooks — go through :mod:`app.persistence` instead.

Locking rule: :func:`lock_till` takes the till row ``FOR UPDATE`` (Postgres; SQLite's
``BEGIN IMMEDIATE`` already serializes all writers). An operator path that changes anything a
checkout decision depends on holds it and moves the till's ``revision`` (``append_audit`` does).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.state_machine import ACTIVE_STATES, CheckoutState
from app.domain.statuses import (
    UNFINISHED_OUTBOX,
    UNPROCESSED_INBOX,
    CheckInStatus,
    InboxStatus,
    OutboxStatus,
)
from app.models import (
    AuditEntry,
    CheckIn,
    Checkout,
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


async def active_checkout(session: AsyncSession, till_id: str) -> Checkout | None:
    return await _one(
        session,
        select(Checkout)
        .where(Checkout.till_id == till_id, Checkout.state.in_(ACTIVE_STATES))
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


# ---- the reconciler's passes ------------------------------------------------------------------


async def checkouts_due_for_poll(
    session: AsyncSession, states: Sequence[CheckoutState], now: datetime, limit: int
) -> list[str]:
    """Checkouts waiting on Vipps whose next poll is due and that have no Vipps call queued."""
    pending = exists().where(
        OutboxCommand.checkout_id == Checkout.id,
        OutboxCommand.status.in_(UNFINISHED_OUTBOX),
    )
    statement = (
        select(Checkout.id)
        .where(Checkout.state.in_(states), Checkout.next_poll_at <= now, ~pending)
        .order_by(Checkout.next_poll_at)
        .limit(limit)
    )
    return list((await session.scalars(statement)).all())


async def checkouts_past_deadline(
    session: AsyncSession, now: datetime, limit: int
) -> list[tuple[str, CheckoutState]]:
    """Unscanned checkouts past their expiry and member-price holds past their deadline."""
    statement = (
        select(Checkout.id, Checkout.state)
        .where(
            or_(
                and_(Checkout.state == CheckoutState.AWAITING_SCAN, Checkout.expires_at <= now),
                and_(
                    Checkout.state == CheckoutState.AWAITING_POS_UPDATE,
                    Checkout.pos_update_deadline <= now,
                ),
            )
        )
        .limit(limit)
    )
    return [(str(row[0]), CheckoutState(row[1])) for row in (await session.execute(statement))]


async def checkouts_identifying_past(
    session: AsyncSession, token_deadline: datetime, limit: int
) -> list[str]:
    """Checkouts still in the club step whose customer token expires by ``token_deadline``."""
    statement = (
        select(Checkout.id)
        .where(
            Checkout.state == CheckoutState.IDENTIFYING,
            Checkout.customer_token_expires_at <= token_deadline,
        )
        .limit(limit)
    )
    return list((await session.scalars(statement)).all())


# ---- check-ins --------------------------------------------------------------------------------


async def expire_checkins(session: AsyncSession, now: datetime) -> int:
    result = await session.execute(
        update(CheckIn)
        .where(CheckIn.status == CheckInStatus.WAITING, CheckIn.expires_at <= now)
        .values(status=CheckInStatus.EXPIRED)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# ---- inbox ------------------------------------------------------------------------------------


async def list_inbox(
    session: AsyncSession, *, statuses: Sequence[str] | None = None, limit: int = 100
) -> Sequence[InboxEvent]:
    statement = select(InboxEvent).order_by(InboxEvent.id.desc()).limit(limit)
    if statuses:
        statement = statement.where(InboxEvent.status.in_(statuses))
    return (await session.scalars(statement)).all()


# ---- outbox -----------------------------------------------------------------------------------


async def queue_stats(session: AsyncSession, now: datetime) -> dict[str, tuple[int, float]]:
    """Depth and age in seconds of the oldest item, for the inbox and the outbox."""
    stats: dict[str, tuple[int, float]] = {}
    for name, model, statuses, stamp in (
        ("inbox", InboxEvent, UNPROCESSED_INBOX, InboxEvent.received_at),
        ("outbox", OutboxCommand, UNFINISHED_OUTBOX, OutboxCommand.created_at),
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
            OutboxCommand.status == OutboxStatus.DONE,
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
            InboxEvent.status == InboxStatus.UNMATCHED,
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
