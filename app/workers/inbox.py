"""The inbox processor: applies stored webhooks, one per transaction, oldest first.

A failing event is marked ``FAILED`` with its error and retried later with backoff; it never
blocks the events behind it. Claims are leases (``next_attempt_at`` moved forward), so a crash
mid-event leaves it to be picked up again — processing is idempotent because the state machine
ignores news it already applied.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import structlog

from app import repository as repo
from app.service.context import ServiceContext, unit_of_work
from app.service.intake import WebhookIntake

log = structlog.get_logger("app.inbox")
LEASE = timedelta(seconds=30)


class InboxWorker:
    def __init__(self, ctx: ServiceContext, intake: WebhookIntake) -> None:
        self.ctx = ctx
        self.intake = intake

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                handled = await self.run_once()
            except Exception:
                log.exception("inbox.loop_error")
                handled = 0
            if handled:
                continue
            self.ctx.hub.inbox_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.ctx.hub.inbox_wakeup.wait(),
                    self.ctx.settings.workers.outbox_poll_interval_seconds,
                )

    async def run_once(self) -> int:
        async with unit_of_work(self.ctx) as work:
            claimed = await repo.claim_inbox(
                work.session, self.ctx.clock(), LEASE, self.ctx.settings.workers.outbox_batch_size
            )
            ids = [row.id for row in claimed]
        for inbox_id in ids:
            try:
                await self.intake.process(inbox_id)
            except Exception as exc:
                log.warning("inbox.event_failed", inbox_id=inbox_id, exc_info=True)
                await self.intake.record_failure(inbox_id, exc)
        return len(ids)
