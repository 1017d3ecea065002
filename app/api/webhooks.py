"""Vipps MobilePay webhook intake: one URL per sales unit, authenticated by HMAC only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from app.api.deps import ServicesDep, too_many
from app.api.schemas import WebhookAck
from app.service.intake import WebhookRejected
from app.throttle import WEBHOOK_FAILURE, Throttle, source_of

router = APIRouter(tags=["vipps webhooks"])


@router.post(
    "/webhooks/vipps/{msn}",
    summary="Receive a signed Vipps MobilePay webhook",
    response_model=WebhookAck,
    responses={
        401: {"description": "Signature rejected; nothing was stored."},
        429: {"description": "Too many rejected deliveries from this address: backing off."},
    },
)
async def receive_webhook(
    msn: Annotated[str, Path(pattern=r"^[0-9]{4,6}$")],
    request: Request,
    services: ServicesDep,
) -> WebhookAck:
    # Forged deliveries count per source address and back off (app/throttle.py), before the
    # body is even read; genuine ones from Vipps's addresses never fail the signature check.
    throttle: Throttle = request.app.state.throttle
    source = WEBHOOK_FAILURE + source_of(request.client.host if request.client else None)
    wait = throttle.begin(source)
    if wait > 0:
        raise too_many(wait, "too many rejected webhook deliveries from this address")
    rejected = False
    try:
        body = await request.body()  # raw bytes: the HMAC covers them exactly
        result = await services.intake.receive(msn, request.headers, body)
    except WebhookRejected:
        rejected = True
        raise
    finally:
        throttle.end(source, failed=rejected)
    return WebhookAck(status="duplicate" if result.duplicate else "accepted")
