"""`webhooks`, `checkouts`, `report`, `audit verify` and `drift` against the live stack."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from app.db import create_engine
from app.service.webhooks import ALL_EVENTS
from app.settings import DatabaseSettings
from tests.cli.conftest import LiveStack

pytestmark = pytest.mark.e2e


def _sql(url: str, statement: str, **params: Any) -> None:
    async def run() -> None:
        engine = create_engine(DatabaseSettings(url=url))
        try:
            async with engine.begin() as conn:
                await conn.execute(text(statement), params)
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_webhooks_ensure_repairs_orphans_and_duplicates_and_lists_them(stack: LiveStack) -> None:
    [first] = stack.run_json("webhooks", "ensure")
    assert first["created"] is True
    [again] = stack.run_json("webhooks", "ensure")
    assert again["created"] is False
    assert again["registrationId"] == first["registrationId"]
    # A payment-events registration at our URL whose secret we never got: an orphan.
    url = f"{stack.service.url}/webhooks/vipps/123456"
    orphan = stack.vipps(
        "POST", "/webhooks/v1/webhooks", json={"url": url, "events": list(ALL_EVENTS[1:])}
    ).json()["id"]
    foreign = stack.vipps(
        "POST",
        "/webhooks/v1/webhooks",
        json={"url": "https://elsewhere.example/hook", "events": [ALL_EVENTS[1]]},
    ).json()["id"]
    listed = {r["id"]: r for r in stack.run_json("webhooks", "list")}
    assert listed[orphan]["status"] == "ORPHANED"
    assert not listed[orphan]["secretHeld"]
    assert listed[foreign]["status"] == "FOREIGN"
    assert listed[first["registrationId"]]["status"] == "ACTIVE"

    [report] = stack.run_json("webhooks", "ensure", "--msn", "123456")
    assert report["orphaned"] == [orphan]
    assert report["foreign"] == [foreign]
    at_vipps = stack.vipps("GET", "/webhooks/v1/webhooks").json()["webhooks"]
    assert {h["id"] for h in at_vipps} == {first["registrationId"], foreign}


def test_webhooks_rotate_rejects_and_loses_no_delivery_during_the_overlap(
    stack: LiveStack,
) -> None:
    stack.run_json("webhooks", "ensure")
    till = stack.run_json("tills", "add", "kasse-1", "--store", "s1", "--location", "Kasse 1")
    stack.sale(till, 1000)
    other = stack.run_json("tills", "add", "kasse-2", "--store", "s1", "--location", "Kasse 2")
    # 1. A check-in signed with the old secret and delivered late: after the rotation, and after
    #    deliveries with the new secret made the service re-read its secrets.
    held = stack.api.post(
        "/api/v1/tills/kasse-1/checkouts",
        json={"amount": 2000, "currency": "NOK"},
        headers=stack.till_headers(till),
    ).json()
    delay = {"kind": "webhook_delay", "event": "user.checked-in.v1", "delaySeconds": 5, "times": 1}
    assert stack.sim.post("/_sim/faults", json=delay).status_code in (200, 201)
    assert stack.sim.post(f"/_sim/qr/{till['merchantQrId']}/scan", json={}).status_code == 200
    first = stack.run_json("webhooks", "rotate", "--msn", "123456")
    assert len(first["retired"]) == 2  # the old registration and the bridge
    stack.sale(other, 1500)  # on the new secret, while the old-secret check-in is on its way
    assert stack.run_json("checkouts", "show", held["id"])["state"] == "AWAITING_SCAN"
    scanned = stack.wait_checkout(till, held["id"], lambda c: c["paymentSent"])
    stack.sim.post(f"/_sim/payments/{scanned['reference']}/approve", json={})
    stack.wait_checkout(till, held["id"], lambda c: c["state"] == "CAPTURED")

    # 2. Sales running on another till while a second rotation happens.
    stop = threading.Event()
    sales: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def keep_selling() -> None:
        try:
            while not stop.is_set():
                sales.append(stack.sale(other, 3000))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    seller = threading.Thread(target=keep_selling)
    seller.start()
    try:
        while not sales and not errors:
            stop.wait(0.05)
        rotated = stack.run_json("webhooks", "rotate", "--msn", "123456")
        count = len(sales)
        while len(sales) < count + 2 and not errors:  # whole sales on the new secret
            stop.wait(0.05)
    finally:
        stop.set()
        seller.join(timeout=60)
    assert not errors, errors

    assert stack.sim.post("/_sim/deliveries/drain").status_code == 200
    deliveries = stack.sim.get("/_sim/deliveries").json()
    assert deliveries
    rejected = [d for d in deliveries if any(a["statusCode"] != 200 for a in d["attempts"])]
    assert rejected == []
    assert all(d["status"] == "delivered" for d in deliveries)
    at_vipps = stack.vipps("GET", "/webhooks/v1/webhooks").json()["webhooks"]
    assert [h["id"] for h in at_vipps] == [rotated["registrationId"]]
    assert set(at_vipps[0]["events"]) == set(ALL_EVENTS)
    statuses = {r["id"]: r["status"] for r in stack.run_json("webhooks", "list")}
    assert statuses[rotated["registrationId"]] == "ACTIVE"
    assert sorted(statuses.values()) == ["ACTIVE", *["RETIRING"] * 4]


def test_checkouts_list_show_resync_and_report(stack: LiveStack) -> None:
    stack.run_json("webhooks", "ensure")
    till = stack.run_json("tills", "add", "kasse-1", "--store", "s1", "--location", "Kasse 1")
    receipt = {
        "orderLines": [
            {
                "name": "socks",
                "id": "l1",
                "totalAmount": 5000,
                "totalAmountExcludingTax": 4000,
                "totalTaxAmount": 1000,
                "taxRate": 2500,
            }
        ],
        "bottomLine": {"currency": "NOK", "receiptNumber": "R-1"},
    }
    paid = stack.sale(till, 5000, receipt=receipt)
    refund = stack.api.post(
        f"/api/v1/checkouts/{paid['id']}/refund",
        json={"amount": 1000},
        headers=stack.till_headers(till),
    )
    assert refund.status_code == 200, refund.text
    stuck = stack.api.post(
        "/api/v1/tills/kasse-1/checkouts",
        json={"amount": 700, "currency": "NOK"},
        headers=stack.till_headers(till),
    ).json()

    waiting = stack.run_json(
        "checkouts", "list", "--till", "kasse-1", "--state", "AWAITING_SCAN", "--older-than", "0s"
    )
    assert [c["id"] for c in waiting] == [stuck["id"]]
    assert stack.run_json("checkouts", "list", "--older-than", "5m") == []

    shown = stack.run_json("checkouts", "show", paid["id"])
    actions = [(e["actor"], e["action"]) for e in shown["audit"]]
    key_actor = f"till:{till['apiKeyId']}"
    assert (key_actor, "checkout.create") in actions
    assert any(actor.startswith("vipps:") for actor, _ in actions)
    refund_entry = next(e for e in shown["audit"] if e["action"] == "refund_requested")
    assert refund_entry["actor"] == key_actor
    assert refund_entry["amount"] == 1000
    assert refund_entry["detail"]["endpoint"] == f"POST /api/v1/checkouts/{paid['id']}/refund"

    resynced = stack.run_json("checkouts", "resync", paid["id"])
    assert resynced["refundedAmount"] == 1000

    eod = stack.run_json(
        "report", "--date", datetime.now(UTC).date().isoformat(), "--store", "s1", "--tz", "UTC"
    )
    line = next(r for r in eod["receipts"] if r["checkoutId"] == paid["id"])
    assert line["receiptNumber"] == "R-1"
    assert line["posId"] == "kasse-1"
    assert (line["captured"], line["refunded"], line["flags"]) == (5000, 1000, [])
    [till_total] = eod["tills"]
    assert till_total["net"] == 4000
    csv_text = stack.run(
        "report", "--date", datetime.now(UTC).date().isoformat(), "--format", "csv", "--tz", "UTC"
    ).stdout
    assert csv_text.splitlines()[0].startswith("record,storeId,tillId")
    assert f"receipt,s1,kasse-1,NOK,{paid['id']}" in csv_text


def test_audit_verify_reports_an_edited_row(stack: LiveStack) -> None:
    stack.run_json("webhooks", "ensure")
    till = stack.run_json("tills", "add", "kasse-1", "--store", "s1", "--location", "Kasse 1")
    paid = stack.sale(till, 5000)
    intact = stack.run_json("audit", "verify")
    assert intact["intact"] is True
    assert intact["entries"] > 3
    assert intact["chains"] == 2
    assert "intact" in stack.run("audit", "verify").stdout

    _sql(
        stack.env["VIPPS_POS_DATABASE__URL"],
        "UPDATE audit_log SET amount_value = 1"
        " WHERE checkout_id = :id AND action = 'checkout.create'",
        id=paid["id"],
    )
    broken = stack.run_json("audit", "verify", expect=1)
    assert broken["intact"] is False
    assert broken["breaks"][0]["chain"] == "kasse-1"
    assert broken["breaks"][0]["problem"] == "entry altered"
    assert "AUDIT TRAIL BROKEN" in stack.run("audit", "verify", expect=1).stdout


def test_drift_finds_and_repairs_missing_changed_and_extra_qrs(stack: LiveStack) -> None:
    one = stack.run_json("tills", "add", "kasse-1", "--store", "s1", "--location", "Kasse 1")
    two = stack.run_json("tills", "add", "kasse-2", "--store", "s1", "--location", "Kasse 2")
    assert stack.run_json("drift")["drift"] == []
    qr = "/qr/v1/merchant-callback/"
    assert stack.vipps("DELETE", qr + one["merchantQrId"]).status_code in (200, 204)
    stack.vipps("PUT", qr + two["merchantQrId"], json={"locationDescription": "Changed"})
    stack.vipps("PUT", qr + "someone-elses-qr", json={"locationDescription": "Not ours"})

    found = stack.run_json("drift", expect=1)
    kinds = {(d["kind"], d["tillId"] or d["merchantQrId"]) for d in found["drift"]}
    assert kinds == {
        ("missing", "kasse-1"),
        ("description", "kasse-2"),
        ("extra", "someone-elses-qr"),
    }
    repaired = stack.run_json("drift", "--repair", expect=1)  # the extra QR is left alone
    assert {d["kind"] for d in repaired["drift"] if d["repaired"]} == {"missing", "description"}
    assert stack.vipps("GET", qr + two["merchantQrId"]).json()["locationDescription"] == "Kasse 2"
    stack.run_json("drift", "--repair", "--include-extra")
    assert stack.run_json("drift")["drift"] == []
    assert stack.vipps("GET", qr + "someone-elses-qr").status_code == 404
