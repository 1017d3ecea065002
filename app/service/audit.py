"""The audit trail: append-only and tamper-evident.

Each entry's ``hash`` is SHA-256 over the previous entry's hash in the same chain and the
entry's canonical JSON. Editing, deleting or reordering any row breaks every later hash of its
chain, which :func:`verify_chain` reports. Chains are per till (appended under the till lock,
so no extra contention) plus one ``admin`` chain serialized by an advisory lock on Postgres.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuditEntry
from app.repository import audit_entries_in_order

GENESIS = "0" * 64
ADMIN_CHAIN = "admin"
# The API endpoint being served ("POST /api/v1/checkouts/<id>/refund"), set by the app's request
# middleware; every entry appended while serving it records it.
_endpoint: ContextVar[str | None] = ContextVar("audit_endpoint", default=None)


@contextmanager
def audit_endpoint(endpoint: str) -> Iterator[None]:
    token = _endpoint.set(endpoint)
    try:
        yield
    finally:
        _endpoint.reset(token)


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
    detail = dict(detail or {})
    endpoint = _endpoint.get()
    if endpoint is not None:
        detail.setdefault("endpoint", endpoint)
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
        detail=detail,
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


class ChainVerifier:
    """Checks entries fed in (chain, seq) order; :attr:`breaks` empty means intact so far."""

    def __init__(self) -> None:
        self.breaks: list[AuditBreak] = []
        self.entries = 0
        self._previous: dict[str, tuple[int, str]] = {}

    @property
    def chains(self) -> int:
        return len(self._previous)

    def feed(self, entry: AuditEntry) -> None:
        self.entries += 1
        last_seq, last_hash = self._previous.get(entry.chain, (0, GENESIS))
        if entry.seq != last_seq + 1:
            self._break(entry, "sequence gap")
        if entry.prev_hash != last_hash:
            self._break(entry, "previous hash mismatch")
        if entry.hash != entry_hash(entry.prev_hash, entry):
            self._break(entry, "entry altered")
        self._previous[entry.chain] = (entry.seq, entry.hash)

    def _break(self, entry: AuditEntry, problem: str) -> None:
        self.breaks.append(AuditBreak(entry.chain, entry.seq, entry.id, problem))


def verify_entries(entries: Iterable[AuditEntry]) -> list[AuditBreak]:
    """Check chains given in (chain, seq) order. Empty list: intact."""
    verifier = ChainVerifier()
    for entry in entries:
        verifier.feed(entry)
    return verifier.breaks


async def verify_chain(session: AsyncSession) -> list[AuditBreak]:
    return (await verify_log(session)).breaks


@dataclass(frozen=True)
class AuditVerification:
    entries: int
    chains: int
    breaks: list[AuditBreak]

    @property
    def intact(self) -> bool:
        return not self.breaks


async def verify_log(session: AsyncSession) -> AuditVerification:
    """Verify every chain of the whole log, streamed (memory does not grow with the log).

    A deleted last entry of a chain cannot be seen from the chain alone; everything else —
    an edited, deleted, inserted or reordered entry — breaks the chain where it happened.
    """
    verifier = ChainVerifier()
    async for entry in audit_entries_in_order(session):
        verifier.feed(entry)
    return AuditVerification(verifier.entries, verifier.chains, verifier.breaks)
