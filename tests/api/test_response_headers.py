"""Response headers and what the service shows about itself (issue 18, item 10).

API answers carry ``Cache-Control: no-store`` (the one-time ``apiKey`` above all) and
``X-Content-Type-Options: nosniff``; ``/docs``, ``/openapi.json`` and ``/metrics`` can be switched
off or put behind an admin key, and are in production by default.
"""

from __future__ import annotations

import httpx
import pytest

from app.settings import Settings
from tests.api.support import assert_problem, post_signed_webhook
from tests.support.stack import in_process_stack


def assert_not_stored(headers: httpx.Headers) -> None:
    assert headers.get("cache-control") == "no-store"
    assert headers.get("x-content-type-options") == "nosniff"


async def test_api_answers_are_never_cached_nor_sniffed(sqlite_url: str) -> None:
    async with in_process_stack(sqlite_url) as stack:
        await stack.ensure_webhook()
        registered = await stack.service.post(
            "/api/v1/tills",
            json={"tillId": "till-1", "storeId": "s-1", "locationDescription": "Kasse 1"},
            headers=stack.admin,
        )
        assert "apiKey" in registered.json()
        assert_not_stored(registered.headers)
        till = registered.json()
        rotated = await stack.service.post("/api/v1/tills/till-1/api-key", headers=stack.admin)
        assert_not_stored(rotated.headers)
        till = {**till, "apiKey": rotated.json()["apiKey"]}
        checkout = await stack.checkout(till, 1000)
        read = await stack.service.get(
            f"/api/v1/checkouts/{checkout['id']}", headers=stack.till_headers(till)
        )
        assert_not_stored(read.headers)
        refused = await stack.service.get("/api/v1/tills")
        assert_problem(refused, 401, "unauthorized")
        assert_not_stored(refused.headers)
        invalid = await stack.service.post(
            "/api/v1/tills/till-1/checkouts", json={}, headers=stack.till_headers(till)
        )
        assert invalid.status_code == 422
        assert_not_stored(invalid.headers)
        ack = await post_signed_webhook(
            stack, {"name": "CREATED", "reference": "r", "msn": "123456"}
        )
        assert_not_stored(ack.headers)
        # The QR image may be cached, but only by the till's own browser.
        qr = await stack.service.get("/api/v1/tills/till-1/qr", headers=stack.till_headers(till))
        assert qr.headers["cache-control"] == "private, max-age=300"
        assert qr.headers["x-content-type-options"] == "nosniff"


async def test_docs_and_metrics_can_be_switched_off(sqlite_url: str) -> None:
    async with in_process_stack(
        sqlite_url, security={"api_docs": "off", "metrics": "off"}
    ) as stack:
        for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
            for headers in ({}, stack.admin):
                response = await stack.service.get(path, headers=headers)
                assert response.status_code == 404, path
        assert (await stack.service.get("/healthz")).status_code == 200


async def test_docs_and_metrics_can_be_put_behind_an_admin_key(sqlite_url: str) -> None:
    async with in_process_stack(
        sqlite_url, security={"api_docs": "admin", "metrics": "admin"}
    ) as stack:
        till = await stack.register_till()
        for path in ("/openapi.json", "/metrics"):
            assert_problem(await stack.service.get(path), 401, "unauthorized")
            assert_problem(
                await stack.service.get(path, headers=stack.till_headers(till)), 403, "forbidden"
            )
            allowed = await stack.service.get(path, headers=stack.admin)
            assert allowed.status_code == 200, path
            assert_not_stored(allowed.headers)
        described = await stack.service.get("/openapi.json", headers=stack.admin)
        assert "/api/v1/tills/{till_id}/checkouts" in described.json()["paths"]
        # The browser pages cannot send a key: they are off.
        assert (await stack.service.get("/docs", headers=stack.admin)).status_code == 404


@pytest.mark.parametrize(
    ("environment", "docs", "metrics"),
    [
        ("development", "public", "public"),
        ("test", "public", "public"),
        ("production", "off", "admin"),
    ],
)
def test_production_hides_docs_and_puts_metrics_behind_a_key_by_default(
    environment: str, docs: str, metrics: str
) -> None:
    settings = Settings(environment=environment)  # type: ignore[arg-type]
    assert (settings.api_docs, settings.metrics_access) == (docs, metrics)
