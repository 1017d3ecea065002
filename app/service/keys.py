"""Vipps API keys per sales unit, and which keys cover which MSN.

Where keys come from, most specific first:

1. the sales unit's own keys, stored encrypted in ``vipps_key_sets`` (added and rotated by
   operators: ``vipps-pos keys add|rotate``, ``PUT /api/v1/vipps-keys/{msn}``);
2. partner keys from the settings (``VIPPS_POS_VIPPS__PARTNER_KEYS=true``): one set for every
   sales unit, which Vipps tells apart by ``Merchant-Serial-Number``;
3. the configured keys as the sales-unit keys of ``VIPPS_POS_VIPPS__DEFAULT_MSN``.

:class:`VippsKeys` is the :class:`~app.vipps.credentials.CredentialsProvider` the Vipps client
asks on every call, so it answers from memory: each MSN's keys are kept for
:data:`CACHE_SECONDS` after a read. A rotation here clears this process's entry at once; other
replicas use the previous keys for at most that long — harmless, since Vipps keeps old keys
valid until they are revoked in the portal, which an operator does after rotating.

Invariant: key material never leaves this module except inside a
:class:`~app.vipps.credentials.Credentials` (``SecretStr``); listings, logs and audit entries
show the MSN and a fingerprint only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import structlog
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import SecretBox
from app.models import Till, VippsKeySet
from app.service.audit import append_audit
from app.service.context import utcnow
from app.service.errors import Conflict, NotFound, ServiceError, VippsUnreachable
from app.settings import Settings
from app.vipps.client import VippsClient
from app.vipps.credentials import (
    Credentials,
    NoCredentials,
    StaticCredentials,
    key_value_problem,
)
from app.vipps.errors import VippsAuthError, VippsError, VippsUnavailable

log = structlog.get_logger("app.keys")

CACHE_SECONDS = 30.0
KeySource = Literal["sales_unit", "partner", "configured"]
SaveMode = Literal["add", "rotate", "put"]


class KeysExist(Conflict):
    code = "vipps_keys_exist"

    def __init__(self, msn: str) -> None:
        super().__init__(f"sales unit {msn} already has keys; rotate them instead", msn=msn)


class KeysNotFound(NotFound):
    code = "vipps_keys_not_found"

    def __init__(self, msn: str) -> None:
        super().__init__(f"no stored keys for sales unit {msn}", msn=msn)


class KeysInUse(Conflict):
    code = "vipps_keys_in_use"

    def __init__(self, msn: str, tills: int) -> None:
        super().__init__(
            f"{tills} active till(s) use sales unit {msn} and no other keys cover it; "
            "deactivate them or configure partner keys first",
            msn=msn,
        )


class InvalidKeys(ServiceError):
    """Values that cannot be API keys (they would not even fit in an HTTP header)."""

    status, code, title = 422, "validation_error", "The request is not valid"

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['message']}" for p in problems))
        self.errors = problems


class KeysRejected(ServiceError):
    """Vipps did not accept the keys for this sales unit (401: wrong keys; 403: other MSN)."""

    status, code, title = 422, "vipps_keys_rejected", "Vipps did not accept these keys"


@dataclass(frozen=True)
class KeySetInfo:
    """What may be shown of a key set: never the keys themselves."""

    msn: str | None  # None: partner keys, for every MSN
    source: KeySource
    fingerprint: str
    created_at: datetime | None = None
    rotated_at: datetime | None = None


@dataclass(frozen=True)
class SavedKeys:
    info: KeySetInfo
    created: bool
    verified: bool


class VippsKeys:
    """The keys for each MSN (see module docstring); also the operators' add/rotate/remove."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        secrets: SecretBox,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._secrets = secrets
        self._clock = clock
        self._monotonic = monotonic
        self._cache: dict[str, tuple[Credentials | None, float]] = {}
        self._lock = asyncio.Lock()
        self._vipps: VippsClient | None = None
        configured = settings.vipps.configured_keys
        self._configured = (
            Credentials(*configured, partner=settings.vipps.partner_keys) if configured else None
        )

    # ---- the client's question -----------------------------------------------------------------

    async def credentials_for(self, msn: str) -> Credentials:
        """The keys for ``msn``, from memory when read within :data:`CACHE_SECONDS`."""
        cached = self._cache.get(msn)
        if cached is None or self._monotonic() - cached[1] >= CACHE_SECONDS:
            stored = await self._load(msn)
            self._cache[msn] = (stored, self._monotonic())
        else:
            stored = cached[0]
        found = stored or self._from_settings(msn)
        if found is None:
            raise NoCredentials(msn)
        return found

    def _from_settings(self, msn: str) -> Credentials | None:
        keys = self._configured
        if keys is None:
            return None
        if keys.partner or msn == self._settings.vipps.default_msn:
            return keys
        return None

    async def _load(self, msn: str) -> Credentials | None:
        async with self._sessions() as session:
            row = await session.get(VippsKeySet, msn)
        return self._open(row) if row is not None else None

    def _open(self, row: VippsKeySet) -> Credentials:
        return Credentials(
            SecretStr(self._secrets.decrypt(row.client_id_enc)),
            SecretStr(self._secrets.decrypt(row.client_secret_enc)),
            SecretStr(self._secrets.decrypt(row.subscription_key_enc)),
        )

    async def source_for(self, msn: str) -> KeySource | None:
        """Which keys cover ``msn`` now (read fresh, not from the cache), or None."""
        if await self._load(msn) is not None:
            return "sales_unit"
        keys = self._from_settings(msn)
        if keys is None:
            return None
        return "partner" if keys.partner else "configured"

    # ---- operators ---------------------------------------------------------------------------

    async def list(self) -> list[KeySetInfo]:
        """Every key set we hold: the configured one first, then each sales unit's own."""
        found: list[KeySetInfo] = []
        if self._configured is not None:
            partner = self._configured.partner
            found.append(
                KeySetInfo(
                    msn=None if partner else self._settings.vipps.default_msn,
                    source="partner" if partner else "configured",
                    fingerprint=self._configured.fingerprint(),
                )
            )
        async with self._sessions() as session:
            rows = (await session.execute(select(VippsKeySet).order_by(VippsKeySet.msn))).scalars()
            found.extend(_info(row) for row in rows)
        return found

    def use_client(self, vipps: VippsClient) -> None:
        """The Vipps client new keys are tried with (the service's own, whose keys come from
        here: it is built after this store, so it is attached afterwards)."""
        self._vipps = vipps

    async def save(
        self,
        msn: str,
        *,
        client_id: SecretStr,
        client_secret: SecretStr,
        subscription_key: SecretStr,
        mode: SaveMode,
        verify: bool = True,
        actor: str = "admin",
    ) -> SavedKeys:
        """Store ``msn``'s own keys (``add``: new only; ``rotate``: existing only; ``put``: either).

        With ``verify`` the keys are tried first: an access token is fetched with them and the
        sales unit's QR list read, which Vipps answers with 401 for wrong keys and 403 for keys
        of another sales unit. Nothing is stored unless Vipps accepted them.
        """
        problems = [
            {"field": field, "code": "invalid_format", "message": problem}
            for field, value in (
                ("clientId", client_id),
                ("clientSecret", client_secret),
                ("subscriptionKey", subscription_key),
            )
            if (problem := key_value_problem(value.get_secret_value())) is not None
        ]
        if problems:
            raise InvalidKeys(problems)
        keys = Credentials(client_id, client_secret, subscription_key)
        if verify:
            if self._vipps is None:
                raise ServiceError("no Vipps client to try the keys with; store without verify")
            await self._verify(msn, keys, self._vipps)
        try:
            info, created = await self._store(msn, keys, mode=mode, verified=verify, actor=actor)
        except IntegrityError as exc:  # another replica added keys for this MSN meanwhile
            raise KeysExist(msn) from exc
        self._cache.pop(msn, None)
        log.info(
            "vipps_keys.saved",
            msn=msn,
            fingerprint=info.fingerprint,
            created=created,
            verified=verify,
        )
        return SavedKeys(info, created, verify)

    async def _store(
        self, msn: str, keys: Credentials, *, mode: SaveMode, verified: bool, actor: str
    ) -> tuple[KeySetInfo, bool]:
        now = self._now()
        async with self._lock, self._sessions() as session, session.begin():
            row = await session.get(VippsKeySet, msn, with_for_update=True)
            if row is None and mode == "rotate":
                raise KeysNotFound(msn)
            if row is not None and mode == "add":
                raise KeysExist(msn)
            created = row is None
            if row is None:
                row = VippsKeySet(msn=msn, created_at=now)
                session.add(row)
            else:
                row.rotated_at = now
            previous = row.fingerprint if not created else None
            row.client_id_enc = self._secrets.encrypt(keys.client_id.get_secret_value())
            row.client_secret_enc = self._secrets.encrypt(keys.client_secret.get_secret_value())
            row.subscription_key_enc = self._secrets.encrypt(
                keys.subscription_key.get_secret_value()
            )
            row.fingerprint = keys.fingerprint()
            await append_audit(
                session,
                at=now,
                actor=actor,
                action="vipps_keys.add" if created else "vipps_keys.rotate",
                detail={
                    "msn": msn,
                    "fingerprint": row.fingerprint,
                    "previousFingerprint": previous,
                    "verified": verified,
                },
            )
            return _info(row), created

    async def remove(self, msn: str, *, actor: str = "admin") -> None:
        """Forget ``msn``'s own keys; refused while active tills would be left without keys."""
        now = self._now()
        async with self._lock, self._sessions() as session, session.begin():
            row = await session.get(VippsKeySet, msn, with_for_update=True)
            if row is None:
                raise KeysNotFound(msn)
            if self._from_settings(msn) is None:
                active = await session.scalar(
                    select(func.count())
                    .select_from(Till)
                    .where(Till.msn == msn, Till.status == "ACTIVE")
                )
                if active:
                    raise KeysInUse(msn, int(active))
            fingerprint = row.fingerprint
            await session.delete(row)
            await append_audit(
                session,
                at=now,
                actor=actor,
                action="vipps_keys.remove",
                detail={"msn": msn, "fingerprint": fingerprint},
            )
        self._cache.pop(msn, None)
        log.info("vipps_keys.removed", msn=msn, fingerprint=fingerprint)

    async def _verify(self, msn: str, keys: Credentials, vipps: VippsClient) -> None:
        trial = vipps.with_credentials(StaticCredentials(keys, [msn]))
        try:
            await trial.list_callback_qrs(msn)
        except VippsAuthError as exc:
            reason = (
                f"they are not valid for sales unit {msn}"
                if exc.status == 403
                else "Vipps refused them (client_id, client_secret or subscription key is wrong)"
            )
            raise KeysRejected(
                f"the keys were not stored: {reason}", msn=msn, vippsStatus=exc.status
            ) from exc
        except VippsUnavailable as exc:
            raise VippsUnreachable(
                "Vipps did not answer; try again, or store the keys without verifying"
            ) from exc
        except VippsError as exc:
            raise KeysRejected(
                "the keys were not stored: Vipps answered unexpectedly when they were tried",
                msn=msn,
                vippsStatus=exc.status,
            ) from exc

    def _now(self) -> datetime:
        return self._clock()


def _info(row: VippsKeySet) -> KeySetInfo:
    return KeySetInfo(
        msn=row.msn,
        source="sales_unit",
        fingerprint=row.fingerprint,
        created_at=row.created_at,
        rotated_at=row.rotated_at,
    )
