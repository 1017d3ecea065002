"""The audit trail: append-only and tamper-evident.

Each entry's ``hash`` is SHA-256 over the previous entry's hash in the same chain and the
entry's canonical JSON. Editing, deleting or reordering any row breaks every later hash of its
chain, which :func:`verify_chain` reports. Chains are per till plus one ``admin`` chain.

A till's chain head (last ``seq`` and ``hash``) is kept on the till row: the hot paths read it
with the till and append in the same statement that saves their decision (the till's revision
guards it, see :mod:`app.persistence.postgres`); the operator paths here lock the till row and
move the head with their entry. The ``admin`` chain is serialized by an advisory lock on
Postgres and continues from its last entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuditEntry, Till
from app.persistence.records import AuditLine
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


def audit_hash(
    prev_hash: str,
    *,
    chain: str,
    seq: int,
    at: datetime | None,
    actor: str,
    action: str,
    till_id: str | None,
    checkout_id: str | None,
    amount_value: int | None,
    detail: dict[str, Any],
) -> str:
    """``sha256(prev_hash | canonical JSON of the entry)``: what links an entry to its chain."""
    body = {
        "chain": chain,
        "seq": seq,
        "at": at.isoformat() if at else "",
        "actor": actor,
        "action": action,
        "till_id": till_id,
        "checkout_id": checkout_id,
        "amount_value": amount_value,
        "detail": detail,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(prev_hash.encode() + b"|" + canonical).hexdigest()


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    return audit_hash(
        prev_hash,
        chain=entry.chain,
        seq=entry.seq,
        at=entry.at,
        actor=entry.actor,
        action=entry.action,
        till_id=entry.till_id,
        checkout_id=entry.checkout_id,
        amount_value=entry.amount_value,
        detail=entry.detail,
    )


def with_endpoint(detail: dict[str, Any] | None) -> dict[str, Any]:
    """The entry's detail, naming the API endpoint being served (if any)."""
    detail = dict(detail or {})
    endpoint = _endpoint.get()
    if endpoint is not None:
        detail.setdefault("endpoint", endpoint)
    return detail


def till_line(
    till_id: str,
    after: tuple[int, str],
    *,
    at: datetime,
    actor: str,
    action: str,
    checkout_id: str | None,
    amount_value: int | None,
    detail: dict[str, Any] | None,
) -> AuditLine:
    """The next entry of a till's chain whose head is ``after`` (seq, hash)."""
    seq, prev_hash = after[0] + 1, after[1]
    detail = with_endpoint(detail)
    return AuditLine(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        checkout_id=checkout_id,
        amount_value=amount_value,
        detail=detail,
        prev_hash=prev_hash,
        hash=audit_hash(
            prev_hash,
            chain=till_id,
            seq=seq,
            at=at,
            actor=actor,
            action=action,
            till_id=till_id,
            checkout_id=checkout_id,
            amount_value=amount_value,
            detail=detail,
        ),
    )


async def append_audit(
    session: AsyncSession,
    *,
    at: datetime,
    actor: str,
    action: str,
    till: Till | None = None,
    checkout_id: str | None = None,
    amount_value: int | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append to ``till``'s chain (the caller holds the till row's lock: ``lock_till``) or,
    without a till, to the admin chain. Moving a till's head also moves its revision: a decision
    made from the till as it was before cannot be saved over this."""
    if till is not None:
        line = till_line(
            till.id,
            (till.audit_seq, till.audit_head),
            at=at,
            actor=actor,
            action=action,
            checkout_id=checkout_id,
            amount_value=amount_value,
            detail=detail,
        )
        till.audit_seq, till.audit_head = line.seq, line.hash
        till.revision += 1
        entry = AuditEntry(
            chain=till.id,
            seq=line.seq,
            at=at,
            actor=actor,
            action=action,
            till_id=till.id,
            checkout_id=checkout_id,
            amount_value=amount_value,
            detail=line.detail,
            prev_hash=line.prev_hash,
            hash=line.hash,
        )
        session.add(entry)
        await session.flush([entry, till])
        return entry
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(0x5649505053)))
    last = (
        await session.execute(
            select(AuditEntry.seq, AuditEntry.hash)
            .where(AuditEntry.chain == ADMIN_CHAIN)
            .order_by(AuditEntry.seq.desc())
            .limit(1)
        )
    ).first()
    seq, prev_hash = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
    entry = AuditEntry(
        chain=ADMIN_CHAIN,
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        till_id=None,
        checkout_id=checkout_id,
        amount_value=amount_value,
        detail=with_endpoint(detail),
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
