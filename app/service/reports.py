"""End-of-day reconciliation: the tills' receipts against what Vipps moved, per till and store.

A day is a calendar day in the given time zone (default ``Europe/Oslo``); the report covers the
checkouts *created* that day with their money as known now — a refund made tomorrow for today's
sale shows on today's report when it is run again, and every figure comes from Vipps's own
answers (the outbox records absolute totals), never from what the till asked for.

Flagged mismatches (``Mismatch.code``):

* ``captured_without_receipt`` — money captured for a checkout that carries no receipt number:
  the till has nothing to match it against ("captured but not known to the till").
* ``pos_id_mismatch`` — the receipt's ``posId`` names another till than the one that rang it up.
* ``duplicate_receipt`` — one (posId, receiptNumber) captured on more than one checkout.
* ``unknown_vipps_payment`` — Vipps sent a payment event that day for a reference we have no
  checkout of (a payment made outside this service, or our record lost).
* ``authorized_not_captured`` — a reservation left neither captured nor released.
* ``refunded_more_than_once`` — several refunds on one receipt (each may be right; the
  operator checks).
* ``refund_exceeds_capture`` — more refunded than captured: never legitimate.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from app import repository as repo
from app.domain.state_machine import CommandKind
from app.models import AuditEntry, Checkout
from app.service.audit import AuditVerification, verify_log
from app.service.context import ServiceContext

DEFAULT_TIMEZONE = "Europe/Oslo"


@dataclass(frozen=True)
class Mismatch:
    code: str
    detail: str
    store_id: str | None = None
    till_id: str | None = None
    checkout_id: str | None = None
    reference: str | None = None
    receipt_number: str | None = None


@dataclass
class ReceiptLine:
    store_id: str
    till_id: str
    checkout_id: str
    reference: str
    created_at: str
    state: str
    currency: str
    pos_id: str | None
    receipt_number: str | None
    amount: int
    authorized: int
    captured: int
    refunded: int
    cancelled: int
    refund_count: int
    flags: list[str] = field(default_factory=list)

    @property
    def open_reservation(self) -> int:
        return max(0, self.authorized - self.captured - self.cancelled)


@dataclass
class Totals:
    store_id: str
    till_id: str | None
    currency: str
    checkouts: int = 0
    captured_count: int = 0
    authorized: int = 0
    captured: int = 0
    refunded: int = 0
    cancelled: int = 0
    flagged: int = 0

    @property
    def net(self) -> int:
        return self.captured - self.refunded

    def add(self, line: ReceiptLine) -> None:
        self.checkouts += 1
        self.captured_count += 1 if line.captured > 0 else 0
        self.authorized += line.authorized
        self.captured += line.captured
        self.refunded += line.refunded
        self.cancelled += line.cancelled
        self.flagged += 1 if line.flags else 0

    def as_json(self) -> dict[str, Any]:
        return {
            "storeId": self.store_id,
            "tillId": self.till_id,
            "currency": self.currency,
            "checkouts": self.checkouts,
            "capturedCount": self.captured_count,
            "authorized": self.authorized,
            "captured": self.captured,
            "refunded": self.refunded,
            "cancelled": self.cancelled,
            "net": self.net,
            "flagged": self.flagged,
        }


@dataclass
class EndOfDayReport:
    day: date
    timezone: str
    since: datetime
    until: datetime
    store_id: str | None
    receipts: list[ReceiptLine]
    tills: list[Totals]
    stores: list[Totals]
    mismatches: list[Mismatch]

    def as_json(self) -> dict[str, Any]:
        return {
            "date": self.day.isoformat(),
            "timezone": self.timezone,
            "from": self.since.isoformat(),
            "to": self.until.isoformat(),
            "storeId": self.store_id,
            "receipts": [_camel(asdict(r)) for r in self.receipts],
            "tills": [t.as_json() for t in self.tills],
            "stores": [s.as_json() for s in self.stores],
            "mismatches": [_camel(asdict(m)) for m in self.mismatches],
        }

    def as_csv(self) -> str:
        """One flat table: a ``record`` column tells receipt, till and store totals, mismatch."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in self.receipts:
            writer.writerow(
                [
                    "receipt",
                    r.store_id,
                    r.till_id,
                    r.currency,
                    r.checkout_id,
                    r.reference,
                    r.pos_id or "",
                    r.receipt_number or "",
                    r.state,
                    1,
                    r.authorized,
                    r.captured,
                    r.refunded,
                    r.cancelled,
                    r.captured - r.refunded,
                    ";".join(r.flags),
                    "",
                ]
            )
        for kind, rows in (("till", self.tills), ("store", self.stores)):
            for t in rows:
                writer.writerow(
                    [
                        kind,
                        t.store_id,
                        t.till_id or "",
                        t.currency,
                        "",
                        "",
                        "",
                        "",
                        "",
                        t.checkouts,
                        t.authorized,
                        t.captured,
                        t.refunded,
                        t.cancelled,
                        t.net,
                        t.flagged,
                        "",
                    ]
                )
        for m in self.mismatches:
            writer.writerow(
                [
                    "mismatch",
                    m.store_id or "",
                    m.till_id or "",
                    "",
                    m.checkout_id or "",
                    m.reference or "",
                    "",
                    m.receipt_number or "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    m.code,
                    m.detail,
                ]
            )
        return out.getvalue()


