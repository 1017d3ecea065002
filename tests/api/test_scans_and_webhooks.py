"""Scan intake: both orders, a busy till, an expired token, an inactive till, an unknown QR;
webhook signatures and duplicates."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from app.vipps.signature import format_ms_date, sign_webhook
from tests.api.support import (
    MSN,
    WEBHOOK_HOST,
    checked_stack,
    count_rows,
    drain,
    effective_calls,
    fetch,
    iso,
    ledger,
    payment_sent,
    post_signed_body,
    post_signed_webhook,
    registration_secret,
    row_counts,
    wait_inbox,
)


def check_in(merchant_qr_id: str, *, initiated: datetime | None = None) -> dict[str, str]:
    return {
        "customerToken": f"tok-{uuid.uuid4()}",
        "merchantQrId": merchant_qr_id,
        "msn": MSN,
        "initiatedAt": iso(initiated or datetime.now(UTC)),
    }


async def test_scan_first_then_basket_requests_payment_at_once(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        await stack.scan(till)
        await drain(stack)
        await wait_inbox(stack, lambda rows: rows and rows[0]["outcome"] == "waiting")
        assert await ledger(stack, operation="createPayment") == []

        checkout = await stack.checkout(till, 7500)
        # The waiting check-in became this checkout's customer in the same transaction.
        assert checkout["state"] == "PAYMENT_REQUESTED"
        assert checkout["scannedAt"] is not None
        sent = await stack.wait_for(till, checkout["id"], lambda c: c["paymentSent"])
        await stack.approve(sent["reference"])
        done = await stack.wait_state(till, checkout["id"], "CAPTURED")
        assert done["capturedAmount"] == 7500
        assert await effective_calls(stack, sent["reference"]) == {
            "createPayment": 1,
            "userApprove": 1,
            "capturePayment": 1,
        }
        # The check-in was used once: the next checkout waits for its own scan.
        following = await stack.checkout(till, 1000)
        assert following["state"] == "AWAITING_SCAN"


async def test_a_second_scan_at_a_busy_till_is_ignored_and_never_pushed_later(
    database_url: str,
) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        first = await stack.checkout(till, 2000)
        await stack.scan(till, phone="4712345678")
        sent = await stack.wait_for(till, first["id"], lambda c: c["paymentSent"])
        await stack.scan(till, phone="4798765432")
        await drain(stack)
        rows = await wait_inbox(
            stack, lambda rows: len(rows) == 2 and all(r["processedAt"] for r in rows)
        )
        outcomes = sorted(r["outcome"] for r in rows if r["eventType"] == "user.checked-in.v1")
        assert outcomes == ["attached", "ignored_busy"]
        checkins = await fetch(stack, "SELECT status FROM checkins ORDER BY created_at")
        assert [c["status"] for c in checkins] == ["USED", "IGNORED_BUSY"]

        await stack.approve(sent["reference"])
        await stack.wait_state(till, first["id"], "CAPTURED")
        # The next sale must not be pushed to the second scanner: it waits for a scan.
        following = await stack.checkout(till, 3000)
        assert following["state"] == "AWAITING_SCAN"
        assert len(await ledger(stack, operation="createPayment")) == 1
        payments = (await stack.sim.get("/_sim/payments")).json()
        assert [p["phoneNumber"] for p in payments] == ["4712345678"]


async def test_a_check_in_with_an_expired_token_is_recorded_and_not_used(
    database_url: str,
) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        checkout = await stack.checkout(till, 2000)
        stale = check_in(till["merchantQrId"], initiated=datetime.now(UTC) - timedelta(minutes=15))
        response = await post_signed_webhook(stack, stale)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted"}
        rows = await wait_inbox(stack, lambda rows: rows and rows[0]["outcome"])
        assert rows[0]["outcome"] == "expired"
        assert rows[0]["status"] == "PROCESSED"
        current = await stack.get(till, checkout["id"])
        assert current["state"] == "AWAITING_SCAN"
        assert current["version"] == checkout["version"]
        checkins = await fetch(stack, "SELECT status FROM checkins")
        assert checkins == [{"status": "EXPIRED"}]
        # Almost expired (inside the safety margin before the payment request) counts as expired.
        late = check_in(till["merchantQrId"], initiated=datetime.now(UTC) - timedelta(minutes=14.5))
        assert (await post_signed_webhook(stack, late)).status_code == 200
        await wait_inbox(stack, lambda rows: len(rows) == 2 and all(r["outcome"] for r in rows))
        assert (await stack.get(till, checkout["id"]))["state"] == "AWAITING_SCAN"
        assert await ledger(stack, operation="createPayment") == []


async def test_a_scan_of_an_inactive_till_is_recorded_and_ignored(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        deactivated = await stack.service.post(
            "/api/v1/tills/till-1/deactivate", headers=stack.admin
        )
        assert deactivated.status_code == 200
        # Vipps no longer knows the QR: the customer is told so (tested in test_tills). A
        # check-in already on its way when the till was deactivated arrives anyway:
        response = await post_signed_webhook(stack, check_in(till["merchantQrId"]))
        assert response.status_code == 200
        rows = await wait_inbox(stack, lambda rows: rows and rows[0]["outcome"])
        assert rows[0]["outcome"] == "ignored_inactive_till"
        assert await count_rows(stack, "checkouts") == 0
        assert await ledger(stack, operation="createPayment") == []


async def test_a_check_in_for_an_unknown_qr_is_kept_for_operators(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        await stack.register_till()
        response = await post_signed_webhook(stack, check_in("not-one-of-ours"))
        assert response.status_code == 200
        assert response.json() == {"status": "accepted"}
        rows = await wait_inbox(stack, lambda rows: len(rows) == 1, status="UNMATCHED", timeout=5.0)
        assert rows[0]["eventType"] == "user.checked-in.v1"
        assert rows[0]["outcome"] == "unmatched"
        # The stored body of a check-in is encrypted (it holds a customer token).
        stored = await fetch(stack, "SELECT body, body_encrypted FROM webhook_inbox")
        assert stored[0]["body_encrypted"]
        assert "not-one-of-ours" not in stored[0]["body"]
        processed = await stack.service.get(
            "/api/v1/inbox", params={"status": "PROCESSED"}, headers=stack.admin
        )
        assert processed.json() == []


async def test_a_bad_signature_is_refused_and_nothing_is_written(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        await stack.checkout(till, 2000)
        before = await row_counts(stack)
        payload = check_in(till["merchantQrId"])
        wrong = await post_signed_webhook(stack, payload, secret="not-the-secret")
        assert wrong.status_code == 401
        assert wrong.json()["code"] == "invalid_signature"
        unsigned = await stack.service.post(f"/webhooks/vipps/{MSN}", json=payload)
        assert unsigned.status_code == 401
        # Signed with the right secret for another MSN's URL: the path is part of what is signed.
        secret = await registration_secret(stack)
        other_msn = await post_signed_webhook(stack, payload, msn="654321", secret=secret)
        assert other_msn.status_code == 401
        # The right secret, a body changed after signing.
        headers = sign_webhook(
            secret,
            path_and_query=f"/webhooks/vipps/{MSN}",
            host=WEBHOOK_HOST,
            body=orjson.dumps(payload),
            ms_date=format_ms_date(datetime.now(UTC)),
        )
        changed = orjson.dumps({**payload, "merchantQrId": "another-till"})
        tampered = await stack.service.post(
            f"/webhooks/vipps/{MSN}", content=changed, headers=headers
        )
        assert tampered.status_code == 401
        # The right secret and body, signed ten minutes ago (a replay).
        old = sign_webhook(
            secret,
            path_and_query=f"/webhooks/vipps/{MSN}",
            host=WEBHOOK_HOST,
            body=orjson.dumps(payload),
            ms_date=format_ms_date(datetime.now(UTC) - timedelta(minutes=10)),
        )
        replayed = await stack.service.post(
            f"/webhooks/vipps/{MSN}", content=orjson.dumps(payload), headers=old
        )
        assert replayed.status_code == 401
        assert await row_counts(stack) == before


async def test_a_duplicate_webhook_is_acknowledged_and_not_processed_again(
    database_url: str,
) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        checkout = await stack.checkout(till, 2000)
        await stack.scan(till)
        sent = await payment_sent(stack, till, checkout["id"])
        await stack.approve(sent["reference"])
        done = await stack.wait_state(till, checkout["id"], "CAPTURED")
        await drain(stack)
        await wait_inbox(stack, lambda rows: all(r["processedAt"] for r in rows))
        before = await row_counts(stack)
        deliveries = (await stack.sim.get("/_sim/deliveries")).json()
        events = sorted(d["event"] for d in deliveries)
        assert events == [
            "epayments.payment.authorized.v1",
            "epayments.payment.captured.v1",
            "user.checked-in.v1",
        ]
        for delivery in deliveries:
            again = await post_signed_webhook(stack, delivery["payload"])
            assert again.status_code == 200, again.text
            assert again.json() == {"status": "duplicate"}, delivery["event"]
        assert await row_counts(stack) == before
        after = await stack.get(till, checkout["id"])
        assert after["version"] == done["version"]
        assert await effective_calls(stack, sent["reference"]) == {
            "createPayment": 1,
            "userApprove": 1,
            "capturePayment": 1,
        }


# Signed (so verified) deliveries whose text a database cannot hold or whose fields are longer
# than their columns. Each gave a 500 and wrote nothing (issue 18, item 6).
_PAYMENT = '"msn":"123456","pspReference":"p-1","amount":{"currency":"NOK","value":100}'
HOSTILE_DELIVERIES = {
    "nul in reference": b'{"name":"AUTHORIZED","reference":"ref\\u0000x",'
    + _PAYMENT.encode()
    + b"}",
    "event name of 200 characters": b'{"name":"'
    + b"A" * 200
    + b'","reference":"ref-200",'
    + _PAYMENT.encode()
    + b"}",
    "reference of 100 characters": b'{"name":"AUTHORIZED","reference":"'
    + b"r" * 100
    + b'",'
    + _PAYMENT.encode()
    + b"}",
    "lone surrogate in reference": b'{"name":"AUTHORIZED","reference":"\\ud800",'
    + _PAYMENT.encode()
    + b"}",
    "nul in a check-in": b'{"customerToken":"tok","merchantQrId":"qr\\u0000","msn":"123456"}',
    "raw nul byte and bytes that are not utf-8": b'{"name":"AUTHORIZED","reference":"a\x00\xff"}',
    "nesting deeper than the parser goes": b"[" * 60_000,
}


@pytest.mark.parametrize("case", list(HOSTILE_DELIVERIES))
async def test_a_verified_delivery_the_database_cannot_hold_is_stored_failed_and_acknowledged(
    database_url: str, case: str
) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        body = HOSTILE_DELIVERIES[case]
        response = await post_signed_body(stack, body)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted"}
        rows = await fetch(
            stack, "SELECT event_type, reference, status, body, last_error FROM webhook_inbox"
        )
        assert len(rows) == 1
        row = rows[0]
        assert row["status"] == "FAILED"
        assert row["event_type"] == "unknown"
        assert row["reference"] is None
        assert row["last_error"]
        # The raw delivery is kept for inspection (what text can hold of it).
        assert row["body"] == body.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        listed = await stack.service.get(
            "/api/v1/inbox", params={"status": "FAILED"}, headers=stack.admin
        )
        assert [r["eventType"] for r in listed.json()] == ["unknown"]
        # The same delivery again is a duplicate, not a second row.
        again = await post_signed_body(stack, body)
        assert again.json() == {"status": "duplicate"}
        assert await count_rows(stack, "webhook_inbox") == 1
