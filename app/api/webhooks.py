"""Vipps MobilePay webhook intake: one URL per sales unit, authenticated by HMAC only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from app.api.deps import ServicesDep
from app.api.schemas import WebhookAck

router = APIRouter(tags=["vipps webhooks"])


@router.post(
    "/webhooks/vipps/{msn}",
    summary="Receive a signed Vipps MobilePay webhook",
    response_model=WebhookAck,
    responses={401: {"description": "Signature rejected; nothing was stored."}},
)
async def receive_webhook(
    msn: Annotated[str, Path(pattern=r"^[0-9]{4,6}$")],
    request: Request,
    services: ServicesDep,
) -> WebhookAck:
    body = await request.body()  # raw bytes: the HMAC covers them exactly
    result = await services.intake.receive(msn, request.headers, body)
    return WebhookAck(status="duplicate" if result.duplicate else "accepted")
