"""The POS API (`/api/v1`): what cash registers code against. See docs/integration.md."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.api.deps import (
    Access,
    CancelDep,
    CaptureDep,
    ReadDep,
    RefundDep,
    ServicesDep,
    StreamDep,
    TillRead,
    TillSell,
    TillStream,
    own_till,
    still_allowed,
)
from app.api.routing import TextCheckedRoute, problems
from app.api.schemas import ActiveCheckoutOut, AmountRequest, CheckoutOut, CreateCheckoutRequest
from app.domain.state_machine import CapturePolicy
from app.errors import ApiProblem
from app.service.checkouts import CreateCheckout

router = APIRouter(prefix="/api/v1", tags=["POS"], route_class=TextCheckedRoute)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Same key and same body: the same checkout again. Other body: 409.",
    ),
]
_AUTH = {
    401: "Missing, unknown or revoked API key (`unauthorized`).",
    403: "The key belongs to another till, or may not do this (`forbidden`).",
    409: "`till_inactive` (a deactivated till's key may only read and cancel), or a state rule.",
    422: "Invalid request; `errors` names each field (`validation_error`).",
    429: "Too many requests with this key, or failed attempts from this address "
    "(`rate_limited`); wait `Retry-After` seconds.",
}
_CHECKOUT = {**_AUTH, 404: "No such checkout, or not this till's (`checkout_not_found`)."}
_TILL = {**_AUTH, 404: "No such till (`till_not_found`)."}


@router.post(
    "/tills/{till_id}/checkouts",
    status_code=201,
    response_model=CheckoutOut,
    responses=problems(
        {
            **_TILL,
            409: "`active_checkout_exists` (read that checkout), `idempotency_key_reused`, "
            "`till_inactive`.",
        }
    ),
    summary="Ring up a sale: the checkout waits for the customer's scan",
)
async def create_checkout(
    till_id: TillSell,
    body: CreateCheckoutRequest,
    services: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> CheckoutOut:
    result = await services.checkouts.create(
        till_id,
        CreateCheckout(
            amount=body.amount,
            currency=body.currency,
            receipt=body.receipt,
            description=body.description,
            capture_mode=CapturePolicy(body.capture_mode),
        ),
        idempotency_key,
        body.model_dump(mode="json", by_alias=True),
    )
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/api/v1/checkouts/{result.checkout.id}"
    return CheckoutOut.of(result.checkout)


@router.get(
    "/tills/{till_id}/checkouts/active",
    response_model=ActiveCheckoutOut,
    responses=problems(_TILL),
    summary="What is active on this till",
)
async def active_checkout(till_id: TillRead, services: ServicesDep) -> ActiveCheckoutOut:
    checkout = await services.checkouts.active(till_id)
    return ActiveCheckoutOut(checkout=CheckoutOut.of(checkout) if checkout else None)


@router.get(
    "/checkouts/{checkout_id}",
    response_model=CheckoutOut,
    responses=problems(_CHECKOUT),
    summary="A checkout; with ?wait=N, long-poll up to N seconds for its next change",
)
async def get_checkout(
    checkout_id: str,
    principal: ReadDep,
    services: ServicesDep,
    wait: Annotated[float, Query(ge=0, le=120, description="Seconds to wait for a change")] = 0,
    version: Annotated[
        int | None,
        Query(description="Return as soon as the version differs from this one (no lost update)"),
    ] = None,
) -> CheckoutOut:
    scope = own_till(principal)
    if wait > 0:
        checkout = await services.checkouts.wait_for_change(
            scope, checkout_id, after_version=version, wait=wait, stop=principal.revoked
        )
        if principal.revoked.is_set() and not await still_allowed(services, principal, Access.READ):
            raise ApiProblem(401, "unauthorized", "the API key was revoked while waiting")
    else:
        checkout = await services.checkouts.get(scope, checkout_id)
    return CheckoutOut.of(checkout)


@router.post(
    "/checkouts/{checkout_id}/cancel",
    response_model=CheckoutOut,
    responses=problems(
        {
            **_CHECKOUT,
            409: "`capture_in_progress` (refund instead), `checkout_final`, "
            "`idempotency_key_reused`.",
        }
    ),
    summary="Cancel; answers when the outcome is final (or the customer approved first)",
)
async def cancel_checkout(
    checkout_id: str,
    principal: CancelDep,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> CheckoutOut:
    checkout = await services.checkouts.cancel(
        own_till(principal),
        checkout_id,
        idempotency_key=idempotency_key,
        actor=principal.actor,
    )
    return CheckoutOut.of(checkout)


@router.post(
    "/checkouts/{checkout_id}/capture",
    response_model=CheckoutOut,
    responses=problems(
        {
            **_CHECKOUT,
            409: "`not_authorized`, `already_captured`, `amount_exceeds_authorized`, "
            "`invalid_amount`, `checkout_final`, `idempotency_key_reused`.",
        }
    ),
    summary="Capture (manual mode): all, or part — the rest of the reservation is released",
)
async def capture_checkout(
    checkout_id: str,
    principal: CaptureDep,
    services: ServicesDep,
    body: AmountRequest | None = None,
    idempotency_key: IdempotencyKey = None,
) -> CheckoutOut:
    checkout = await services.checkouts.capture(
        own_till(principal),
        checkout_id,
        body.amount if body else None,
        idempotency_key=idempotency_key,
        actor=principal.actor,
    )
    return CheckoutOut.of(checkout)


@router.post(
    "/checkouts/{checkout_id}/refund",
    response_model=CheckoutOut,
    responses=problems(
        {
            **_CHECKOUT,
            409: "`not_captured`, `already_refunded`, `amount_exceeds_captured`, "
            "`invalid_amount`, `idempotency_key_reused`.",
        }
    ),
    summary="Refund all or part of what was captured; may be repeated",
)
async def refund_checkout(
    checkout_id: str,
    principal: RefundDep,
    services: ServicesDep,
    body: AmountRequest | None = None,
    idempotency_key: IdempotencyKey = None,
) -> CheckoutOut:
    checkout = await services.checkouts.refund(
        own_till(principal),
        checkout_id,
        body.amount if body else None,
        idempotency_key=idempotency_key,
        actor=principal.actor,
    )
    return CheckoutOut.of(checkout)


@router.get(
    "/tills/{till_id}/events",
    responses={200: {"content": {"text/event-stream": {}}}, **problems(_TILL)},
    summary="Server-Sent Events: this till's checkout changes, resumable with Last-Event-ID",
)
async def till_events(
    till_id: TillStream,
    principal: StreamDep,
    request: Request,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    after: int | None = None
    if last_event_id and last_event_id.isdigit():
        after = int(last_event_id)
    await services.tills.get(till_id)

    async def stream() -> AsyncIterator[bytes]:
        # Ends as soon as the key is revoked (rotated, till deactivated) on any replica; the
        # keep-alive re-check covers a revocation this replica did not hear of.
        yield b"retry: 1000\n\n"
        feed = services.checkouts.till_feed(till_id, after=after, stop=principal.revoked)
        async for item in feed:
            if await request.is_disconnected():
                return
            if item is None:
                if not await still_allowed(services, principal, Access.STREAM):
                    return
                yield b": keep-alive\n\n"
                continue
            payload = {
                "changeId": item.id,
                "kind": item.kind,
                "checkoutId": item.checkout_id,
                "data": item.data,
                "checkout": (
                    CheckoutOut.of(item.checkout).model_dump(mode="json", by_alias=True)
                    if item.checkout is not None
                    else None
                ),
            }
            yield b"id: %d\nevent: %s\ndata: %s\n\n" % (
                item.id,
                item.kind.encode(),
                orjson.dumps(payload),
            )
            await asyncio.sleep(0)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
