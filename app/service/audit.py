"""The audit trail: append-only and tamper-evident.

Each entry's ``hash`` is SHA-256 over the previous entry's hash in the same chain and the
entry's canonical JSON. Editing, deleting or reordering any row breaks every later hash of its
chain, which :func:`verify_chain` reports. Chains are per till (appended under the till lock,
so no extra contention) plus one ``admin`` chain serialized by an advisory lock on Postgres.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuditEntry

GENESIS = "0" * 64
ADMIN_CHAIN = "admin"


def _canonical(entry: AuditEntry) -> bytes:
    at = entry.at.isoformat() if entry.at else ""
    body = {
        "chain": entry.chain,
        "seq": entry.seq,
        "at": at,
        "actor": entry.actor,
        "action": entry.action,
        "till_id": entry.till_id,
        "checkout_id": entry.checkout_id,
        "amount_value": entry.amount_value,
        "detail": entry.detail,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    return hashlib.sha256(prev_hash.encode() + b"|" + _canonical(entry)).hexdigest()


async def append_audit(
    session: AsyncSession,
    *,
    at: datetime,
    actor: str,
    action: str,
    till_id: str | None = None,
    checkout_id: str | None = None,
    amount_value: int | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append to the till's chain (caller holds the till lock) or to the admin chain."""
    chain = till_id or ADMIN_CHAIN
    if chain == ADMIN_CHAIN and session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(0x5649505053)))
    last = (
        await session.execute(
            select(AuditEntry.seq, AuditEntry.hash)
            .where(AuditEntry.chain == chain)
            .order_by(AuditEntry.seq.desc())
            .limit(1)
        )
    ).first()
    seq, prev_hash = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
    entry = AuditEntry(
        chain=chain,
        seq=seq,
        at=at.replace(microsecond=at.microsecond),
        actor=actor,
        action=action,
        till_id=till_id,
        checkout_id=checkout_id,
        amount_value=amount_value,
        detail=detail or {},
        prev_hash=prev_hash,
    )
    entry.hash = entry_hash(prev_hash, entry)
    session.add(entry)
    await session.flush([entry])
    return entry


@dataclass(frozen=True)
class AuditBreak:
    chain: str
    seq: int
    entry_id: int
    problem: str


def verify_entries(entries: Sequence[AuditEntry]) -> list[AuditBreak]:
    """Check chains given in (chain, seq) order. Empty list: intact."""
    breaks: list[AuditBreak] = []
    previous: dict[str, tuple[int, str]] = {}
    for entry in entries:
        last_seq, last_hash = previous.get(entry.chain, (0, GENESIS))
        if entry.seq != last_seq + 1:
            breaks.append(AuditBreak(entry.chain, entry.seq, entry.id, "sequence gap"))
        if entry.prev_hash != last_hash:
            breaks.append(AuditBreak(entry.chain, entry.seq, entry.id, "previous hash mismatch"))
        if entry.hash != entry_hash(entry.prev_hash, entry):
            breaks.append(AuditBreak(entry.chain, entry.seq, entry.id, "entry altered"))
        previous[entry.chain] = (entry.seq, entry.hash)
    return breaks


async def verify_chain(session: AsyncSession) -> list[AuditBreak]:
    entries = (
        await session.scalars(select(AuditEntry).order_by(AuditEntry.chain, AuditEntry.seq))
    ).all()
    return verify_entries(entries)
