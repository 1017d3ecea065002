"""QR API: merchant callback QR and customer-token exchange, at the wire."""

from __future__ import annotations

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.vipps.client import VippsClient
from app.vipps.errors import VippsNotFound, VippsRejected

from .bodies import CUSTOMER_TOKEN
from .conftest import MSN, Recorder, assert_conforms, assert_platform_headers, canned

QR_ID = "27072f82-c4b6-49cd-9838-10f21d87496e"
QR_PATH = f"/qr/v1/merchant-callback/{QR_ID}"


def qr(qr_id: str = QR_ID, location: str = "Kasse 1") -> dict[str, str]:
    return {
        "merchantSerialNumber": MSN,
        "merchantQrId": qr_id,
        "locationDescription": location,
        "qrImageUrl": "https://qr.vipps.no/generate/qr.png?c=abc",
        "qrContent": "https://qr.vipps.no/28/2/01/031/abc",
    }


def category_rejected() -> httpx.Response:
    return canned(
        "PUT",
        QR_PATH,
        400,
        {
            "type": "https://datatracker.ietf.org/doc/html/rfc7231#section-6.5.1",
            "title": "One or more validation errors occurred.",
            "detail": "BadRequest",
            "instance": "00-616e415f5af7584eb4d9369d0fe8d7cc-48b90041faff204c-00",
            "invalidParams": [{"name": "Category", "reason": "Unknown value 'IN_STORE'."}],
        },
    )


