"""The reconciler: finds what webhooks did not tell us, and every checkout left in limbo.

Each pass:

* polls Vipps for checkouts waiting on the customer or on a cancel (``PAYMENT_REQUESTED``,
  ``CANCELLING``) and authorized ones, once their next poll is due — first about 5 s after the
  request, then every 2 s, slowing to every 10 s after a minute (Vipps's polling guidance,
  REFERENCE.md §7.11; reads are limited to 120 per minute per reference);
* expires unscanned checkouts and member-price holds past their deadline, and stale check-ins;
* requests the payment of a checkout stuck in the customer-club step when its customer token
  is about to expire (the club service normally releases it earlier itself);
* re-issues the capture of an ``AUTHORIZED`` auto-capture checkout that has no capture queued
  (e.g. after a crash before the capture was decided).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import structlog

from app import repository as repo
from app.domain.state_machine import CheckoutState, Event, EventKind
from app.service.checkouts import CheckoutService
from app.service.context import ServiceContext, unit_of_work
from app.vipps.client import VippsClient
from app.vipps.errors import VippsError

log = structlog.get_logger("app.reconciler")
POLLED_STATES = (
    CheckoutState.PAYMENT_REQUESTED,
    CheckoutState.CANCELLING,
    CheckoutState.AUTHORIZED,
)
# Polls in flight at once. Each opens database sessions before and after its Vipps GET (none is
# held during the call); 50 at once overflowed the connection pool, and every overflow connection
# was opened (TLS negotiation included) and closed again — ~2 % of the service's CPU under
# benchmark 2. Eight keep a slow Vipps (2 s per GET) from stretching a pass of 50 beyond ~13 s.
POLLS_AT_ONCE = 8


class Reconciler:
    def __init__(self, ctx: ServiceContext, checkouts: CheckoutService, vipps: VippsClient) -> None:
        self.ctx = ctx
        self.checkouts = checkouts
        self.vipps = vipps

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.ctx.settings.workers.reconcile_interval_seconds
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("reconciler.loop_error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def run_once(self) -> int:
        now = self.ctx.clock()
        repaired = 0
        async with unit_of_work(self.ctx) as work:
            overdue = await repo.checkouts_past_deadline(work.session, now, 200)
            # The club step normally ends itself in time; this catches one whose process died.
            margin = timedelta(seconds=self.ctx.settings.checkout.payment_request_margin_seconds)
            identifying = await repo.checkouts_identifying_past(work.session, now + margin, 200)
            expired_checkins = await repo.expire_checkins(work.session, now)
            due = await repo.checkouts_due_for_poll(work.session, POLLED_STATES, now, 50)
        for checkout_id, state in overdue:
            kind = (
                EventKind.SCAN_TIMED_OUT
                if state is CheckoutState.AWAITING_SCAN
                else EventKind.POS_UPDATE_TIMED_OUT
            )
            await self.checkouts.apply(checkout_id, Event(kind), actor="reconciler")
            repaired += 1
        for checkout_id in identifying:
            # Pay now, while the customer token is still valid, without membership.
            event = Event(EventKind.IDENTIFY_TIMED_OUT, reason="customer club step took too long")
            await self.checkouts.apply(checkout_id, event, actor="reconciler")
            repaired += 1
        room = asyncio.Semaphore(POLLS_AT_ONCE)

        async def bounded_poll(checkout_id: str) -> bool:
            async with room:
                return await self.poll(checkout_id)

        results = await asyncio.gather(*(bounded_poll(c) for c in due), return_exceptions=True)
        repaired += sum(1 for r in results if r is True)
        for checkout_id, result in zip(due, results, strict=True):
            if isinstance(result, BaseException):  # one poll's failure must not stop the others
                log.error("reconciler.poll_error", checkout_id=checkout_id, exc_info=result)
        if expired_checkins:
            log.info("reconciler.checkins_expired", count=expired_checkins)
        return repaired

    async def poll(self, checkout_id: str) -> bool:
        """Ask Vipps about one checkout and apply what it says. True if that changed anything."""
        try:
            changed = await self.checkouts.sync_with_vipps(checkout_id, actor="reconciler")
        except VippsError as exc:
            log.warning("reconciler.poll_failed", checkout_id=checkout_id, error=str(exc)[:200])
            changed = False
        # The next poll: every 2 s, slowing to every 10 s after a minute of polls (§7.11).
        await self.ctx.store.schedule_poll(
            checkout_id,
            self.ctx.clock(),
            self.ctx.settings.workers.reconcile_poll_every_seconds,
            slow_after=30,
            slow_every=10.0,
        )
        return changed
