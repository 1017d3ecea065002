"""Tills, stores and their merchant callback QR codes (the operator's side).

Registering a till commits it first (QR status ``PENDING``), then creates the QR at Vipps outside
any transaction, then records the outcome — a crash in between leaves a ``PENDING`` till that
:meth:`TillService.sync_qr` (or the drift check) repairs; the PUT is an upsert, so repeating it
is harmless.
"""

from __future__ import annotations

import io
import re
import time
import uuid
from dataclasses import dataclass
from typing import Literal

import segno
import structlog
from sqlalchemy.exc import IntegrityError

from app import repository as repo
from app.crypto import new_api_key
from app.domain.statuses import ClubPolicy, QrStatus, TillStatus
from app.models import Store, Till
from app.notifications import ALL_SUBJECTS, till_key_subject
from app.service.audit import GENESIS, append_audit
from app.service.context import ServiceContext, unit_of_work
from app.service.errors import (
    InvalidCheckout,
    MsnNotCovered,
    StoreNotFound,
    TillExists,
    TillNotFound,
    VippsRefused,
    vipps_errors_as_problems,
)
from app.service.keys import VippsKeys
from app.vipps.errors import VippsAuthError, VippsError, VippsNotFound

log = structlog.get_logger("app.tills")
TILL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MSN = re.compile(r"^[0-9]{4,6}$")
LOCATION_MAX_LENGTH = 36  # Vipps's limit for a merchant callback QR's locationDescription


@dataclass(frozen=True)
class FieldError:
    field: str
    code: str
    message: str


def till_field_errors(
    *,
    till_id: str | None = None,
    store_id: str | None = None,
    location_description: str | None = None,
    msn: str | None = None,
) -> list[FieldError]:
    """What Vipps or our schema would refuse about a till, found before anything is written."""
    errors: list[FieldError] = []
    for field, value in (("tillId", till_id), ("storeId", store_id)):
        if value is not None and not TILL_ID.fullmatch(value):
            errors.append(FieldError(field, "invalid_format", "1-64 letters, digits, '-' or '_'"))
    if location_description is not None:
        if not location_description.strip():
            errors.append(FieldError("locationDescription", "blank", "must not be empty"))
        elif len(location_description) > LOCATION_MAX_LENGTH:
            errors.append(
                FieldError(
                    "locationDescription",
                    "too_long",
                    f"must be at most {LOCATION_MAX_LENGTH} characters "
                    f"(Vipps shows it in the app), not {len(location_description)}",
                )
            )
    if msn is not None and not MSN.fullmatch(msn):
        errors.append(FieldError("msn", "invalid_format", "a merchant serial number: 4-6 digits"))
    return errors


def _refuse_invalid(errors: list[FieldError]) -> None:
    if errors:
        raise InvalidCheckout(errors)


@dataclass(frozen=True)
class NewTill:
    till: Till
    api_key: str  # shown once
    qr_error: str | None = None  # why the QR could not be created at Vipps (till saved)


@dataclass(frozen=True)
class TillCredential:
    """What authenticating a till's API key needs to know of the till."""

    till_id: str
    key_id: str
    key_hash: str
    active: bool


# An unknown key id is remembered briefly too, so guessing costs no database read per guess; a
# newly issued key cannot be among them (key ids are random and never guessed before issue).
_UNKNOWN_KEY_SECONDS = 5.0


