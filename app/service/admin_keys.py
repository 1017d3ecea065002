"""Named admin keys with roles: who may operate tills, who may move money, who may read metrics.

Roles (what each allows is enforced in one place, ``app/api/deps.py``, and listed in
docs/operations.md):

* ``operator`` — tills (register, change, deactivate, new API key), QR codes and display tokens,
  stores, webhooks, members, the inbox, reports, drift, the audit check, re-sync; reading and
  cancelling checkouts; /metrics.
* ``money`` — capture and refund on any till (and ringing up a sale there); reading and
  cancelling checkouts.
* ``monitor`` — /metrics (and the API description when it is behind a key) only.

Keys are made and revoked with the CLI (``vipps-pos admin-keys create|list|revoke``), which needs
database access, not a key. A key is ``vpa_<id>_<secret>``; only the SHA-256 of it is stored. The
bootstrap key from the settings (``VIPPS_POS_SECURITY__ADMIN_API_KEY``) has every role and acts
as ``admin`` in the audit trail; a named key acts as ``admin:<name>/<id>``.

Authentication reads the key's row at most once per :data:`CACHE_SECONDS` per key id (an
unknown id is remembered as unknown for as long), so operator traffic adds no statement per
request. Revoking a key revokes ``admin-key:<id>`` (app/notifications.py): every replica drops
the cached row at once and ends the streams and long-polls opened with the key.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import structlog
from sqlalchemy import select

from app.crypto import ADMIN_KEY_PREFIX, api_key_id, api_key_matches, new_api_key
from app.models import AdminKey
from app.notifications import ALL_SUBJECTS, admin_key_subject
from app.service.audit import append_audit
from app.service.context import ServiceContext, unit_of_work
from app.service.errors import ServiceError

log = structlog.get_logger("app.admin_keys")
CACHE_SECONDS = 5.0
_SUBJECT_PREFIX = admin_key_subject("")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,39}$")


class Role(StrEnum):
    OPERATOR = "operator"
    MONEY = "money"
    MONITOR = "monitor"


ALL_ROLES = frozenset(Role)


class AdminKeyInvalid(ServiceError):
    status, code, title = 422, "validation_error", "Invalid admin key request"


class AdminKeyExists(ServiceError):
    status, code, title = 409, "admin_key_exists", "An active admin key has this name"


class AdminKeyNotFound(ServiceError):
    status, code, title = 404, "admin_key_not_found", "No such active admin key"


@dataclass(frozen=True)
class AdminKeyInfo:
    id: str
    name: str
    roles: frozenset[Role]
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: AdminKey) -> AdminKeyInfo:
        return cls(
            id=row.id,
            name=row.name,
            roles=parse_roles(row.roles.split(",")),
            created_at=row.created_at,
            revoked_at=row.revoked_at,
        )


@dataclass(frozen=True)
class NewAdminKey:
    info: AdminKeyInfo
    key: str  # shown once


def parse_roles(names: Iterable[str]) -> frozenset[Role]:
    roles = set()
    for name in names:
        text = name.strip().lower()
        if not text:
            continue
        try:
            roles.add(Role(text))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise AdminKeyInvalid(f"unknown role {text!r} (roles: {known})") from None
    return frozenset(roles)


class AdminKeyService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        # key id -> (monotonic expiry, stored hash or None for "no such active key", info)
        self._cache: dict[str, tuple[float, str | None, AdminKeyInfo | None]] = {}
        # Bumped by every revocation: a read that started before one is not cached after it.
        self._generation = 0
        ctx.hub.on_revocation(self._forget)

    def _forget(self, subject: str) -> None:
        self._generation += 1
        if subject == ALL_SUBJECTS:
            self._cache.clear()
        elif subject.startswith(_SUBJECT_PREFIX):
            self._cache.pop(subject.removeprefix(_SUBJECT_PREFIX), None)

    async def create(self, name: str, roles: Iterable[str], *, actor: str = "cli") -> NewAdminKey:
        if not NAME.fullmatch(name):
            raise AdminKeyInvalid("name: 1-40 letters, digits, '_', '.', '@' or '-'")
        chosen = parse_roles(roles)
        if not chosen:
            raise AdminKeyInvalid("at least one role is required")
        key_id, key, key_hash = new_api_key(ADMIN_KEY_PREFIX)
        now = self.ctx.clock()
        row = AdminKey(
            id=key_id,
            name=name,
            roles=",".join(sorted(r.value for r in chosen)),
            key_hash=key_hash,
            created_at=now,
            revoked_at=None,
        )
        async with unit_of_work(self.ctx) as work:
            existing = await work.session.scalar(
                select(AdminKey).where(AdminKey.name == name, AdminKey.revoked_at.is_(None))
            )
            if existing is not None:
                raise AdminKeyExists(f"an active admin key is named {name}; revoke it first")
            work.session.add(row)
            await append_audit(
                work.session,
                at=now,
                actor=actor,
                action="admin_key.create",
                detail={"keyId": key_id, "name": name, "roles": row.roles},
            )
        log.info("admin_key.created", key_id=key_id, name=name, roles=row.roles)
        return NewAdminKey(AdminKeyInfo.of(row), key)

    async def revoke(self, name_or_id: str, *, actor: str = "cli") -> AdminKeyInfo:
        """Revoke the active key with this name or id; it stops working on every replica at
        once (see the module docstring)."""
        async with unit_of_work(self.ctx) as work:
            row = await work.session.scalar(
                select(AdminKey)
                .where(
                    (AdminKey.name == name_or_id) | (AdminKey.id == name_or_id),
                    AdminKey.revoked_at.is_(None),
                )
                .with_for_update()
            )
            if row is None:
                raise AdminKeyNotFound(f"no active admin key named {name_or_id}")
            row.revoked_at = self.ctx.clock()
            await work.revoke(admin_key_subject(row.id))
            await append_audit(
                work.session,
                at=row.revoked_at,
                actor=actor,
                action="admin_key.revoke",
                detail={"keyId": row.id, "name": row.name},
            )
        log.info("admin_key.revoked", key_id=row.id, name=row.name)
        return AdminKeyInfo.of(row)

    async def list(self, *, include_revoked: bool = False) -> list[AdminKeyInfo]:
        query = select(AdminKey).order_by(AdminKey.created_at, AdminKey.id)
        if not include_revoked:
            query = query.where(AdminKey.revoked_at.is_(None))
        async with self.ctx.sessions() as session:
            return [AdminKeyInfo.of(row) for row in (await session.scalars(query)).all()]

    async def authenticate(self, key: str) -> AdminKeyInfo | None:
        """The active key ``key`` is, or ``None``; its row is read at most once per
        :data:`CACHE_SECONDS` (revocations clear the cache at once)."""
        key_id = api_key_id(key, ADMIN_KEY_PREFIX)
        if key_id is None:
            return None
        stored_hash, info = await self._lookup(key_id)
        if stored_hash is None or info is None or not api_key_matches(key, stored_hash):
            return None
        return info

    async def is_active(self, key_id: str) -> bool:
        """Whether the key is still active, asking the database (used after a revocation)."""
        self._cache.pop(key_id, None)
        stored_hash, _ = await self._lookup(key_id)
        return stored_hash is not None

    async def _lookup(self, key_id: str) -> tuple[str | None, AdminKeyInfo | None]:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        generation = self._generation
        async with self.ctx.sessions() as session:
            row = await session.scalar(
                select(AdminKey).where(AdminKey.id == key_id, AdminKey.revoked_at.is_(None))
            )
        entry = (
            (now + CACHE_SECONDS, row.key_hash, AdminKeyInfo.of(row))
            if row is not None
            else (now + CACHE_SECONDS, None, None)
        )
        if generation == self._generation:
            if len(self._cache) > 10_000:  # ids are the caller's to choose: bound the memory
                self._cache.clear()
            self._cache[key_id] = entry
        return entry[1], entry[2]
