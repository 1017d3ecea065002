"""The till display: a customer-facing page per till, served by the service, no build step.

It shows the till's QR, the amount and receipt lines of the active checkout, and the status
("Scan to pay", "Approve in the app", "Paid", "Declined", "Expired", "Cancelled") live over SSE.

Authentication (see the display-token notes in app/api/deps.py):

1. The till (or an operator) asks ``POST /api/v1/tills/{id}/display-token`` and opens
   ``/tills/{id}/display#token=vdt1...`` on the customer screen. The token is in the fragment,
   which browsers never send to a server.
2. The page presents it once, ``POST /tills/{id}/display/session`` with a Bearer header, and gets
   an HttpOnly cookie holding a fresh token, scoped to ``/tills/{id}/display``. The page renews it
   the same way (cookie only) at half its lifetime, so a display runs for as long as it is open.
3. ``qr.svg`` and ``events`` read the cookie, which EventSource and <img> send on their own.

Invariants:

* The display sees a projection of the checkout made for the customer (:class:`DisplayView`):
  amount, receipt lines and a status word. Never the reference, member data, failure details
  from Vipps, or anything about other tills.
* The stream is the till's change feed (:meth:`CheckoutService.till_feed`): a first ``snapshot``,
  then every change in order, each with its change id as the SSE ``id``. A reconnect with
  ``Last-Event-ID`` (EventSource does this by itself) or ``?lastEventId=`` replays every change
  after it, so nothing is lost. A stream ends when its token expires (within one keep-alive
  interval); by then the page has renewed the cookie, and its automatic reconnect resumes.
* A stream ends at once when the till's key is rotated or the till deactivated, on whichever
  replica that happened (the revocation broadcast, app/notifications.py); its reconnect is then
  refused, and the page asks for a new display token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, assert_never

import orjson
import structlog
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from app.api.deps import (
    DISPLAY_COOKIE,
    DisplayGrant,
    DisplayGrantDep,
    ServicesDep,
    TillQr,
    display_still_valid,
    issue_display_token,
)
from app.api.routing import TextCheckedRoute, problems
from app.api.schemas import ApiModel, Money
from app.domain.state_machine import CheckoutState
from app.errors import ApiProblem
from app.persistence.records import CheckoutRecord
from app.service.errors import TillInactive

log = structlog.get_logger("app.display")

router = APIRouter(tags=["till display"], route_class=TextCheckedRoute)

STATIC_DIR = Path(__file__).parent / "static"
_ASSETS = {
    "display.js": "text/javascript; charset=utf-8",
    "display.css": "text/css; charset=utf-8",
}
# How long a finished sale stays on the screen (also after a reload) before the idle QR returns.
RESULT_HOLD_SECONDS = 30
# Keep-alive comments; also how late a stream may notice that its token expired.
KEEPALIVE_SECONDS = 15.0
DEFAULT_DISPLAY_TOKEN_SECONDS = 900

_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'"
    ),
}
_UNAUTHORIZED = problems(
    {
        401: "No valid display token (`unauthorized`).",
        429: "Too many requests from this display (`rate_limited`).",
    }
)


class DisplayTokenRequest(ApiModel):
    lifetime_seconds: int = Field(
        default=DEFAULT_DISPLAY_TOKEN_SECONDS,
        ge=60,
        le=86_400,
        description="Lifetime of the token. The page renews it at half-life while it is open.",
    )

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"examples": [{"lifetimeSeconds": 900}]},
    )


class DisplayTokenOut(ApiModel):
    token: str = Field(description="Read-only display token for this till. Not an API key.")
    expires_at: datetime
    lifetime_seconds: int
    display_url: str = Field(
        description="Path of the page with the token in the URL fragment; open it on the "
        "customer screen (prefix the service's public origin)."
    )

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "token": "vdt1.oslo-1-till-3.3f2a9c4d1e6b7a80.1767225600.900.q8Xc2...",
                    "expiresAt": "2026-01-01T00:00:00Z",
                    "lifetimeSeconds": 900,
                    "displayUrl": "/tills/oslo-1-till-3/display#token=vdt1.oslo-1-till-3...",
                }
            ]
        },
    )


DISPLAY_LANGUAGES = ("nb", "da", "fi", "en")
# Accept-Language primary tags → the display's language (Norwegian in any written form: bokmål).
_LANGUAGE_OF_TAG = {"nb": "nb", "no": "nb", "nn": "nb", "da": "da", "fi": "fi", "en": "en"}


def negotiate_language(accept_language: str | None) -> str:
    """The display language for a browser's ``Accept-Language`` (English when none fits)."""
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        language = _LANGUAGE_OF_TAG.get(tag.split("-")[0].lower())
        if language and quality > 0:
            ranked.append((-quality, position, language))
    return min(ranked)[2] if ranked else "en"


