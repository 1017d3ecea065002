"""The service layer: orchestration between the API, the domain, the database and Vipps."""

from __future__ import annotations

from dataclasses import dataclass

from app.service.admin_keys import AdminKeyService
from app.service.checkouts import CheckoutService
from app.service.context import ServiceContext
from app.service.intake import WebhookIntake
from app.service.tills import TillService
from app.service.webhooks import WebhookService


@dataclass
class Services:
    ctx: ServiceContext
    checkouts: CheckoutService
    tills: TillService
    intake: WebhookIntake
    webhooks: WebhookService
    admin_keys: AdminKeyService

    @classmethod
    def build(cls, ctx: ServiceContext) -> Services:
        checkouts = CheckoutService(ctx)
        intake = WebhookIntake(ctx, checkouts)
        return cls(
            ctx=ctx,
            checkouts=checkouts,
            tills=TillService(ctx),
            intake=intake,
            webhooks=WebhookService(ctx, intake),
            admin_keys=AdminKeyService(ctx),
        )