async def test_put_callback_qr_sends_location_and_category(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    route = router.put(QR_PATH).mock(return_value=canned("PUT", QR_PATH, 200))
    await client.put_callback_qr(MSN, QR_ID, "Kasse 1", category="IN_STORE")
    request = route.calls.last.request
    assert_platform_headers(request)
    # The repo's QR spec predates `category` (REFERENCE.md §3.1: added May 2024, values from
    # secondary guidance). Its PUT schema does not forbid extra properties, so the body still
    # validates; DESIGN.md §7 says send IN_STORE and tolerate its rejection.
    assert assert_conforms(request) == {"locationDescription": "Kasse 1", "category": "IN_STORE"}


async def test_put_callback_qr_without_category(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    route = router.put(QR_PATH).mock(return_value=canned("PUT", QR_PATH, 200))
    await client.put_callback_qr(MSN, QR_ID, "Kasse 1")
    assert assert_conforms(route.calls.last.request) == {"locationDescription": "Kasse 1"}


async def test_category_is_dropped_once_vipps_rejects_it_and_stays_dropped(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient, recorder: Recorder
) -> None:
    ok = canned("PUT", QR_PATH, 200)
    route = router.put(QR_PATH).mock(side_effect=[category_rejected(), ok, ok])
    await client.put_callback_qr(MSN, QR_ID, "Kasse 1", category="IN_STORE")
    bodies = [assert_conforms(call.request) for call in route.calls]
    assert bodies == [
        {"locationDescription": "Kasse 1", "category": "IN_STORE"},
        {"locationDescription": "Kasse 1"},
    ]
    await client.put_callback_qr(MSN, QR_ID, "Kasse 1", category="IN_STORE")
    assert assert_conforms(route.calls.last.request) == {"locationDescription": "Kasse 1"}
    assert route.call_count == 3
    assert recorder.sleeps == []  # a business rejection, not a retry


async def test_other_400_is_not_mistaken_for_a_category_problem(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    body = {
        "title": "One or more validation errors occurred.",
        "detail": "BadRequest",
        "instance": "00-1",
        "invalidParams": [{"name": "LocationDescription", "reason": "Too long."}],
    }
    route = router.put(QR_PATH).mock(return_value=canned("PUT", QR_PATH, 400, body))
    with pytest.raises(VippsRejected) as caught:
        await client.put_callback_qr(MSN, QR_ID, "Kasse 1", category="IN_STORE")
    assert caught.value.invalid_params[0].name == "LocationDescription"
    assert route.call_count == 1


async def test_location_description_is_checked_before_sending(
    router: respx.MockRouter, client: VippsClient
) -> None:
    with pytest.raises(ValueError, match="1-36"):
        await client.put_callback_qr(MSN, QR_ID, "x" * 37)
    with pytest.raises(ValueError, match="1-36"):
        await client.put_callback_qr(MSN, QR_ID, "")


async def test_msn_is_checked_before_sending(router: respx.MockRouter, client: VippsClient) -> None:
    with pytest.raises(ValueError, match="Merchant-Serial-Number"):
        await client.put_callback_qr("12", QR_ID, "Kasse 1")


async def test_get_callback_qr_uses_the_capitalized_query_parameters(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    route = router.get(QR_PATH).mock(return_value=canned("GET", QR_PATH, 200, qr()))
    result = await client.get_callback_qr(MSN, QR_ID, image_format="PNG", image_size=800)
    request = route.calls.last.request
    assert_platform_headers(request)
    assert dict(request.url.params) == {"QrImageFormat": "PNG", "QrImageSize": "800"}
    assert request.content == b""
    assert result.merchant_qr_id == QR_ID
    assert result.qr_image_url == "https://qr.vipps.no/generate/qr.png?c=abc"
    assert result.qr_content == "https://qr.vipps.no/28/2/01/031/abc"


async def test_get_callback_qr_defaults_to_svg_without_size(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    route = router.get(QR_PATH).mock(return_value=canned("GET", QR_PATH, 200, qr()))
    await client.get_callback_qr(MSN, QR_ID)
    assert dict(route.calls.last.request.url.params) == {"QrImageFormat": "SVG"}


@pytest.mark.parametrize("size", [99, 2001])
async def test_image_size_bounds(router: respx.MockRouter, client: VippsClient, size: int) -> None:
    with pytest.raises(ValueError, match="100-2000"):
        await client.get_callback_qr(MSN, QR_ID, image_format="PNG", image_size=size)


async def test_merchant_qr_id_is_escaped_in_the_path(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    route = router.get("/qr/v1/merchant-callback/till%2F1%3Fx").mock(
        return_value=canned("GET", "/qr/v1/merchant-callback/till%2F1%3Fx", 200, qr("till/1?x"))
    )
    await client.get_callback_qr(MSN, "till/1?x")
    assert route.calls.last.request.url.raw_path.startswith(
        b"/qr/v1/merchant-callback/till%2F1%3Fx"
    )


async def test_list_callback_qrs(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    path = "/qr/v1/merchant-callback"
    body = [qr(), qr("till-2", "Kasse 2")]
    route = router.get(path).mock(return_value=canned("GET", path, 200, body))
    result = await client.list_callback_qrs(MSN, image_format="PNG", image_size=400)
    assert_platform_headers(route.calls.last.request)
    assert dict(route.calls.last.request.url.params) == {
        "QrImageFormat": "PNG",
        "QrImageSize": "400",
    }
    assert [q.merchant_qr_id for q in result] == [QR_ID, "till-2"]


async def test_delete_callback_qr(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    route = router.delete(QR_PATH).mock(return_value=canned("DELETE", QR_PATH, 200))
    await client.delete_callback_qr(MSN, QR_ID)
    assert_platform_headers(route.calls.last.request)


async def test_delete_unknown_callback_qr_is_not_found(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    body = {"title": "Not found", "detail": "QR not found", "instance": "00-abc-01"}
    router.delete(QR_PATH).mock(return_value=canned("DELETE", QR_PATH, 404, body))
    with pytest.raises(VippsNotFound):
        await client.delete_callback_qr(MSN, QR_ID)


async def test_exchange_customer_token(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    path = "/qr/v1/exchange/customer"
    route = router.post(path).mock(
        return_value=canned("POST", path, 200, {"msisdn": "4798765432", "timestamp": 1634025600})
    )
    result = await client.exchange_customer_token(MSN, SecretStr(CUSTOMER_TOKEN))
    request = route.calls.last.request
    assert_platform_headers(request)
    assert assert_conforms(request) == {
        "customer": {"customerToken": CUSTOMER_TOKEN},
        "requestedData": ["MSISDN"],
    }
    assert result.msisdn.get_secret_value() == "4798765432"
    assert result.timestamp == 1634025600
    assert "4798765432" not in repr(result)