class DisplaySessionOut(ApiModel):
    till_id: str
    location_description: str
    expires_at: datetime = Field(description="When the cookie's token expires; renew before.")
    lifetime_seconds: int
    language: Literal["nb", "da", "fi", "en"] = Field(
        description="The page's language: the store's setting, else the browser's "
        "Accept-Language (Norwegian, Danish, Finnish, else English)."
    )

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "tillId": "oslo-1-till-3",
                    "locationDescription": "Kasse 3",
                    "expiresAt": "2026-01-01T00:00:00Z",
                    "lifetimeSeconds": 900,
                    "language": "nb",
                }
            ]
        },
    )


_LINE_EXAMPLE: dict[str, Any] = {"name": "Socks", "quantity": "2", "unit": "PCS", "total": 10000}
_VIEW_EXAMPLE: dict[str, Any] = {
    "checkoutId": "3f0c2a4e-5b7d-4c1e-9a8f-2d6b1e0c7a93",
    "state": "PAYMENT_REQUESTED",
    "status": "approve",
    "final": False,
    "amount": {"value": 10000, "currency": "NOK"},
    "description": "Kiwi Storo",
    "lines": [_LINE_EXAMPLE],
    "tip": None,
    "holdSeconds": 0,
}


class DisplayLine(ApiModel):
    # (the rest of the config is ApiModel's)
    model_config = ConfigDict(json_schema_extra={"examples": [_LINE_EXAMPLE]})

    name: str
    quantity: str | None
    unit: str | None
    total: int = Field(description="Minor units; negative for a returned item.")


class DisplayView(ApiModel):
    """What the customer may see of a checkout."""

    model_config = ConfigDict(json_schema_extra={"examples": [_VIEW_EXAMPLE]})

    checkout_id: str
    state: str
    status: str = Field(
        description="scan | identifying | requesting | approve | cancelling | authorized | paid "
        "| refunded | declined | expired | cancelled | failed"
    )
    final: bool
    amount: Money
    description: str
    lines: list[DisplayLine]
    tip: int | None
    hold_seconds: int = Field(
        description="Final states: seconds the result stays on screen; 0 means it is old news."
    )

    @classmethod
    def of(cls, row: CheckoutRecord, now: datetime) -> DisplayView:
        state = CheckoutState(row.state)
        hold = 0
        if state.is_final:
            finished = row.finished_at or row.updated_at
            hold = max(0, int(RESULT_HOLD_SECONDS - (now - finished).total_seconds()))
        receipt = row.receipt or {}
        bottom = receipt.get("bottomLine") or {}
        tip = bottom.get("tipAmount") if isinstance(bottom, dict) else None
        return cls(
            checkout_id=row.id,
            state=state.value,
            status=display_status(state, payment_sent=row.vipps_state is not None),
            final=state.is_final,
            amount=Money.model_validate({"value": row.amount_value, "currency": row.currency}),
            description=row.description,
            lines=[
                _line(line) for line in receipt.get("orderLines") or [] if isinstance(line, dict)
            ],
            tip=tip if isinstance(tip, int) and tip > 0 else None,
            hold_seconds=hold,
        )


