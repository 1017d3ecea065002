"""End-of-day reconciliation: each known mismatch, seeded in Postgres, is flagged; the admin API
serves the report (JSON and CSV), drift and audit verification."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from app.models import Checkout, InboxEvent, OutboxCommand, Store, Till
from app.service.reports import EndOfDayReports
from tests.support.stack import in_process_stack

NOW = datetime.now(UTC)


def _till(till_id: str, store_id: str = "s1") -> Till:
    return Till(
        id=till_id,
        store_id=store_id,
        msn="123456",
        merchant_qr_id=str(uuid.uuid4()),
        location_description=till_id,
        api_key_id=uuid.uuid4().hex[:16],
        api_key_hash="0" * 64,
        status="ACTIVE",
        qr_status="SYNCED",
        created_at=NOW,
        updated_at=NOW,
        version=0,
    )


def _checkout(
    name: str,
    till_id: str,
    *,
    receipt_number: str | None,
    pos_id: str | None = None,
    state: str = "CAPTURED",
    authorized: int = 10000,
    captured: int = 10000,
    refunded: int = 0,
    cancelled: int = 0,
) -> Checkout:
    bottom: dict[str, Any] = {"currency": "NOK", "posId": pos_id or till_id}
    if receipt_number:
        bottom["receiptNumber"] = receipt_number
    return Checkout(
        id=str(uuid.uuid4()),
        till_id=till_id,
        store_id="s1",
        msn="123456",
        state=state,
        amount_value=10000,
        original_amount_value=10000,
        currency="NOK",
        receipt={"orderLines": [], "bottomLine": bottom},
        warnings=[],
        description=name,
        capture_mode="AUTO",
        reference=f"{name}-{uuid.uuid4().hex[:8]}",
        created_at=NOW - timedelta(minutes=5),
        updated_at=NOW,
        expires_at=NOW,
        authorized_value=authorized,
        captured_value=captured,
        refunded_value=refunded,
        cancelled_value=cancelled,
        capture_pending_value=0,
        refund_pending_value=0,
        poll_count=0,
        mutating_calls=[],
        version=1,
    )


def _refund(checkout: Checkout, n: int, amount: int) -> OutboxCommand:
    return OutboxCommand(
        checkout_id=checkout.id,
        till_id=checkout.till_id,
        kind="REFUND",
        msn="123456",
        reference=checkout.reference,
        idempotency_key=f"{checkout.reference}-refund-{n}",
        payload={"amount": amount},
        status="DONE",
        attempts=1,
        next_attempt_at=NOW,
        created_at=NOW,
        updated_at=NOW,
        completed_at=NOW,
    )


async def test_each_known_mismatch_is_flagged_and_served_as_json_and_csv(pg_url: str) -> None:
    seeded = {
        "clean": _checkout("clean", "t1", receipt_number="R1"),
        "no_receipt": _checkout("noreceipt", "t1", receipt_number=None),
        "pos_id": _checkout("posid", "t1", receipt_number="R2", pos_id="t2"),
        "dup_a": _checkout("dupa", "t2", receipt_number="R9"),
        "dup_b": _checkout("dupb", "t2", receipt_number="R9"),
        "never_captured": _checkout(
            "authonly", "t2", receipt_number="R3", state="AUTHORIZED", captured=0
        ),
        "refunded_twice": _checkout(
            "twice", "t1", receipt_number="R4", state="PARTIALLY_REFUNDED", refunded=3000
        ),
        "over_refunded": _checkout(
            "over", "t1", receipt_number="R5", state="REFUNDED", captured=5000, refunded=6000
        ),
        "cancelled": _checkout(
            "cancel", "t1", receipt_number="R6", state="CANCELLED", captured=0, cancelled=10000
        ),
    }
    async with in_process_stack(pg_url) as stack:
        ctx = stack.app.state.services.ctx
        async with ctx.sessions() as session, session.begin():
            session.add(Store(id="s1", name="Store 1", created_at=NOW, updated_at=NOW))
            session.add_all([_till("t1"), _till("t2")])
            await session.flush()
            session.add_all(seeded.values())
            await session.flush()
            session.add_all(
                [
                    _refund(seeded["refunded_twice"], 1, 1000),
                    _refund(seeded["refunded_twice"], 2, 2000),
                ]
            )
            session.add(
                InboxEvent(
                    dedup_key=uuid.uuid4().hex,
                    msn="123456",
                    event_type="epayments.payment.captured.v1",
                    reference="made-elsewhere-1",
                    body="{}",
                    body_encrypted=False,
                    received_at=NOW,
                    status="UNMATCHED",
                    attempts=1,
                    next_attempt_at=NOW,
                )
            )

        report = await EndOfDayReports(ctx).end_of_day(NOW.date(), timezone="UTC")
        flags = {line.checkout_id: set(line.flags) for line in report.receipts}
        expected = {
            "clean": set(),
            "no_receipt": {"captured_without_receipt"},
            "pos_id": {"pos_id_mismatch"},
            "dup_a": {"duplicate_receipt"},
            "dup_b": {"duplicate_receipt"},
            "never_captured": {"authorized_not_captured"},
            "refunded_twice": {"refunded_more_than_once"},
            "over_refunded": {"refund_exceeds_capture"},
            "cancelled": set(),
        }
        assert {name: flags[c.id] for name, c in seeded.items()} == expected
        unknown = [m for m in report.mismatches if m.code == "unknown_vipps_payment"]
        assert [m.reference for m in unknown] == ["made-elsewhere-1"]
        totals = {t.till_id: t for t in report.tills}
        assert totals["t1"].captured == 10000 * 4 + 5000
        assert totals["t1"].refunded == 9000
        assert totals["t1"].cancelled == 10000
        [store] = report.stores
        assert store.net == store.captured - store.refunded == 65000 - 9000
        # A day without sales is empty, not an error.
        quiet = await EndOfDayReports(ctx).end_of_day(
            NOW.date() - timedelta(days=3), timezone="UTC"
        )
        assert quiet.receipts == []
        assert quiet.mismatches == []

        params = {"date": NOW.date().isoformat(), "storeId": "s1", "tz": "UTC"}
        as_json = await stack.service.get(
            "/api/v1/reports/end-of-day", params=params, headers=stack.admin
        )
        assert as_json.status_code == 200, as_json.text
        codes = sorted(m["code"] for m in as_json.json()["mismatches"])
        assert codes.count("duplicate_receipt") == 2
        assert "unknown_vipps_payment" in codes
        as_csv = await stack.service.get(
            "/api/v1/reports/end-of-day",
            params={**params, "format": "csv"},
            headers=stack.admin,
        )
        assert as_csv.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        assert sum(r["record"] == "receipt" for r in rows) == len(seeded)
        over = next(r for r in rows if r["checkoutId"] == seeded["over_refunded"].id)
        assert over["flags"] == "refund_exceeds_capture"
        assert over["net"] == "-1000"
        till_key = {"Authorization": f"Bearer {uuid.uuid4().hex}"}
        denied = await stack.service.get(
            "/api/v1/reports/end-of-day", params=params, headers=till_key
        )
        assert denied.status_code == 401


async def test_admin_api_drift_and_audit_verify(pg_url: str) -> None:
    async with in_process_stack(pg_url) as stack:
        till = await stack.register_till("t1")
        drift = await stack.service.get("/api/v1/drift", headers=stack.admin)
        assert drift.json()["drift"] == []
        assert drift.json()["checkedTills"] == 1
        await stack.app.state.services.ctx.vipps.delete_callback_qr("123456", till["merchantQrId"])
        found = (await stack.service.get("/api/v1/drift?msn=123456", headers=stack.admin)).json()
        assert [(d["kind"], d["tillId"]) for d in found["drift"]] == [("missing", "t1")]
        repaired = await stack.service.post("/api/v1/drift/repair", json={}, headers=stack.admin)
        assert repaired.json()["clean"] is True
        assert (await stack.service.get("/api/v1/drift", headers=stack.admin)).json()["drift"] == []

        verified = (await stack.service.get("/api/v1/audit/verify", headers=stack.admin)).json()
        assert verified["intact"] is True
        assert verified["breaks"] == []
        # The till's chain: registered, then its QR re-created by the drift repair.
        assert (verified["entries"], verified["chains"]) == (2, 1)
