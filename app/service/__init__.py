"""The service layer: orchestration between the API, the domain, the database and Vipps."""

from __future__ import annotations

from dataclasses import dataclass

from app.service.admin_keys import AdminKeyService
from app.service.checkouts import CheckoutService
from app.service.context import ServiceContext
from app.service.intake import WebhookIntake
from app.service.keys import VippsKeys
from app.service.tills import TillService
from app.service.webhooks import WebhookService


@dataclass
class Services:
    ctx: ServiceContext
    checkouts: CheckoutService
    tills: TillService
    intake: WebhookIntake
    webhooks: WebhookService
    keys: VippsKeys
    admin_keys: AdminKeyService

    @classmethod
    def build(cls, ctx: ServiceContext, keys: VippsKeys | None = None) -> Services:
        """``keys`` must be the store the context's Vipps client asks (so a rotation reaches
        it at once); without one, a store is built here for a client with its own keys."""
        keys = keys or VippsKeys(ctx.settings, ctx.sessions, ctx.secrets, clock=ctx.clock)
        keys.use_client(ctx.vipps)
        checkouts = CheckoutService(ctx)
        intake = WebhookIntake(ctx, checkouts)
        return cls(
            ctx=ctx,
            checkouts=checkouts,
            tills=TillService(ctx, keys),
            intake=intake,
            webhooks=WebhookService(ctx, intake),
            keys=keys,
            admin_keys=AdminKeyService(ctx),
        )