class DisplayMessage(ApiModel):
    """One SSE message of the display stream (``data:``); its ``id:`` is ``changeId``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"changeId": 41, "kind": "checkout.updated", "view": _VIEW_EXAMPLE}]
        }
    )

    change_id: int
    kind: str = Field(description="snapshot | checkout.created | checkout.updated | scan.*")
    view: DisplayView | None


def display_status(state: CheckoutState, *, payment_sent: bool) -> str:
    """The one word the page turns into its headline."""
    match state:
        case CheckoutState.AWAITING_SCAN:
            return "scan"
        case CheckoutState.IDENTIFYING | CheckoutState.AWAITING_POS_UPDATE:
            return "identifying"
        case CheckoutState.PAYMENT_REQUESTED:
            # The push reaches the phone only once Vipps accepted the create-payment call.
            return "approve" if payment_sent else "requesting"
        case CheckoutState.CANCELLING:
            return "cancelling"
        case CheckoutState.AUTHORIZED:
            return "authorized"
        case CheckoutState.CAPTURED:
            return "paid"
        case CheckoutState.PARTIALLY_REFUNDED | CheckoutState.REFUNDED:
            return "refunded"
        case CheckoutState.REJECTED:
            return "declined"
        case CheckoutState.EXPIRED:
            return "expired"
        case CheckoutState.CANCELLED:
            return "cancelled"
        case CheckoutState.FAILED:
            return "failed"
        case _:
            assert_never(state)


def _line(line: dict[str, Any]) -> DisplayLine:
    unit_info = line.get("unitInfo") if isinstance(line.get("unitInfo"), dict) else {}
    total = line.get("totalAmount")
    amount = total if isinstance(total, int) else 0
    quantity = unit_info.get("quantity") if unit_info else None
    unit = unit_info.get("quantityUnit") if unit_info else None
    return DisplayLine(
        name=str(line.get("name", ""))[:200],
        quantity=str(quantity) if quantity is not None else None,
        unit=str(unit) if unit is not None else None,
        total=-amount if line.get("isReturn") is True else amount,
    )


def _set_display_cookie(
    request: Request, response: Response, till_id: str, token: str, seconds: int
) -> None:
    response.set_cookie(
        DISPLAY_COOKIE,
        token,
        max_age=seconds,
        path=f"/tills/{till_id}/display",
        httponly=True,
        samesite="strict",
        # Behind a TLS-terminating proxy this needs X-Forwarded-Proto (uvicorn --proxy-headers).
        secure=request.url.scheme == "https",
    )


# ---- the POS side: issue a token ------------------------------------------------------------


@router.post(
    "/api/v1/tills/{till_id}/display-token",
    status_code=201,
    response_model=DisplayTokenOut,
    responses=problems(
        {
            401: "Missing, unknown or revoked API key (`unauthorized`).",
            403: "The key belongs to another till (`forbidden`).",
            404: "No such till (`till_not_found`).",
            409: "The till is deactivated (`till_inactive`).",
            422: "Invalid request; `errors` names each field (`validation_error`).",
            429: "Too many requests from this till (`rate_limited`).",
        }
    ),
    summary="Issue a read-only display token and the URL of the till's customer display",
)
async def issue_token(
    till_id: TillQr, services: ServicesDep, body: DisplayTokenRequest | None = None
) -> DisplayTokenOut:
    till = await services.tills.get(till_id)
    if till.status != "ACTIVE":
        raise TillInactive(till_id)
    lifetime = (body or DisplayTokenRequest()).lifetime_seconds
    token, expires = issue_display_token(
        services.ctx.settings,
        till_id=till.id,
        key_id=till.api_key_id,
        now=services.ctx.clock(),
        lifetime_seconds=lifetime,
    )
    return DisplayTokenOut(
        token=token,
        expires_at=expires,
        lifetime_seconds=lifetime,
        display_url=f"/tills/{till.id}/display#token={token}",
    )


# ---- the page and its private endpoints ------------------------------------------------------


@router.get(
    "/tills/{till_id}/display",
    response_class=FileResponse,
    summary="The customer display page (HTML; its data needs a display token)",
)
async def display_page(till_id: str) -> FileResponse:
    # The page is the same for every till and holds nothing secret; it reads its till id from
    # its own path and its token from the URL fragment.
    del till_id
    return FileResponse(STATIC_DIR / "display.html", headers=_PAGE_HEADERS)


@router.get("/display/static/{name}", include_in_schema=False)
async def display_asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise ApiProblem(404, "not_found", f"no asset {name}")
    return FileResponse(
        STATIC_DIR / name,
        media_type=media_type,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@router.post(
    "/tills/{till_id}/display/session",
    response_model=DisplaySessionOut,
    responses=_UNAUTHORIZED,
    summary="Display page: exchange a display token (Bearer or cookie) for a fresh one in the "
    "HttpOnly cookie",
)
async def display_session(
    grant: DisplayGrantDep, request: Request, response: Response, services: ServicesDep
) -> DisplaySessionOut:
    till = await services.tills.get(grant.till_id)
    token, expires = issue_display_token(
        services.ctx.settings,
        till_id=till.id,
        key_id=till.api_key_id,
        now=services.ctx.clock(),
        lifetime_seconds=grant.lifetime_seconds,
    )
    _set_display_cookie(request, response, till.id, token, grant.lifetime_seconds)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Vary"] = "Accept-Language"
    store = await services.tills.get_store(till.store_id)
    language = store.display_language or negotiate_language(request.headers.get("accept-language"))
    return DisplaySessionOut(
        till_id=till.id,
        location_description=till.location_description,
        expires_at=expires,
        lifetime_seconds=grant.lifetime_seconds,
        language=language if language in DISPLAY_LANGUAGES else "en",
    )


@router.get(
    "/tills/{till_id}/display/qr.svg",
    responses={200: {"content": {"image/svg+xml": {}}}, **_UNAUTHORIZED},
    summary="Display page: the till's QR (the same image as GET /api/v1/tills/{id}/qr)",
)
async def display_qr(grant: DisplayGrantDep, services: ServicesDep) -> Response:
    image = await services.tills.qr_image(grant.till_id, "svg", scale=10)
    return Response(image, media_type="image/svg+xml", headers={"Cache-Control": "no-cache"})


@router.get(
    "/tills/{till_id}/display/events",
    responses={200: {"content": {"text/event-stream": {}}}, **_UNAUTHORIZED},
    summary="Display page: Server-Sent Events of DisplayMessage, resumable with Last-Event-ID",
)
async def display_events(
    grant: DisplayGrantDep,
    request: Request,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    resume_after: Annotated[
        int | None,
        Query(alias="lastEventId", ge=0, description="For a new EventSource: resume after this"),
    ] = None,
) -> StreamingResponse:
    after: int | None = None
    source: str | None = None
    if last_event_id and last_event_id.isdigit():
        after, source = int(last_event_id), "last-event-id"
    elif resume_after is not None:
        after, source = resume_after, "query"
    log.info(
        "display.stream.opened", till_id=grant.till_id, resumed_after=after, resume_source=source
    )
    return StreamingResponse(
        _display_stream(grant, request, services, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _display_stream(
    grant: DisplayGrant, request: Request, services: ServicesDep, after: int | None
) -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"
    async for item in services.checkouts.till_feed(
        grant.till_id, after=after, keepalive=KEEPALIVE_SECONDS, stop=grant.revoked
    ):
        if await request.is_disconnected():
            return
        now = services.ctx.clock()
        if now >= grant.expires_at:
            # The page renewed its cookie long ago; EventSource reconnects with it and with
            # Last-Event-ID, so ending here loses nothing.
            log.info("display.stream.token_expired", till_id=grant.till_id)
            return
        if item is None:
            if not await display_still_valid(services, grant.till_id, grant.key_id):
                break  # revoked where this replica did not hear of it (see till_feed's stop)
            yield b": keep-alive\n\n"
            continue
        checkout = item.checkout
        if item.kind == "snapshot" and checkout is None:
            # Nothing active: a sale that ended moments ago is still what the screen shows
            # (e.g. "Paid" after a reload).
            recent = await services.checkouts.list(till_id=grant.till_id, limit=1)
            checkout = recent[0] if recent else None
        message = DisplayMessage(
            change_id=item.id,
            kind=item.kind,
            view=DisplayView.of(checkout, now) if checkout is not None else None,
        )
        yield b"id: %d\ndata: %s\n\n" % (
            item.id,
            orjson.dumps(message.model_dump(mode="json", by_alias=True)),
        )
    log.info("display.stream.revoked", till_id=grant.till_id)
