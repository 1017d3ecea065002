"""The store's contract, on both backends: a save is all or nothing, and only on the revision
it was decided from; claims lease each row to one worker; decisions racing on one till all
land, none lost, in one unbroken audit chain."""

from __future__ import annotations

import asyncio
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from app.domain.state_machine import CommandKind
from app.domain.statuses import OutboxStatus
from app.models import AuditEntry, Checkout, CheckoutChange, OutboxCommand, Till
from app.persistence.records import (
    CHECKOUT_COLUMNS,
    CheckoutRecord,
    NewChange,
    NewCommand,
    RevisionConflict,
    TillWrite,
)
from app.persistence.store import Duplicate
from app.service import Services
from app.service.audit import verify_chain
from app.service.checkouts import CheckoutService
from tests.support.stack import Stack, in_process_stack


def test_the_checkout_record_mirrors_the_checkouts_table() -> None:
    assert set(CHECKOUT_COLUMNS) == {column.name for column in Checkout.__table__.columns}
    assert [f.name for f in fields(CheckoutRecord)] == list(CHECKOUT_COLUMNS)


async def _sale(stack: Stack) -> tuple[dict[str, Any], dict[str, Any]]:
    await stack.ensure_webhook()
    till = await stack.register_till()
    checkout = await stack.checkout(till, 4200)
    return till, checkout


async def _count(services: Services, model: Any) -> int:
    async with services.ctx.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_save_decided_on_an_old_revision_writes_nothing(database_url: str) -> None:
    async with in_process_stack(database_url) as stack:
        till, created = await _sale(stack)
        services: Services = stack.app.state.services
        store = services.ctx.store
        loaded = await store.load_checkout(created["id"])
        assert loaded is not None
        stale = loaded.till.revision
        now = datetime.now(UTC)
        changed = loaded.checkout.copy()
        changed.club_note = "first"
        changed.version += 1
        await store.save(TillWrite(till["tillId"], stale, updated=changed), now)
        changes, commands = (
            await _count(services, CheckoutChange),
            await _count(services, OutboxCommand),
        )
        late = loaded.checkout.copy()
        late.club_note = "second, decided on what the first one changed"
        late.version += 1
        command = NewCommand(
            CommandKind.CANCEL, "stale-cancel", {}, claimed=False, lease_until=None
        )
        with pytest.raises(RevisionConflict):
            await store.save(
                TillWrite(
                    till["tillId"],
                    stale,
                    updated=late,
                    commands=[command],
                    changes=[NewChange("checkout.updated", late.id, late.state.value, {})],
                ),
                now,
            )
        after = await store.read_checkout(created["id"])
        assert after is not None
        assert after.club_note == "first"
        assert await _count(services, CheckoutChange) == changes
        assert await _count(services, OutboxCommand) == commands
        reloaded = await store.load_checkout(created["id"])
        assert reloaded is not None
        assert reloaded.till.revision == stale + 1


async def test_a_second_active_checkout_for_a_till_is_refused_by_the_database(
    database_url: str,
) -> None:
    async with in_process_stack(database_url) as stack:
        till, created = await _sale(stack)
        services: Services = stack.app.state.services
        store = services.ctx.store
        loaded = await store.load_checkout(created["id"])
        assert loaded is not None
        twin = loaded.checkout.copy()
        twin.id, twin.reference = "another-checkout", "till-1-another"
        twin.create_key = None
        with pytest.raises(Duplicate):
            await store.save(
                TillWrite(till["tillId"], loaded.till.revision, inserted=twin), datetime.now(UTC)
            )
        assert await _count(services, Checkout) == 1


async def test_claims_lease_each_command_to_one_worker_and_in_order(database_url: str) -> None:
    # No workers of the service's own: the test's claims are the only ones.
    async with in_process_stack(database_url, workers={"enabled": False}) as stack:
        till, created = await _sale(stack)
        services: Services = stack.app.state.services
        store = services.ctx.store
        loaded = await store.load_checkout(created["id"])
        assert loaded is not None
        now = datetime.now(UTC)
        first = NewCommand(CommandKind.CAPTURE, "k-capture", {"amount": 1}, False, None)
        second = NewCommand(CommandKind.CANCEL, "k-cancel", {}, False, None)
        checkout = loaded.checkout.copy()
        checkout.version += 1
        saved = await store.save(
            TillWrite(
                till["tillId"], loaded.till.revision, updated=checkout, commands=[first, second]
            ),
            now,
        )
        assert len(saved.command_ids) == 2
        lease = timedelta(seconds=30)
        claims = await asyncio.gather(*(store.claim_outbox(now, lease, 10) for _ in range(4)))
        claimed = [command for claim in claims for command in claim]
        # The cancel waits behind the capture of the same checkout; the capture goes to one.
        assert [c.idempotency_key for c in claimed] == ["k-capture"]
        assert claimed[0].attempts == 1
        assert await store.claim_outbox(now, lease, 10) == []
        # A worker that died holding it: the lease runs out and the command is claimable again.
        again = await store.claim_outbox(now + lease + timedelta(seconds=1), lease, 10)
        assert [c.idempotency_key for c in again] == ["k-capture"]
        assert again[0].attempts == 2
        async with services.ctx.sessions() as session:
            statuses = {
                row.idempotency_key: row.status
                for row in await session.scalars(select(OutboxCommand))
            }
        assert statuses == {"k-capture": OutboxStatus.IN_FLIGHT, "k-cancel": OutboxStatus.PENDING}


async def test_decisions_racing_on_one_till_all_land_in_one_unbroken_chain(
    database_url: str,
) -> None:
    """Twenty edits of one checkout at once, each a read-modify-write of the same column: each
    save that finds the till changed decides again, so none is lost."""
    async with in_process_stack(database_url) as stack:
        _, created = await _sale(stack)
        services: Services = stack.app.state.services
        checkouts: CheckoutService = services.checkouts

        def mark(n: int) -> Any:
            def edit(checkout: CheckoutRecord) -> None:
                checkout.club_note = f"{checkout.club_note or ''}[{n}]"

            return edit

        await asyncio.gather(
            *(checkouts.change(created["id"], None, actor="test", edit=mark(n)) for n in range(20))
        )
        final = await checkouts.get(None, created["id"])
        assert sorted(final.club_note.strip("[]").split("][")) == sorted(map(str, range(20)))
        assert final.version == created["version"] + 20
        async with services.ctx.sessions() as session:
            assert await verify_chain(session) == []
            till = await session.scalar(select(Till))
            last = await session.scalar(
                select(func.max(AuditEntry.seq)).where(AuditEntry.chain == till.id)
            )
        assert till is not None
        assert till.audit_seq == last


async def test_a_poll_is_scheduled_every_so_often_and_slower_after_many(database_url: str) -> None:
    async with in_process_stack(database_url, workers={"enabled": False}) as stack:
        _, created = await _sale(stack)
        services: Services = stack.app.state.services
        store = services.ctx.store
        now = datetime.now(UTC).replace(microsecond=0)
        loaded = await store.load_checkout(created["id"])
        assert loaded is not None
        await store.schedule_poll(created["id"], now, 2.0, slow_after=1, slow_every=10.0)
        first = await store.read_checkout(created["id"])
        assert first is not None
        assert (first.poll_count, first.next_poll_at) == (1, now + timedelta(seconds=2))
        await store.schedule_poll(created["id"], now, 2.0, slow_after=1, slow_every=10.0)
        second = await store.read_checkout(created["id"])
        assert second is not None
        assert (second.poll_count, second.next_poll_at) == (2, now + timedelta(seconds=10))
