"""The display token: who may issue it, what it opens, and every way it is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from app.api.deps import DISPLAY_COOKIE
from app.service.context import utcnow
from tests.support.stack import Stack, in_process_stack


@pytest.fixture
async def stack(sqlite_url: str) -> AsyncIterator[Stack]:
    async with in_process_stack(sqlite_url) as stack:
        yield stack


async def issue(stack: Stack, till: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = await stack.service.post(
        f"/api/v1/tills/{till['tillId']}/display-token",
        json=body or None,
        headers=stack.till_headers(till),
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def open_session(stack: Stack, till_id: str, token: str) -> Any:
    stack.service.cookies.clear()
    return await stack.service.post(
        f"/tills/{till_id}/display/session", headers={"Authorization": f"Bearer {token}"}
    )


async def test_a_till_issues_display_tokens_for_itself_and_operators_for_any_till(
    stack: Stack,
) -> None:
    one = await stack.register_till("till-1")
    two = await stack.register_till("till-2")
    issued = await issue(stack, one)
    assert issued["token"].startswith("vdt1.till-1.")
    assert issued["displayUrl"] == f"/tills/till-1/display#token={issued['token']}"
    assert issued["lifetimeSeconds"] == 900

    other = await stack.service.post(
        "/api/v1/tills/till-2/display-token", headers=stack.till_headers(one)
    )
    assert other.status_code == 403
    assert other.json()["code"] == "forbidden"
    by_admin = await stack.service.post("/api/v1/tills/till-2/display-token", headers=stack.admin)
    assert by_admin.status_code == 201
    assert by_admin.json()["token"].startswith("vdt1.till-2.")
    anonymous = await stack.service.post("/api/v1/tills/till-2/display-token")
    assert anonymous.status_code == 401
    too_short = await stack.service.post(
        "/api/v1/tills/till-2/display-token",
        json={"lifetimeSeconds": 30},
        headers=stack.till_headers(two),
    )
    assert too_short.status_code == 422


async def test_the_token_becomes_an_http_only_cookie_that_opens_qr_and_is_never_echoed(
    stack: Stack,
) -> None:
    till = await stack.register_till("till-1")
    issued = await issue(stack, till, lifetimeSeconds=600)
    session = await open_session(stack, "till-1", issued["token"])
    assert session.status_code == 200, session.text
    assert session.json()["locationDescription"] == "Kasse till-1"
    assert session.json()["lifetimeSeconds"] == 600
    assert issued["token"] not in session.text
    cookie = session.headers["set-cookie"]
    assert cookie.startswith(f"{DISPLAY_COOKIE}=vdt1.till-1.")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/tills/till-1/display" in cookie
    assert "Max-Age=600" in cookie
    assert session.headers["cache-control"] == "no-store"

    qr = await stack.service.get("/tills/till-1/display/qr.svg")  # the cookie from the jar
    assert qr.status_code == 200, qr.text
    assert qr.headers["content-type"] == "image/svg+xml"
    assert qr.content.startswith(b"<?xml") or b"<svg" in qr.content[:200]

    renewed = await stack.service.post("/tills/till-1/display/session")  # cookie only
    assert renewed.status_code == 200
    assert renewed.headers["set-cookie"].startswith(f"{DISPLAY_COOKIE}=vdt1.till-1.")

    stack.service.cookies.clear()
    assert (await stack.service.get("/tills/till-1/display/qr.svg")).status_code == 401


async def test_forged_foreign_expired_and_revoked_tokens_are_refused(stack: Stack) -> None:
    one = await stack.register_till("till-1")
    two = await stack.register_till("till-2")
    token = (await issue(stack, one))["token"]
    other_till_token = (await issue(stack, two))["token"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    longer = token.replace(".900.", ".86400.")

    refused = {
        "forged signature": forged,
        "lifetime edited": longer,
        "another till's token": other_till_token,
        "the till's API key": one["apiKey"],
        "the admin key": stack.admin["Authorization"].removeprefix("Bearer "),
    }
    for reason, candidate in refused.items():
        response = await open_session(stack, "till-1", candidate)
        assert response.status_code == 401, reason
        assert response.json()["code"] == "unauthorized", reason
    assert (await open_session(stack, "till-1", token)).status_code == 200

    services = stack.app.state.services
    services.ctx.clock = lambda: utcnow() + timedelta(seconds=901)
    try:
        assert (await open_session(stack, "till-1", token)).status_code == 401
    finally:
        services.ctx.clock = utcnow

    rotated = await stack.service.post("/api/v1/tills/till-1/api-key", headers=stack.admin)
    assert rotated.status_code == 200
    assert (await open_session(stack, "till-1", token)).status_code == 401
    fresh = (await issue(stack, rotated.json()))["token"]
    assert (await open_session(stack, "till-1", fresh)).status_code == 200

    deactivated = await stack.service.post("/api/v1/tills/till-1/deactivate", headers=stack.admin)
    assert deactivated.status_code == 200
    assert (await open_session(stack, "till-1", fresh)).status_code == 401


async def test_the_page_and_its_assets_are_served_with_a_strict_policy(stack: Stack) -> None:
    page = await stack.service.get("/tills/till-1/display")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/display/static/display.js"' in page.text

    script = await stack.service.get("/display/static/display.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "EventSource" in script.text
    style = await stack.service.get("/display/static/display.css")
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")
    assert (await stack.service.get("/display/static/display.html")).status_code == 404
    assert (await stack.service.get("/display/static/..%2Fdeps.py")).status_code == 404
