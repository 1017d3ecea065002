"""The inbox processor: applies stored webhooks, one per transaction, oldest first.

Events that touch different checkouts are independent, so a claimed batch is processed as
concurrent *lanes*: one lane per payment reference (its events keep their order) and one per
QR code for check-ins (scans at one till keep theirs); at most :data:`PARALLEL_LANES` at a time.
Events of one till still serialise on the till's row lock inside each transaction.

A failing event is marked ``FAILED`` with its error and retried later with backoff; it never
blocks the events behind it. Claims are leases (``next_attempt_at`` moved forward), so a crash
mid-event leaves it to be picked up again — processing is idempotent because the state machine
ignores news it already applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import timedelta

import structlog

from app.persistence.records import InboxRecord
from app.service.context import ServiceContext
from app.service.intake import WebhookIntake

log = structlog.get_logger("app.inbox")
LEASE = timedelta(seconds=30)
# One event at a time left check-ins queueing behind each other at 20 scans/s (benchmark 2).
PARALLEL_LANES = 8


class InboxWorker:
    def __init__(self, ctx: ServiceContext, intake: WebhookIntake) -> None:
        self.ctx = ctx
        self.intake = intake

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Cleared before the claim, not after: a wake-up for a row committed while the claim
            # ran stays set, so it is not left waiting for the next poll.
            self.ctx.hub.inbox_wakeup.clear()
            try:
                handled = await self.run_once()
            except Exception:
                log.exception("inbox.loop_error")
                handled = 0
            if handled:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.ctx.hub.inbox_wakeup.wait(),
                    self.ctx.settings.workers.outbox_poll_interval_seconds,
                )

    async def run_once(self) -> int:
        claimed = await self.ctx.store.claim_inbox(
            self.ctx.clock(), LEASE, self.ctx.settings.workers.outbox_batch_size
        )
        lanes: dict[str, list[InboxRecord]] = {}
        for row in claimed:
            lanes.setdefault(self._lane(row), []).append(row)
        room = asyncio.Semaphore(PARALLEL_LANES)

        async def run_lane(rows: list[InboxRecord]) -> None:
            async with room:
                for row in rows:
                    await self._process_one(row)

        await asyncio.gather(*(run_lane(rows) for rows in lanes.values()))
        return len(claimed)

    async def _process_one(self, row: InboxRecord) -> None:
        try:
            await self.intake.process_stored(self.intake.stored_of(row))
        except Exception as exc:
            log.warning("inbox.event_failed", inbox_id=row.id, exc_info=True)
            await self.intake.record_failure(row.id, exc)

    def _lane(self, row: InboxRecord) -> str:
        """Events that must apply in arrival order share a lane (see the module docstring)."""
        if row.reference:
            return f"{row.msn}|reference|{row.reference}"
        try:
            text = self.ctx.secrets.decrypt(row.body) if row.body_encrypted else row.body
            payload = json.loads(text)
            qr_id = payload.get("merchantQrId") if isinstance(payload, dict) else None
        except Exception:  # unreadable: processing records the failure, in a lane of its own
            qr_id = None
        return f"{row.msn}|qr|{qr_id}" if qr_id else f"event|{row.id}"
