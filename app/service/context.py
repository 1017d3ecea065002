"""What every service function needs, built once by the app's lifespan (or by a test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import SecretBox
from app.notifications import CHANNEL, ChangeHub
from app.observability.metrics import Metrics
from app.persistence.records import CommandRecord
from app.persistence.store import CheckoutStore
from app.settings import Settings
from app.vipps.client import VippsClient


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ServiceContext:
    settings: Settings
    # Operator paths (listings, reports, registrations): the ORM in explicit units of work.
    sessions: async_sessionmaker[AsyncSession]
    # The hot paths: checkouts, their commands and webhooks (load, decide, save).
    store: CheckoutStore
    vipps: VippsClient
    secrets: SecretBox
    hub: ChangeHub
    metrics: Metrics
    clock: Callable[[], datetime] = utcnow
    # Set while this process runs the outbox (the app's lifespan, with workers enabled): a
    # command decided here is written already claimed and handed to it right after the save,
    # instead of waiting for a worker's next claim. ``None``: the workers' claim loop picks the
    # command up (the operator CLI, tests without workers).
    dispatch_soon: Callable[[Sequence[CommandRecord]], None] | None = None

    @property
    def is_postgres(self) -> bool:
        return self.settings.database.is_postgres


@dataclass
class Work:
    """One ORM transaction of an operator path, plus the revocations to announce once it has
    committed. (Checkout changes are announced by the hot-path store: app/persistence.)"""

    session: AsyncSession
    is_postgres: bool
    # Credentials this transaction revokes (app/notifications.py, revocations).
    revoked: set[str] = field(default_factory=set)

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
    """Commit on success, roll back on error; apply revocations locally after the commit."""
    async with ctx.sessions() as session:
        async with session.begin():
            work = Work(session, ctx.is_postgres)
            yield work
        if work.revoked:
            ctx.hub.revoke(*work.revoked)
