"""Tills, stores and their merchant callback QR codes (the operator's side).

Registering a till commits it first (QR status ``PENDING``), then creates the QR at Vipps outside
any transaction, then records the outcome — a crash in between leaves a ``PENDING`` till that
:meth:`TillService.sync_qr` (or the drift check) repairs; the PUT is an upsert, so repeating it
is harmless.
"""

from __future__ import annotations

import io
import re
import uuid
from dataclasses import dataclass
from typing import Literal

import segno
import structlog
from sqlalchemy.exc import IntegrityError

from app import repository as repo
from app.crypto import new_api_key
from app.models import Store, Till
from app.notifications import till_key_subject
from app.service.audit import append_audit
from app.service.context import ServiceContext, unit_of_work
from app.service.errors import (
    MsnNotAccessible,
    ServiceError,
    StoreNotFound,
    TillExists,
    TillNotFound,
    VippsRefused,
    VippsUnreachable,
)
from app.vipps.errors import VippsAuthError, VippsError, VippsNotFound, VippsRejected

log = structlog.get_logger("app.tills")
TILL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class NewTill:
    till: Till
    api_key: str  # shown once


class TillService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def upsert_store(
        self,
        store_id: str,
        *,
        name: str | None = None,
        club_policy: str | None = None,
        member_price_hold: bool | None = None,
        member_price_hold_seconds: int | None = None,
        actor: str = "admin",
    ) -> Store:
        now = self.ctx.clock()
        async with unit_of_work(self.ctx) as work:
            store = await repo.get_store(work.session, store_id)
            if store is None:
                store = Store(
                    id=store_id,
                    name=name or store_id,
                    club_policy=club_policy or "off",
                    member_price_hold=bool(member_price_hold),
                    member_price_hold_seconds=member_price_hold_seconds or 20,
                    created_at=now,
                    updated_at=now,
                )
                work.session.add(store)
            else:
                if name is not None:
                    store.name = name
                if club_policy is not None:
                    store.club_policy = club_policy
                if member_price_hold is not None:
                    store.member_price_hold = member_price_hold
                if member_price_hold_seconds is not None:
                    store.member_price_hold_seconds = member_price_hold_seconds
                store.updated_at = now
            await append_audit(
                work.session,
                at=now,
                actor=actor,
                action="store.upsert",
                detail={"store": store_id, "clubPolicy": store.club_policy},
            )
            return store

    async def get_store(self, store_id: str) -> Store:
        async with self.ctx.sessions() as session:
            store = await repo.get_store(session, store_id)
        if store is None:
            raise StoreNotFound(store_id)
        return store

    async def register(
        self,
        till_id: str,
        *,
        store_id: str,
        location_description: str,
        msn: str | None = None,
        actor: str = "admin",
    ) -> NewTill:
        msn = msn or self.ctx.settings.vipps.default_msn
        key_id, api_key, key_hash = new_api_key()
        now = self.ctx.clock()
        try:
            async with unit_of_work(self.ctx) as work:
                if await repo.get_till(work.session, till_id) is not None:
                    raise TillExists(till_id)
                if await repo.get_store(work.session, store_id) is None:
                    work.session.add(
                        Store(
                            id=store_id,
                            name=store_id,
                            club_policy="off",
                            member_price_hold=False,
                            member_price_hold_seconds=20,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                    await work.session.flush()
                till = Till(
                    id=till_id,
                    store_id=store_id,
                    msn=msn,
                    merchant_qr_id=str(uuid.uuid4()),
                    location_description=location_description,
                    api_key_id=key_id,
                    api_key_hash=key_hash,
                    status="ACTIVE",
                    qr_status="PENDING",
                    created_at=now,
                    updated_at=now,
                    version=0,
                )
                work.session.add(till)
                await append_audit(
                    work.session,
                    at=now,
                    actor=actor,
                    action="till.register",
                    till_id=till_id,
                    detail={"store": store_id, "msn": msn, "apiKeyId": key_id},
                )
        except IntegrityError as exc:
            raise TillExists(till_id) from exc
        log.info("till.registered", till_id=till_id, store_id=store_id, msn=msn)
        till = await self.sync_qr(till_id)
        return NewTill(till, api_key)

    async def sync_qr(self, till_id: str) -> Till:
        """Make Vipps hold this till's QR as we do (PUT is an upsert), then fetch its content."""
        till = await self.get(till_id)
        status, content = "SYNCED", till.qr_content
        try:
            await self.ctx.vipps.put_callback_qr(
                till.msn,
                till.merchant_qr_id,
                till.location_description,
                category=self.ctx.settings.vipps.qr_category,
            )
            qr = await self.ctx.vipps.get_callback_qr(till.msn, till.merchant_qr_id)
            content = qr.qr_content or content
        except VippsError as exc:
            status = "FAILED"
            log.warning("till.qr_sync_failed", till_id=till_id, error=str(exc)[:300])
        async with unit_of_work(self.ctx) as work:
            row = await repo.get_till(work.session, till_id)
            assert row is not None
            row.qr_status = status
            row.qr_content = content
            row.updated_at = self.ctx.clock()
            return row

    async def find_by_key_id(self, key_id: str) -> Till | None:
        async with self.ctx.sessions() as session:
            return await repo.get_till_by_key_id(session, key_id)

    async def get(self, till_id: str) -> Till:
        async with self.ctx.sessions() as session:
            till = await repo.get_till(session, till_id)
        if till is None:
            raise TillNotFound(till_id)
        return till

    async def list(self, *, store_id: str | None = None, status: str | None = None) -> list[Till]:
        async with self.ctx.sessions() as session:
            return list(await repo.list_tills(session, store_id=store_id, status=status))

    async def update(
        self, till_id: str, *, location_description: str | None, actor: str = "admin"
    ) -> Till:
        async with unit_of_work(self.ctx) as work:
            till = await repo.lock_till(work.session, till_id)
            if till is None:
                raise TillNotFound(till_id)
            if location_description is not None:
                till.location_description = location_description
                till.qr_status = "PENDING"
            till.updated_at = self.ctx.clock()
            await append_audit(
                work.session,
                at=self.ctx.clock(),
                actor=actor,
                action="till.update",
                till_id=till_id,
                detail={"locationDescription": location_description},
            )
        return await self.sync_qr(till_id)

    async def deactivate(self, till_id: str, *, actor: str = "admin") -> Till:
        """Deactivate and delete the QR at Vipps: a later scan tells the customer "not found"
        instead of leaving them waiting (REFERENCE.md §3.3)."""
        async with unit_of_work(self.ctx) as work:
            till = await repo.lock_till(work.session, till_id)
            if till is None:
                raise TillNotFound(till_id)
            till.status = "INACTIVE"
            till.updated_at = self.ctx.clock()
            # Its key may now only read and cancel (docs/integration.md): end what it holds open.
            await work.revoke(till_key_subject(till.api_key_id))
            await append_audit(
                work.session,
                at=self.ctx.clock(),
                actor=actor,
                action="till.deactivate",
                till_id=till_id,
            )
        try:
            await self.ctx.vipps.delete_callback_qr(till.msn, till.merchant_qr_id)
        except VippsNotFound:
            pass
        except VippsError as exc:
            log.warning("till.qr_delete_failed", till_id=till_id, error=str(exc)[:300])
        return await self.get(till_id)

    async def rotate_api_key(self, till_id: str, *, actor: str = "admin") -> NewTill:
        key_id, api_key, key_hash = new_api_key()
        async with unit_of_work(self.ctx) as work:
            till = await repo.lock_till(work.session, till_id)
            if till is None:
                raise TillNotFound(till_id)
            # The old key stops working at once, on every replica (streams and long-polls too).
            await work.revoke(till_key_subject(till.api_key_id))
            till.api_key_id, till.api_key_hash = key_id, key_hash
            till.updated_at = self.ctx.clock()
            await append_audit(
                work.session,
                at=self.ctx.clock(),
                actor=actor,
                action="till.rotate_key",
                till_id=till_id,
                detail={"apiKeyId": key_id},
            )
        return NewTill(till, api_key)

    async def qr_image(
        self, till_id: str, image_format: Literal["svg", "png"], *, scale: int = 10
    ) -> bytes:
        """The till's QR, rendered from Vipps's ``qrContent`` (the app only accepts Vipps's own
        QR content, so we never invent it)."""
        till = await self.get(till_id)
        content = till.qr_content
        if not content:
            try:
                qr = await self.ctx.vipps.get_callback_qr(till.msn, till.merchant_qr_id)
            except VippsRejected as exc:
                raise VippsRefused(str(exc)[:300]) from exc
            except VippsAuthError as exc:
                if exc.status == 403:
                    # Vipps: "The API keys are not valid for sales unit …" — the till's MSN is
                    # not ours to use; retrying cannot help, so not a 503 (found by schemathesis).
                    raise MsnNotAccessible(
                        "the Vipps credentials do not cover this till's sales unit (MSN)"
                    ) from exc
                raise VippsUnreachable(str(exc)[:300]) from exc
            except VippsError as exc:
                raise VippsUnreachable(str(exc)[:300]) from exc
            content = qr.qr_content
            if not content:
                raise ServiceError("Vipps returned no QR content for this till")
            async with unit_of_work(self.ctx) as work:
                row = await repo.get_till(work.session, till_id)
                assert row is not None
                row.qr_content = content
        code = segno.make(content, error="m")
        buffer = io.BytesIO()
        if image_format == "svg":
            code.save(buffer, kind="svg", scale=scale, border=4, title=till.location_description)
        else:
            code.save(buffer, kind="png", scale=scale, border=4)
        return buffer.getvalue()