CSV_COLUMNS = (
    "record",
    "storeId",
    "tillId",
    "currency",
    "checkoutId",
    "reference",
    "posId",
    "receiptNumber",
    "state",
    "count",
    "authorized",
    "captured",
    "refunded",
    "cancelled",
    "net",
    "flags",
    "detail",
)


def _camel(values: dict[str, Any]) -> dict[str, Any]:
    def camel(name: str) -> str:
        head, *rest = name.split("_")
        return head + "".join(part.title() for part in rest)

    return {camel(k): v for k, v in values.items()}


def day_window(day: date, timezone: str) -> tuple[datetime, datetime]:
    """``[start, end)`` of the local calendar day in UTC (23 or 25 hours on DST days)."""
    zone = ZoneInfo(timezone)
    start = datetime.combine(day, time.min, tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def _receipt_fields(checkout: Checkout) -> tuple[str | None, str | None]:
    bottom = checkout.receipt.get("bottomLine") if isinstance(checkout.receipt, dict) else None
    if not isinstance(bottom, dict):
        return None, None
    pos_id, number = bottom.get("posId"), bottom.get("receiptNumber")
    return (str(pos_id) if pos_id else None, str(number) if number else None)


async def verify_audit_trail(ctx: ServiceContext) -> AuditVerification:
    """Every hash chain of the audit trail, checked end to end (read-only)."""
    async with ctx.sessions() as session:
        return await verify_log(session)


async def checkout_audit_trail(ctx: ServiceContext, checkout_id: str) -> list[AuditEntry]:
    """Everything that happened to one checkout, from the audit trail, oldest first."""
    async with ctx.sessions() as session:
        return list(await repo.audit_for_checkout(session, checkout_id))


class EndOfDayReports:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def end_of_day(
        self, day: date, *, store_id: str | None = None, timezone: str = DEFAULT_TIMEZONE
    ) -> EndOfDayReport:
        since, until = day_window(day, timezone)
        async with self.ctx.sessions() as session:
            checkouts = list(
                await repo.checkouts_created_between(session, since, until, store_id=store_id)
            )
            ids = [c.id for c in checkouts]
            refunds = await repo.done_commands_by_checkout(session, ids, CommandKind.REFUND.value)
            msns = None
            if store_id:
                msns = sorted({t.msn for t in await repo.list_tills(session, store_id=store_id)})
            unknown = await repo.unmatched_payment_events(session, since, until, msns=msns)
        lines = [self._line(c, refunds.get(c.id, 0)) for c in checkouts]
        mismatches = self._flag(lines)
        for event in unknown:
            mismatches.append(
                Mismatch(
                    "unknown_vipps_payment",
                    f"{event.event_type} for a reference we have no checkout of"
                    f" (MSN {event.msn}, inbox {event.id})",
                    reference=event.reference,
                )
            )
        tills: dict[tuple[str, str, str], Totals] = {}
        stores: dict[tuple[str, str], Totals] = {}
        for line in lines:
            key = (line.store_id, line.till_id, line.currency)
            tills.setdefault(key, Totals(line.store_id, line.till_id, line.currency)).add(line)
            store_key = (line.store_id, line.currency)
            stores.setdefault(store_key, Totals(line.store_id, None, line.currency)).add(line)
        return EndOfDayReport(
            day,
            timezone,
            since,
            until,
            store_id,
            lines,
            [tills[k] for k in sorted(tills)],
            [stores[k] for k in sorted(stores)],
            mismatches,
        )

    @staticmethod
    def _line(checkout: Checkout, refund_count: int) -> ReceiptLine:
        pos_id, number = _receipt_fields(checkout)
        return ReceiptLine(
            store_id=checkout.store_id,
            till_id=checkout.till_id,
            checkout_id=checkout.id,
            reference=checkout.reference,
            created_at=checkout.created_at.isoformat(),
            state=checkout.state,
            currency=checkout.currency,
            pos_id=pos_id,
            receipt_number=number,
            amount=checkout.amount_value,
            authorized=checkout.authorized_value,
            captured=checkout.captured_value,
            refunded=checkout.refunded_value,
            cancelled=checkout.cancelled_value,
            refund_count=refund_count,
        )

    @staticmethod
    def _flag(lines: list[ReceiptLine]) -> list[Mismatch]:
        mismatches: list[Mismatch] = []

        def flag(line: ReceiptLine, code: str, detail: str) -> None:
            line.flags.append(code)
            mismatches.append(
                Mismatch(
                    code,
                    detail,
                    line.store_id,
                    line.till_id,
                    line.checkout_id,
                    line.reference,
                    line.receipt_number,
                )
            )

        captured_receipts = Counter(
            (line.pos_id or line.till_id, line.receipt_number)
            for line in lines
            if line.captured > 0 and line.receipt_number
        )
        refunds_per_receipt: dict[tuple[str, str], int] = defaultdict(int)
        for line in lines:
            if line.receipt_number:
                key = (line.pos_id or line.till_id, line.receipt_number)
                refunds_per_receipt[key] += line.refund_count
        for line in lines:
            receipt_key = (line.pos_id or line.till_id, line.receipt_number or "")
            if line.captured > 0 and not line.receipt_number:
                flag(line, "captured_without_receipt", f"{line.captured} captured, no receipt")
            if line.pos_id is not None and line.pos_id != line.till_id:
                detail = f"receipt posId {line.pos_id} rung up on {line.till_id}"
                flag(line, "pos_id_mismatch", detail)
            if line.receipt_number and captured_receipts[receipt_key] > 1 and line.captured > 0:
                flag(
                    line,
                    "duplicate_receipt",
                    f"receipt {line.receipt_number} captured on"
                    f" {captured_receipts[receipt_key]} checkouts",
                )
            if line.open_reservation > 0 and line.captured == 0:
                flag(
                    line,
                    "authorized_not_captured",
                    f"{line.open_reservation} reserved, never captured or released",
                )
            several = line.refund_count > 1 or (
                line.receipt_number is not None and refunds_per_receipt[receipt_key] > 1
            )
            if several:
                count = max(line.refund_count, refunds_per_receipt.get(receipt_key, 0))
                flag(line, "refunded_more_than_once", f"{count} refunds on one receipt")
            if line.refunded > line.captured:
                flag(
                    line,
                    "refund_exceeds_capture",
                    f"{line.refunded} refunded of {line.captured} captured",
                )
        return mismatches
