"""Finishing an encryption-key rotation: ``vipps-pos encryption-keys rotate``.

Rotation as documented (docs/operations.md): put the new key first, ``ENCRYPTION_KEY="NEW,OLD"``,
restart every replica, run ``vipps-pos encryption-keys rotate``, then drop ``OLD``. Until the
command has run the service works on both keys: it decrypts with either, and looks members up
under each key's phone-number hash (app/loyalty/members.py). The command moves everything to the
first key:

* every ciphertext (webhook secrets, customer tokens of check-ins and checkouts, encrypted inbox
  bodies, members' phone numbers) is re-encrypted under the first key;
* every member's lookup hash becomes the first key's. Two rows of one phone number — left by
  versions that looked under the first key's hash only, so a rotation let the number enroll again
  — are merged into the one enrolled first (its id is the one tills have seen longest), keeping
  the other's Vipps ``sub``, name and store where the first has none.

Safe to run while the service runs, and to run again: ciphertexts are replaced by compare-and-set
(a token the service cleared meanwhile stays cleared), members are changed under row locks, in
batches of one short transaction each. A value no configured key opens is counted and left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.crypto import DecryptionFailed
from app.models import CheckIn, Checkout, InboxEvent, Member, WebhookRegistration
from app.service.audit import append_audit
from app.service.context import ServiceContext

log = structlog.get_logger("app.keys")
BATCH = 500


@dataclass
class RotationReport:
    reencrypted: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)
    members_rehashed: int = 0
    members_merged: int = 0

    @property
    def clean(self) -> bool:
        """Nothing is left that needs a key other than the first."""
        return not any(self.unreadable.values())


# (label, primary key, encrypted column, extra condition) of every encrypted column but members'.
_COLUMNS: list[tuple[str, Any, Any, Any]] = [
    (
        "webhook_registrations.secret_enc",
        WebhookRegistration.id,
        WebhookRegistration.secret_enc,
        None,
    ),
    ("checkins.customer_token_enc", CheckIn.id, CheckIn.customer_token_enc, None),
    (
        "checkouts.customer_token_enc",
        Checkout.id,
        Checkout.customer_token_enc,
        Checkout.customer_token_enc.is_not(None),
    ),
    ("webhook_inbox.body", InboxEvent.id, InboxEvent.body, InboxEvent.body_encrypted.is_(True)),
]


class KeyRotation:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def run(self, *, actor: str = "cli") -> RotationReport:
        report = RotationReport()
        for label, key, column, condition in _COLUMNS:
            done, unreadable = await self._reencrypt(key, column, condition)
            report.reencrypted[label] = done
            report.unreadable[label] = unreadable
        await self._members(report)
        async with self.ctx.sessions() as session, session.begin():
            await append_audit(
                session,
                at=self.ctx.clock(),
                actor=actor,
                action="keys.rotate",
                detail={
                    "reencrypted": report.reencrypted,
                    "unreadable": report.unreadable,
                    "membersRehashed": report.members_rehashed,
                    "membersMerged": report.members_merged,
                },
            )
        log.info(
            "keys.rotated",
            reencrypted=report.reencrypted,
            unreadable=report.unreadable,
            members_rehashed=report.members_rehashed,
            members_merged=report.members_merged,
        )
        return report

    async def _reencrypt(
        self, key: InstrumentedAttribute[Any], column: InstrumentedAttribute[Any], condition: Any
    ) -> tuple[int, int]:
        """Re-encrypt one column in keyset-paged batches; (rows replaced, rows unreadable)."""
        done = unreadable = 0
        after: Any = None
        while True:
            query = select(key, column).order_by(key).limit(BATCH)
            if condition is not None:
                query = query.where(condition)
            if after is not None:
                query = query.where(key > after)
            async with self.ctx.sessions() as session, session.begin():
                rows = (await session.execute(query)).all()
                for row_key, ciphertext in rows:
                    try:
                        fresh = self.ctx.secrets.reencrypt(ciphertext)
                    except DecryptionFailed:
                        unreadable += 1
                        continue
                    result = await session.execute(
                        update(key.class_)
                        .where(key == row_key, column == ciphertext)
                        .values({column.key: fresh})
                    )
                    done += int(getattr(result, "rowcount", 0) or 0)
            if len(rows) < BATCH:
                return done, unreadable
            after = rows[-1][0]

    async def _members(self, report: RotationReport) -> None:
        after: str | None = None
        unreadable = 0
        merged_away: set[str] = set()
        while True:
            async with self.ctx.sessions() as session, session.begin():
                query = select(Member).order_by(Member.id).limit(BATCH).with_for_update()
                if after is not None:
                    query = query.where(Member.id > after)
                rows = (await session.scalars(query)).all()
                for row in rows:
                    if row.id in merged_away:
                        continue
                    try:
                        await self._member(session, row, report, merged_away)
                    except DecryptionFailed:
                        unreadable += 1
            if len(rows) < BATCH:
                break
            after = rows[-1].id
        report.unreadable["members.phone_enc"] = unreadable

    async def _member(
        self, session: AsyncSession, row: Member, report: RotationReport, merged_away: set[str]
    ) -> None:
        msisdn = self.ctx.secrets.decrypt(row.phone_enc)
        current = self.ctx.secrets.lookup_hash(msisdn)
        if row.phone_hash != current:
            holder = await session.scalar(
                select(Member).where(Member.phone_hash == current).with_for_update()
            )
            if holder is not None and holder.id != row.id:
                row = await self._merge(session, holder, row, merged_away)
                report.members_merged += 1
            report.members_rehashed += 1
        row.phone_hash = current
        row.phone_enc = self.ctx.secrets.encrypt(msisdn)
        await session.flush()

    async def _merge(
        self, session: AsyncSession, first: Member, second: Member, merged_away: set[str]
    ) -> Member:
        """Keep the row enrolled first, with what only the other knew; delete the other."""
        keep, drop = sorted((first, second), key=lambda m: (m.enrolled_at, m.id))
        merged_away.add(drop.id)
        sub, name, store = drop.vipps_sub, drop.name, drop.store_id
        await session.delete(drop)
        await session.flush()  # frees the unique hash and sub before ``keep`` takes them
        keep.vipps_sub = keep.vipps_sub or sub
        keep.name = keep.name or name
        keep.store_id = keep.store_id or store
        log.info("keys.member_merged", member_id=keep.id, merged_id=drop.id)
        return keep
