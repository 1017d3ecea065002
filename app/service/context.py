"""What every service function needs, built once by the app's lifespan (or by a test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import SecretBox
from app.models import OutboxCommand
from app.notifications import CHANNEL, ChangeHub
from app.observability.metrics import Metrics
from app.settings import Settings
from app.vipps.client import VippsClient


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ServiceContext:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    vipps: VippsClient
    secrets: SecretBox
    hub: ChangeHub
    metrics: Metrics
    clock: Callable[[], datetime] = utcnow
    # Set while this process runs the outbox (the app's lifespan, with workers enabled): a
    # command decided here is claimed in the deciding transaction and handed to it right after
    # the commit, instead of waiting for a worker's next claim. ``None``: the workers' claim
    # loop picks the command up (the operator CLI, tests without workers).
    dispatch_soon: Callable[[Sequence[OutboxCommand]], None] | None = None

    @property
    def is_postgres(self) -> bool:
        return self.settings.database.is_postgres


@dataclass
class Work:
    """One transaction plus what to announce once it has committed."""

    session: AsyncSession
    is_postgres: bool
    changed: set[tuple[str, str | None]] = field(default_factory=set)
    outbox_added: bool = False
    inbox_added: bool = False
    # Commands claimed in this transaction (IN_FLIGHT, leased) for ``ServiceContext.dispatch_soon``.
    dispatch_now: list[OutboxCommand] = field(default_factory=list)
    # Credentials this transaction revokes (app/notifications.py, revocations).
    revoked: set[str] = field(default_factory=set)

    async def announce(self, till_id: str, checkout_id: str | None) -> None:
        """Mark a visible change; on Postgres other replicas hear of it when this commits."""
        if (till_id, checkout_id) in self.changed:
            return
        self.changed.add((till_id, checkout_id))
        if self.is_postgres:
            await self.session.execute(
                select(func.pg_notify(CHANNEL, ChangeHub.payload(till_id, checkout_id)))
            )

    async def revoke(self, subject: str) -> None:
        """Revoke a credential (``till_key_subject``/``admin_key_subject``) when this commits:
        on Postgres every replica hears it through the same NOTIFY channel as changes."""
        if subject in self.revoked:
            return
        self.revoked.add(subject)
        if self.is_postgres:
            await self.session.execute(
                select(func.pg_notify(CHANNEL, ChangeHub.revocation_payload(subject)))
            )


@asynccontextmanager
async def unit_of_work(ctx: ServiceContext) -> AsyncIterator[Work]:
    """Commit on success, roll back on error; wake local waiters and workers after the commit."""
    async with ctx.sessions() as session:
        async with session.begin():
            work = Work(session, ctx.is_postgres)
            yield work
        for till_id, checkout_id in work.changed:
            ctx.hub.signal_change(till_id, checkout_id)
        if work.revoked:
            ctx.hub.revoke(*work.revoked)
        if work.dispatch_now and ctx.dispatch_soon is not None:
            ctx.dispatch_soon(work.dispatch_now)
        if work.outbox_added:
            ctx.hub.outbox_wakeup.set()
        if work.inbox_added:
            ctx.hub.inbox_wakeup.set()
