"""Tills and their QR codes (admin API), the till API key, and who may call what."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import segno
from PIL import Image

from app.crypto import hash_api_key
from app.simulator.engine import Simulator
from tests.api.support import MSN, assert_problem, checked_stack, drain, fetch, wait_inbox
from tests.support.stack import Stack


def qr_content_at_vipps(stack: Stack, merchant_qr_id: str) -> str:
    qr = stack.simulator.state.qrs[(MSN, merchant_qr_id)]
    return Simulator.qr_content(qr.content_id)


def png_modules(png: bytes, scale: int, border: int = 4) -> list[list[bool]]:
    """The dark/light module matrix drawn in a PNG rendered at ``scale`` with ``border``."""
    image = Image.open(io.BytesIO(png)).convert("L")
    size = image.width // scale - 2 * border

    def dark(x: int, y: int) -> bool:
        pixel = image.getpixel(
            ((border + x) * scale + scale // 2, (border + y) * scale + scale // 2)
        )
        assert isinstance(pixel, (int, float))  # one channel: "L"
        return pixel < 128

    return [[dark(x, y) for x in range(size)] for y in range(size)]


async def test_registering_a_till_creates_its_qr_at_vipps_and_shows_the_key_once(
    database_url: str,
) -> None:
    async with checked_stack(database_url) as stack:
        till = await stack.register_till("till-7", store_id="store-9")
        assert till["status"] == "ACTIVE"
        assert till["qrStatus"] == "SYNCED"
        assert till["msn"] == MSN
        qr = stack.simulator.state.qrs[(MSN, till["merchantQrId"])]
        assert qr.location_description == "Kasse till-7"

        key = till["apiKey"]
        assert key.startswith(f"vpk_{till['apiKeyId']}_")
        rows = await fetch(
            stack, "SELECT api_key_hash FROM tills WHERE id = :id", id=till["tillId"]
        )
        assert rows == [{"api_key_hash": hash_api_key(key)}]
        assert key not in str(rows)

        shown_again = await stack.service.get("/api/v1/tills/till-7", headers=stack.admin)
        assert shown_again.status_code == 200
        assert "apiKey" not in shown_again.json()
        listed = await stack.service.get("/api/v1/tills", headers=stack.admin)
        assert [t["tillId"] for t in listed.json()] == ["till-7"]
        assert all("apiKey" not in t for t in listed.json())

        again = await stack.service.post(
            "/api/v1/tills",
            json={"tillId": "till-7", "storeId": "store-9", "locationDescription": "x"},
            headers=stack.admin,
        )
        assert_problem(again, 409, "till_exists")


async def test_qr_image_is_printable_svg_and_png_of_vippss_qr_content(sqlite_url: str) -> None:
    async with checked_stack(sqlite_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        content = qr_content_at_vipps(stack, till["merchantQrId"])

        svg = await stack.service.get("/api/v1/tills/till-1/qr", headers=stack.till_headers(till))
        assert svg.status_code == 200
        assert svg.headers["content-type"].startswith("image/svg+xml")
        root = ET.fromstring(svg.content)  # noqa: S314 (our own output)
        assert root.tag.endswith("svg")

        png = await stack.service.get(
            "/api/v1/tills/till-1/qr", params={"format": "png", "scale": 5}, headers=stack.admin
        )
        assert png.status_code == 200
        assert png.headers["content-type"] == "image/png"
        assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
        # The picture is exactly the QR of Vipps's content for this till...
        expected = [[bool(m) for m in row] for row in segno.make(content, error="m").matrix]
        assert png_modules(png.content, scale=5) == expected
        # ... and a phone scanning that content checks in at this till.
        scanned = await stack.sim.post("/_sim/scan", json={"qrContent": content})
        assert scanned.status_code == 200
        assert scanned.json()["merchantQrId"] == till["merchantQrId"]
        await drain(stack)
        rows = await wait_inbox(stack, lambda rows: rows and rows[0]["outcome"] == "waiting")
        assert rows[0]["eventType"] == "user.checked-in.v1"


async def test_update_changes_the_location_at_vipps_and_deactivate_deletes_the_qr(
    database_url: str,
) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        updated = await stack.service.patch(
            "/api/v1/tills/till-1", json={"locationDescription": "Kasse 9"}, headers=stack.admin
        )
        assert updated.status_code == 200, updated.text
        assert updated.json()["locationDescription"] == "Kasse 9"
        assert updated.json()["qrStatus"] == "SYNCED"
        key = (MSN, till["merchantQrId"])
        assert stack.simulator.state.qrs[key].location_description == "Kasse 9"

        too_long = await stack.service.patch(
            "/api/v1/tills/till-1", json={"locationDescription": "x" * 37}, headers=stack.admin
        )
        body = assert_problem(too_long, 422, "validation_error")
        assert [e["field"] for e in body["errors"]] == ["locationDescription"]

        deactivated = await stack.service.post(
            "/api/v1/tills/till-1/deactivate", headers=stack.admin
        )
        assert deactivated.status_code == 200
        assert deactivated.json()["status"] == "INACTIVE"
        assert key not in stack.simulator.state.qrs
        # The customer's app says "not found" instead of leaving them waiting.
        scan = await stack.sim.post(f"/_sim/qr/{till['merchantQrId']}/scan", json={})
        assert scan.status_code == 404

        inactive = await stack.service.get(
            "/api/v1/tills", params={"status": "INACTIVE"}, headers=stack.admin
        )
        assert [t["tillId"] for t in inactive.json()] == ["till-1"]
        created = await stack.service.post(
            "/api/v1/tills/till-1/checkouts",
            json={"amount": 1000, "currency": "NOK"},
            headers=stack.till_headers(till),
        )
        assert_problem(created, 409, "till_inactive")


async def test_who_may_call_what(sqlite_url: str) -> None:
    async with checked_stack(sqlite_url) as stack:
        mine = await stack.register_till("till-1")
        other = await stack.register_till("till-2")
        checkout = await stack.checkout(mine, 2000)
        path = "/api/v1/tills/till-1/checkouts/active"

        assert_problem(await stack.service.get(path), 401, "unauthorized")
        bogus = {"Authorization": "Bearer vpk_0000000000000000_nope"}
        assert_problem(await stack.service.get(path, headers=bogus), 401, "unauthorized")
        forged = {"Authorization": f"Bearer {mine['apiKey']}x"}
        assert_problem(await stack.service.get(path, headers=forged), 401, "unauthorized")
        theirs = stack.till_headers(other)
        assert_problem(await stack.service.get(path, headers=theirs), 403, "forbidden")
        # Another till's checkout does not exist as far as that till can tell.
        assert_problem(
            await stack.service.get(f"/api/v1/checkouts/{checkout['id']}", headers=theirs),
            404,
            "checkout_not_found",
        )
        assert_problem(
            await stack.service.post(f"/api/v1/checkouts/{checkout['id']}/cancel", headers=theirs),
            404,
            "checkout_not_found",
        )
        # A till key is not an operator credential.
        assert_problem(
            await stack.service.get("/api/v1/tills", headers=stack.till_headers(mine)),
            403,
            "forbidden",
        )

        own = await stack.service.get(path, headers=stack.till_headers(mine))
        assert own.status_code == 200
        assert own.json()["checkout"]["id"] == checkout["id"]
        admin = await stack.service.get(path, headers=stack.admin)
        assert admin.status_code == 200
        assert admin.json()["checkout"]["id"] == checkout["id"]
        by_admin = await stack.service.get(
            f"/api/v1/checkouts/{checkout['id']}", headers=stack.admin
        )
        assert by_admin.status_code == 200

        rotated = await stack.service.post("/api/v1/tills/till-1/api-key", headers=stack.admin)
        assert rotated.status_code == 200
        old = stack.till_headers(mine)
        assert_problem(await stack.service.get(path, headers=old), 401, "unauthorized")
        new = {"Authorization": f"Bearer {rotated.json()['apiKey']}"}
        assert (await stack.service.get(path, headers=new)).status_code == 200
