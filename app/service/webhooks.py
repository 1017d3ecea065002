"""Webhook registrations at Vipps: one per MSN holding every event the service uses.

``user.checked-in.v1`` allows only one registration per sales unit (REFERENCE.md §6.1), so all
events share it. The secret comes only in the register response and is stored encrypted.

Invariants:

* Before every register call a ``REGISTERING`` row is committed; the answer replaces it with the
  ``ACTIVE`` registration. Vipps may deliver with the new secret before we have stored it, and
  the intake waits for a registration in the making instead of rejecting such a delivery
  (:meth:`WebhookIntake.secrets_for`).
* A registration we stop using is deleted at Vipps and kept here as ``RETIRING`` with
  ``retired_at``: deliveries Vipps signed with it before the deletion (and their retries) still
  verify for :data:`RETIRED_SECRET_GRACE`. Only :meth:`WebhookService.ensure` purges them later.
* Rotation never leaves a payment event without a holder: the new registration takes the
  payment events first, both verify, and only then does the check-in event move over.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from app import repository as repo
from app.domain.statuses import RegistrationStatus
from app.models import WebhookRegistration
from app.service.audit import append_audit
from app.service.context import ServiceContext, unit_of_work
from app.service.errors import ServiceError, VippsRefused, vipps_errors_as_problems
from app.service.intake import CHECKED_IN, REGISTERING, RETIRED_SECRET_GRACE, WebhookIntake
from app.vipps.errors import VippsNotFound, VippsRejected
from app.vipps.schemas import Webhook
from app.vipps.webhook_urls import webhook_url_refusal

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


class CheckInHeldElsewhere(ServiceError):
    status, code, title = 409, "checkin_webhook_taken", "Another registration holds check-ins"


PUBLIC_URL_SETTING = "VIPPS_POS_WEBHOOKS__PUBLIC_URL"


class WebhookUrlRefused(ServiceError):
    """Vipps would not (or did not) take our webhook URL; the fix is a setting, not a retry."""

    status, code, title = 422, "webhook_url_refused", "Vipps does not accept this webhook URL"

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"{url}: {reason}. Set {PUBLIC_URL_SETTING} to the HTTPS address at which Vipps "
            "reaches this service (port 443, 80 or 8080; behind your proxy, the outside URL)",
            url=url,
            setting=PUBLIC_URL_SETTING,
        )
        self.errors = [{"field": PUBLIC_URL_SETTING, "code": self.code, "message": reason}]


@dataclass(frozen=True)
class EnsureReport:
    """What :meth:`WebhookService.ensure` found and did for one MSN.

    ``removed`` lists every registration deleted at Vipps: ``orphaned`` ones (our URL, but we do
    not hold their secret) and ``duplicates`` (ours, but another one is kept). ``foreign`` ones
    point elsewhere and are only reported. ``purged`` are retired secrets past their grace.
    """

    msn: str
    registration_id: str
    created: bool
    removed: tuple[str, ...]
    foreign: tuple[str, ...]
    orphaned: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    purged: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()


class WebhookService:
    def __init__(self, ctx: ServiceContext, intake: WebhookIntake) -> None:
        self.ctx = ctx
        self.intake = intake

    @vipps_errors_as_problems
    async def ensure(self, msn: str, *, actor: str = "admin") -> EnsureReport:
        """Exactly one registration at Vipps for our URL with every event, whose secret we hold.

        Safe to repeat; runs at start-up when configured. Registrations at other URLs are left
        alone — but one holding ``user.checked-in.v1`` blocks ours and is reported as an error.
        """
        url = self.intake.registered_url(msn)
        self._check_url(url)
        at_vipps = await self.ctx.vipps.list_webhooks(msn)
        stored = {r.id: r for r in await self._stored(msn)}
        complete = [
            h
            for h in at_vipps
            if h.url == url
            and h.id in stored
            and stored[h.id].status is RegistrationStatus.ACTIVE
            and set(ALL_EVENTS) <= set(h.events)
        ]
        # The newest complete registration wins; an older one is a leftover duplicate.
        complete.sort(key=lambda h: stored[h.id].created_at, reverse=True)
        keep = complete[0].id if complete else None
        ours = [h for h in at_vipps if h.url == url and h.id != keep]
        orphaned = tuple(h.id for h in ours if h.id not in stored)
        duplicates = tuple(h.id for h in ours if h.id in stored)
        foreign = [h for h in at_vipps if h.url != url]
        for hook in ours:
            await self._delete_at_vipps(msn, hook.id)
        created = False
        if keep is None:
            _check_no_foreign_checkin(msn, url, foreign)
            keep = await self._register(msn, url, ALL_EVENTS, actor=actor)
            created = True
        retired = await self._retire(msn, keep_ids={keep}, actor=actor)
        purged = await self._purge_expired(msn)
        log.info(
            "webhooks.ensured",
            msn=msn,
            created=created,
            removed=len(ours),
            foreign=len(foreign),
            purged=len(purged),
        )
        return EnsureReport(
            msn,
            keep,
            created,
            tuple(h.id for h in ours),
            tuple(h.id for h in foreign),
            orphaned=orphaned,
            duplicates=duplicates,
            purged=purged,
            retired=retired,
        )

    @vipps_errors_as_problems
    async def rotate(self, msn: str, *, actor: str = "admin") -> EnsureReport:
        """A new registration and secret; no event is lost or rejected on the way.

        1. ``bridge``: a new registration with the payment events. From here on Vipps delivers
           each payment event twice (old and bridge; the inbox keeps one) and both secrets
           verify.
        2. The old registrations are deleted at Vipps (retired here, still verifying), and at
           once ``final`` takes every event: the check-in event can have only one holder, so it
           moves in these two calls — no payment event is without a holder meanwhile.
        3. The bridge is deleted and retired.
        """
        url = self.intake.registered_url(msn)
        self._check_url(url)
        before = [r for r in await self._stored(msn) if r.status is RegistrationStatus.ACTIVE]
        at_vipps = {h.id: h for h in await self.ctx.vipps.list_webhooks(msn)}
        _check_no_foreign_checkin(msn, url, list(at_vipps.values()))
        bridge = await self._register(msn, url, PAYMENT_EVENTS, actor=actor)
        old_ids = {r.id for r in before} | {
            h.id for h in at_vipps.values() if h.url == url and h.id != bridge
        }
        for old_id in sorted(old_ids):
            await self._delete_at_vipps(msn, old_id)
        final = await self._register(msn, url, ALL_EVENTS, actor=actor)
        await self._delete_at_vipps(msn, bridge)
        retired = await self._retire(msn, keep_ids={final}, actor=actor)
        log.info("webhooks.rotated", msn=msn, retired=len(retired))
        return EnsureReport(
            msn,
            final,
            True,
            tuple(sorted(old_ids | {bridge})),
            tuple(h.id for h in at_vipps.values() if h.url != url),
            retired=retired,
        )

    def _check_url(self, url: str) -> None:
        """Against Vipps itself (test or production, in any of our environments), refuse a URL
        Vipps would refuse before registering anything. A simulator checks for itself (it may
        allow http on localhost for development) and its refusal is reported the same way."""
        if not self.ctx.settings.vipps.is_vipps_host:
            return
        reason = webhook_url_refusal(url)
        if reason is not None:
            raise WebhookUrlRefused(url, reason)

    async def list(self, msn: str | None = None) -> Sequence[WebhookRegistration]:
        async with self.ctx.sessions() as session:
            if msn:
                return await repo.registrations_for_msn(session, msn)
            return await repo.all_registrations(session)

    @vipps_errors_as_problems
    async def list_at_vipps(self, msn: str) -> Sequence[Webhook]:
        return await self.ctx.vipps.list_webhooks(msn)

    async def _stored(self, msn: str) -> Sequence[WebhookRegistration]:
        async with self.ctx.sessions() as session:
            return await repo.registrations_for_msn(session, msn)

    async def _delete_at_vipps(self, msn: str, registration_id: str) -> None:
        """Delete; an id Vipps no longer knows counts as deleted. The Webhooks API documents only
        204 and 400 here, so an unknown id comes as 400 — checked against a fresh list."""
        try:
            await self.ctx.vipps.delete_webhook(msn, registration_id)
        except VippsNotFound:
            pass
        except VippsRejected as exc:
            if any(h.id == registration_id for h in await self.ctx.vipps.list_webhooks(msn)):
                raise VippsRefused(str(exc)[:300]) from exc

    async def _register(self, msn: str, url: str, events: Sequence[str], *, actor: str) -> str:
        """Register at Vipps and store the secret; returns the registration id.

        The ``REGISTERING`` marker goes in first so that a delivery signed with the new secret
        that arrives before we stored it waits instead of being rejected.
        """
        now = self.ctx.clock()
        marker_id = f"registering-{uuid.uuid4()}"
        async with unit_of_work(self.ctx) as work:
            work.session.add(
                WebhookRegistration(
                    id=marker_id,
                    msn=msn,
                    url=url,
                    events=list(events),
                    secret_enc=self.ctx.secrets.encrypt(""),
                    status=REGISTERING,
                    created_at=now,
                )
            )
        try:
            registration = await self.ctx.vipps.register_webhook(msn, url, list(events))
        except VippsRejected as exc:
            await self._drop(marker_id)
            if exc.status == 400 and exc.names_param("url"):
                raise WebhookUrlRefused(url, exc.detail or exc.title or "refused") from exc
            raise
        except BaseException:
            await self._drop(marker_id)
            raise
        async with unit_of_work(self.ctx) as work:
            marker = await work.session.get(WebhookRegistration, marker_id)
            if marker is not None:
                await work.session.delete(marker)
            work.session.add(
                WebhookRegistration(
                    id=registration.id,
                    msn=msn,
                    url=url,
                    events=list(events),
                    secret_enc=self.ctx.secrets.encrypt(registration.secret.get_secret_value()),
                    status=RegistrationStatus.ACTIVE,
                    created_at=self.ctx.clock(),
                )
            )
            await append_audit(
                work.session,
                at=self.ctx.clock(),
                actor=actor,
                action="webhook.register",
                detail={"msn": msn, "registration": registration.id, "events": list(events)},
            )
        self.intake.forget_secrets(msn)
        return registration.id

    async def _drop(self, registration_id: str) -> None:
        async with unit_of_work(self.ctx) as work:
            row = await work.session.get(WebhookRegistration, registration_id)
            if row is not None:
                await work.session.delete(row)

    async def _retire(self, msn: str, *, keep_ids: set[str], actor: str) -> tuple[str, ...]:
        """Mark every other active registration of the MSN retired (already deleted at Vipps)."""
        now = self.ctx.clock()
        retired: list[str] = []
        async with unit_of_work(self.ctx) as work:
            for row in await repo.registrations_for_msn(work.session, msn):
                if row.id in keep_ids or row.status is not RegistrationStatus.ACTIVE:
                    continue
                row.status, row.retired_at = RegistrationStatus.RETIRING, now
                retired.append(row.id)
            if retired:
                await append_audit(
                    work.session,
                    at=now,
                    actor=actor,
                    action="webhook.retire",
                    detail={"msn": msn, "registrations": retired},
                )
        self.intake.forget_secrets(msn)
        return tuple(retired)

    async def _purge_expired(self, msn: str) -> tuple[str, ...]:
        """Forget retired secrets past their grace, and markers of registrations that never
        finished (a crash between the marker and Vipps's answer)."""
        now = self.ctx.clock()
        purged: list[str] = []
        async with unit_of_work(self.ctx) as work:
            for row in await repo.registrations_for_msn(work.session, msn):
                if _expired(row, now):
                    await work.session.delete(row)
                    purged.append(row.id)
        if purged:
            self.intake.forget_secrets(msn)
        return tuple(purged)


def _check_no_foreign_checkin(msn: str, url: str, at_vipps: Sequence[Webhook]) -> None:
    holder = next((h for h in at_vipps if h.url != url and CHECKED_IN in h.events), None)
    if holder is not None:
        raise CheckInHeldElsewhere(
            f"registration {holder.id} at {holder.url} holds {CHECKED_IN} for MSN {msn};"
            " delete it first (Vipps allows one per sales unit)"
        )


def _expired(row: WebhookRegistration, now: datetime) -> bool:
    if row.status is RegistrationStatus.RETIRING:
        return row.retired_at is None or now - row.retired_at >= RETIRED_SECRET_GRACE
    if row.status == REGISTERING:
        return now - row.created_at >= RETIRED_SECRET_GRACE
    return False
