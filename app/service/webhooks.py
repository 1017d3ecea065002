"""Webhook registrations at Vipps: one per MSN holding every event the service uses.

``user.checked-in.v1`` allows only one registration per sales unit (REFERENCE.md §6.1), so all
events share it. The secret comes only in the register response and is stored encrypted.

Rotation registers anew and accepts both secrets during the overlap — but the check-in event can
only be held by one registration at a time, so the new one first takes the payment events, the
old one is deleted, and the check-in event moves over as the last step. Deliveries signed with
either secret verify throughout (see :meth:`WebhookIntake.secrets_for`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from app import repository as repo
from app.models import WebhookRegistration
from app.service.audit import append_audit
from app.service.context import ServiceContext, unit_of_work
from app.service.intake import CHECKED_IN, WebhookIntake
from app.vipps.errors import VippsNotFound

log = structlog.get_logger("app.webhooks")

PAYMENT_EVENTS = (
    "epayments.payment.authorized.v1",
    "epayments.payment.aborted.v1",
    "epayments.payment.expired.v1",
    "epayments.payment.cancelled.v1",
    "epayments.payment.captured.v1",
    "epayments.payment.refunded.v1",
    "epayments.payment.terminated.v1",
)
ALL_EVENTS = (CHECKED_IN, *PAYMENT_EVENTS)


@dataclass(frozen=True)
class EnsureReport:
    msn: str
    registration_id: str
    created: bool
    removed: tuple[str, ...]
    foreign: tuple[str, ...]  # registrations at Vipps for other URLs: reported, left alone


class WebhookService:
    def __init__(self, ctx: ServiceContext, intake: WebhookIntake) -> None:
        self.ctx = ctx
        self.intake = intake

    async def ensure(self, msn: str, *, actor: str = "admin") -> EnsureReport:
        """Exactly one registration for our URL with every event, whose secret we hold."""
        url = self.intake.registered_url(msn)
        at_vipps = await self.ctx.vipps.list_webhooks(msn)
        async with self.ctx.sessions() as session:
            ours = {r.id: r for r in await repo.registrations_for_msn(session, msn)}
        keep: str | None = None
        for hook in at_vipps:
            if (
                hook.url == url
                and hook.id in ours
                and set(ALL_EVENTS) <= set(hook.events)
                and keep is None
            ):
                keep = hook.id
        removed: list[str] = []
        foreign = tuple(h.id for h in at_vipps if h.url != url)
        for hook in at_vipps:
            if hook.url == url and hook.id != keep:
                await self._delete_at_vipps(msn, hook.id)
                removed.append(hook.id)
        created = False
        if keep is None:
            registration = await self.ctx.vipps.register_webhook(msn, url, list(ALL_EVENTS))
            keep, created = registration.id, True
            await self._store(
                msn,
                registration.id,
                url,
                ALL_EVENTS,
                registration.secret.get_secret_value(),
                actor=actor,
            )
        await self._forget(msn, except_id=keep)
        log.info(
            "webhooks.ensured", msn=msn, created=created, removed=len(removed), foreign=len(foreign)
        )
        return EnsureReport(msn, keep, created, tuple(removed), foreign)

    async def rotate(self, msn: str, *, actor: str = "admin") -> EnsureReport:
        url = self.intake.registered_url(msn)
        async with self.ctx.sessions() as session:
            old = list(await repo.registrations_for_msn(session, msn))
        # 1. New registration for the payment events; both secrets verify from now on.
        fresh = await self.ctx.vipps.register_webhook(msn, url, list(PAYMENT_EVENTS))
        await self._store(
            msn, fresh.id, url, PAYMENT_EVENTS, fresh.secret.get_secret_value(), actor=actor
        )
        # 2. Old registrations go; 3. the check-in event joins the new one (one holder at a time).
        for registration in old:
            await self._delete_at_vipps(msn, registration.id)
        final = await self.ctx.vipps.register_webhook(msn, url, list(ALL_EVENTS))
        await self._store(
            msn, final.id, url, ALL_EVENTS, final.secret.get_secret_value(), actor=actor
        )
        await self._delete_at_vipps(msn, fresh.id)
        await self._forget(msn, except_id=final.id)
        log.info("webhooks.rotated", msn=msn)
        return EnsureReport(msn, final.id, True, tuple(r.id for r in old), ())

    async def list(self, msn: str | None = None) -> Sequence[WebhookRegistration]:
        async with self.ctx.sessions() as session:
            if msn:
                return await repo.registrations_for_msn(session, msn)
            return await repo.all_registrations(session)

    async def _delete_at_vipps(self, msn: str, registration_id: str) -> None:
        with contextlib.suppress(VippsNotFound):
            await self.ctx.vipps.delete_webhook(msn, registration_id)

    async def _store(
        self, msn: str, rid: str, url: str, events: Sequence[str], secret: str, *, actor: str
    ) -> None:
        now = self.ctx.clock()
        async with unit_of_work(self.ctx) as work:
            work.session.add(
                WebhookRegistration(
                    id=rid,
                    msn=msn,
                    url=url,
                    events=list(events),
                    secret_enc=self.ctx.secrets.encrypt(secret),
                    status="ACTIVE",
                    created_at=now,
                )
            )
            await append_audit(
                work.session,
                at=now,
                actor=actor,
                action="webhook.register",
                detail={"msn": msn, "registration": rid, "events": list(events)},
            )
        self.intake.forget_secrets(msn)

    async def _forget(self, msn: str, *, except_id: str) -> None:
        """Drop our stored registrations other than ``except_id`` (deleted at Vipps)."""
        async with unit_of_work(self.ctx) as work:
            for registration in await repo.registrations_for_msn(work.session, msn):
                if registration.id != except_id:
                    await work.session.delete(registration)
        self.intake.forget_secrets(msn)