class TillService:
    def __init__(self, ctx: ServiceContext, keys: VippsKeys) -> None:
        self.ctx = ctx
        self.keys = keys
        # key id -> (monotonic expiry, credential or None for an unknown key id)
        self._credentials: dict[str, tuple[float, TillCredential | None]] = {}
        self._revocations = 0  # revocations heard so far: a read older than one is not cached
        ctx.hub.on_revocation(self._forget_revoked)

    async def credential(self, key_id: str, *, fresh: bool = False) -> TillCredential | None:
        """The till holding API key ``key_id``, cached for ``till_auth_cache_seconds``.

        A rotation or deactivation anywhere reaches every replica's cache at once
        (``ChangeHub.revoke``, over LISTEN/NOTIFY), and a read that was under way when a
        revocation arrived is not cached. The expiry bounds how long a cached key could outlive
        a revocation whose notification was lost with the listening connection (which also
        clears the cache when it reconnects). ``fresh`` asks the database regardless.
        """
        now = time.monotonic()
        cached = self._credentials.get(key_id)
        if cached is not None and cached[0] > now and not fresh:
            return cached[1]
        revocations = self._revocations
        async with self.ctx.sessions() as session:
            till = await repo.get_till_by_key_id(session, key_id)
        credential = (
            TillCredential(
                till.id, till.api_key_id, till.api_key_hash, till.status is TillStatus.ACTIVE
            )
            if till is not None
            else None
        )
        lifetime = (
            self.ctx.settings.security.till_auth_cache_seconds
            if credential is not None
            else _UNKNOWN_KEY_SECONDS
        )
        if len(self._credentials) > 100_000:  # a flood of guesses: start over
            self._credentials.clear()
        if revocations == self._revocations:  # a revocation meanwhile may concern this read
            self._credentials[key_id] = (now + lifetime, credential)
        return credential

    def _forget_revoked(self, subject: str) -> None:
        """A revocation heard (here or from another replica): drop that key's cached credential
        (:data:`ALL_SUBJECTS`: every one)."""
        self._revocations += 1
        if subject == ALL_SUBJECTS:
            self._credentials.clear()
            return
        for key_id in list(self._credentials):
            if till_key_subject(key_id) == subject:
                del self._credentials[key_id]

    async def upsert_store(
        self,
        store_id: str,
        *,
        name: str | None = None,
        club_policy: str | None = None,
        member_price_hold: bool | None = None,
        member_price_hold_seconds: int | None = None,
        display_language: str | None = None,
        actor: str = "admin",
    ) -> Store:
        """Create or change a store; ``None`` leaves a setting as it is. ``display_language``
        ``"auto"`` clears it (the display follows the browser)."""
        now = self.ctx.clock()
        language = None if display_language == "auto" else display_language
        async with unit_of_work(self.ctx) as work:
            store = await repo.get_store(work.session, store_id)
            if store is None:
                store = Store(
                    id=store_id,
                    name=name or store_id,
                    club_policy=ClubPolicy(club_policy or ClubPolicy.OFF),
                    member_price_hold=bool(member_price_hold),
                    member_price_hold_seconds=member_price_hold_seconds or 20,
                    display_language=language,
                    created_at=now,
                    updated_at=now,
                )
                work.session.add(store)
            else:
                if display_language is not None:
                    store.display_language = language
                if name is not None:
                    store.name = name
                if club_policy is not None:
                    store.club_policy = ClubPolicy(club_policy)
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
        _refuse_invalid(
            till_field_errors(
                till_id=till_id,
                store_id=store_id,
                location_description=location_description,
                msn=msn,
            )
        )
        if await self.keys.source_for(msn) is None:
            # Every call for this till would fail at Vipps (403) or never leave (no keys):
            # refuse now, naming what to add, instead of registering a till that cannot sell.
            raise MsnNotCovered(msn)
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
                            club_policy=ClubPolicy.OFF,
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
                    status=TillStatus.ACTIVE,
                    qr_status=QrStatus.PENDING,
                    created_at=now,
                    updated_at=now,
                    version=0,
                    revision=0,
                    audit_seq=0,
                    audit_head=GENESIS,
                )
                work.session.add(till)
                await append_audit(
                    work.session,
                    at=now,
                    actor=actor,
                    action="till.register",
                    till=till,
                    detail={"store": store_id, "msn": msn, "apiKeyId": key_id},
                )
        except IntegrityError as exc:
            raise TillExists(till_id) from exc
        log.info("till.registered", till_id=till_id, store_id=store_id, msn=msn)
        till, error = await self.sync_qr_reporting(till_id)
        return NewTill(till, api_key, error)

    @vipps_errors_as_problems
    async def check_vipps_access(self, msn: str | None = None) -> None:
        """Ask Vipps for the MSN's QR list: proves our credentials and access to the sales unit
        before an operator command writes anything (errors become problems with a code)."""
        await self.ctx.vipps.list_callback_qrs(msn or self.ctx.settings.vipps.default_msn)

    async def sync_qr(self, till_id: str) -> Till:
        """Make Vipps hold this till's QR as we do (PUT is an upsert), then fetch its content."""
        till, _ = await self.sync_qr_reporting(till_id)
        return till

    async def sync_qr_reporting(self, till_id: str) -> tuple[Till, str | None]:
        """:meth:`sync_qr`, also saying why it failed (``None`` when the QR is in sync)."""
        till = await self.get(till_id)
        status, content, error = QrStatus.SYNCED, till.qr_content, None
        try:
            await self.ctx.vipps.put_callback_qr(
                till.msn,
                till.merchant_qr_id,
                till.location_description,
                category=self.ctx.settings.vipps.qr_category,
            )
            qr = await self.ctx.vipps.get_callback_qr(till.msn, till.merchant_qr_id)
            content = qr.qr_content or content
        except (VippsError, ValueError) as exc:  # ValueError: refused before sending
            status, error = QrStatus.FAILED, _vipps_reason(exc)
            log.warning("till.qr_sync_failed", till_id=till_id, error=error)
        async with unit_of_work(self.ctx) as work:
            row = await repo.get_till(work.session, till_id)
            assert row is not None
            row.qr_status = status
            row.qr_content = content
            row.updated_at = self.ctx.clock()
            return row, error

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
        _refuse_invalid(till_field_errors(location_description=location_description))
        async with unit_of_work(self.ctx) as work:
            till = await repo.lock_till(work.session, till_id)
            if till is None:
                raise TillNotFound(till_id)
            if location_description is not None:
                till.location_description = location_description
                till.qr_status = QrStatus.PENDING
            till.updated_at = self.ctx.clock()
            await append_audit(
                work.session,
                at=self.ctx.clock(),
                actor=actor,
                action="till.update",
                till=till,
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
            till.status = TillStatus.INACTIVE
            till.updated_at = self.ctx.clock()
            # Its key may now only read and cancel (docs/integration.md): end what it holds open.
            await work.revoke(till_key_subject(till.api_key_id))
            await append_audit(
                work.session,
                at=self.ctx.clock(),
                actor=actor,
                action="till.deactivate",
                till=till,
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
                till=till,
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
            # Vipps's errors become the operator problems every such call gives: 403 the MSN is
            # not ours, 401 our keys are refused (422, not a 503 that invites retries).
            fetch = vipps_errors_as_problems(self.ctx.vipps.get_callback_qr)
            qr = await fetch(till.msn, till.merchant_qr_id)
            content = qr.qr_content
            if not content:
                # Vipps's answer, not the caller's request, is at fault.
                raise VippsRefused("Vipps returned no QR content for this till")
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


def _vipps_reason(exc: Exception) -> str:
    """One line for an operator: what Vipps (or our client, before sending) said."""
    if isinstance(exc, VippsAuthError):
        return (
            f"Vipps refused our credentials (HTTP {exc.status}): check "
            "VIPPS_POS_VIPPS__CLIENT_ID, __CLIENT_SECRET, __SUBSCRIPTION_KEY and the MSN"
        )
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
