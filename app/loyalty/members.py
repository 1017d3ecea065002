"""Where members live: our own members table, or a chain's loyalty system over HTTP.

:class:`MemberDirectory` is the seam a chain plugs its loyalty system into. The club service only
ever asks two things: "who is the member with this phone number?" and "make this consenting
customer a member". Both implementations keep these invariants:

* The phone number (an MSISDN, digits with country code, no ``+``) is never logged in full and
  never put into a URL (URLs end up in access logs); it travels in request bodies only.
* :meth:`MemberDirectory.enroll` is idempotent per Vipps ``sub``: enrolling the same customer
  twice (a retried call, two tills at once) returns the same member.
* Failures raise :class:`MemberDirectoryUnavailable`; the caller lets the sale go on without
  membership and records why.

The HTTP contract a chain's loyalty system implements (JSON, ``Authorization: Bearer <key>``):

``POST {base}/members/search`` ``{"msisdn": "4712345678"}``
    ``200 {"memberId": "...", "name": "..."?}`` for a member, ``404`` for none.
``POST {base}/members`` ``{"msisdn", "vippsSub", "name"?, "email"?, "storeId"?}``
    with ``Idempotency-Key: enroll-<vippsSub>``; ``200``/``201 {"memberId", "name"?}``. An
    existing member with that number or ``sub`` is answered as success, not as a conflict.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import SecretBox
from app.models import Member
from app.observability.pii import mask_phone
from app.settings import ClubSettings

log = structlog.get_logger("app.loyalty")


@dataclass(frozen=True)
class MemberRecord:
    """A member as the till may see it: an id and a display name, never the phone number."""

    id: str
    name: str | None = None


@dataclass(frozen=True)
class NewMember:
    """A customer who consented to join, as Vipps Login reported them (REFERENCE.md §8.3)."""

    msisdn: str
    vipps_sub: str
    name: str | None
    email: str | None
    store_id: str | None

    def __repr__(self) -> str:
        return f"NewMember(msisdn={mask_phone(self.msisdn)!r}, store_id={self.store_id!r})"


class MemberDirectoryUnavailable(Exception):
    """The directory could not answer. The message carries no personal data."""


class MemberDirectory(Protocol):
    async def find_by_phone(self, msisdn: str) -> MemberRecord | None:
        """The member with this phone number, or ``None``."""
        ...

    async def enroll(self, member: NewMember) -> MemberRecord:
        """Make ``member`` a member; idempotent per ``vipps_sub`` (see the module docstring)."""
        ...

    async def aclose(self) -> None:
        """Release what the directory holds (connections); called once at shutdown."""
        ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DatabaseMemberDirectory:
    """Members in this service's ``members`` table.

    A phone number is found through its keyed hash (:meth:`SecretBox.lookup_hash`); the number
    itself is stored only encrypted. ``vipps_sub`` and ``phone_hash`` are unique, so two
    concurrent enrollments of one customer end in one row: the loser of the race reads the
    winner's row.

    Encryption-key rotation ("NEW,OLD"): every lookup tries the number's hash under each
    configured key, and a member found under an older key's hash only is moved to the current
    key (hash and ciphertext) on the way, so a member stays findable and a second enrollment
    finds the first instead of adding a row. ``vipps-pos encryption-keys rotate`` moves every
    row at once (and merges duplicates left by versions that looked under the first key only);
    after it the old key can be dropped.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        secrets: SecretBox,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._sessions = sessions
        self._secrets = secrets
        self._clock = clock

    async def find_by_phone(self, msisdn: str) -> MemberRecord | None:
        hashes = self._secrets.lookup_hashes(msisdn)
        async with self._sessions() as session:
            members = (
                await session.scalars(select(Member).where(Member.phone_hash.in_(hashes)))
            ).all()
        if len(members) == 1 and members[0].phone_hash != hashes[0]:
            # Found under a rotated-out key only: move it to the current one (a write only then).
            async with self._sessions() as session, session.begin():
                await self._by_phone(session, msisdn)
        if not members:
            return None
        member = _earliest(members)
        return MemberRecord(member.id, member.name)

    def _rehash(self, row: Member, msisdn: str) -> None:
        row.phone_hash = self._secrets.lookup_hash(msisdn)
        row.phone_enc = self._secrets.encrypt(msisdn)

    async def _by_phone(self, session: AsyncSession, msisdn: str) -> Member | None:
        """The member with this number under any configured key's hash (locked), moved to the
        current key's hash unless another row already holds it: such duplicates, left by
        versions that looked under the first key only, are merged by ``vipps-pos keys
        rotate``."""
        hashes = self._secrets.lookup_hashes(msisdn)
        members = (
            await session.scalars(
                select(Member).where(Member.phone_hash.in_(hashes)).with_for_update()
            )
        ).all()
        if not members:
            return None
        member = _earliest(members)
        if len(members) == 1 and member.phone_hash != hashes[0]:
            self._rehash(member, msisdn)
        return member

    async def enroll(self, member: NewMember) -> MemberRecord:
        try:
            return await self._enroll_once(member)
        except IntegrityError:
            # A concurrent enrollment of the same number or sub committed first: use its row.
            existing = await self._existing(member)
            if existing is None:
                raise
            return existing

    async def add(
        self, msisdn: str, *, name: str | None, store_id: str | None
    ) -> tuple[MemberRecord, bool]:
        """Register a member by phone number (operators; no Vipps login). Returns the member and
        whether it is new; an existing member with that number is returned unchanged."""
        async with self._sessions() as session, session.begin():
            existing = await self._by_phone(session, msisdn)
            if existing is not None:
                return MemberRecord(existing.id, existing.name), False
            row = Member(
                id=str(uuid.uuid4()),
                phone_hash=self._secrets.lookup_hash(msisdn),
                phone_enc=self._secrets.encrypt(msisdn),
                vipps_sub=None,
                name=name,
                store_id=store_id,
                enrolled_at=self._clock(),
            )
            session.add(row)
        return MemberRecord(row.id, row.name), True

    async def aclose(self) -> None:
        """Nothing to release: the sessions belong to the application."""

    async def get(self, member_id: str) -> Member | None:
        async with self._sessions() as session:
            return await session.get(Member, member_id)

    async def remove(self, member_id: str) -> bool:
        """Forget a member (the customer left the club). True if there was one."""
        async with self._sessions() as session, session.begin():
            row = await session.get(Member, member_id)
            if row is None:
                return False
            await session.delete(row)
        return True

    async def _enroll_once(self, member: NewMember) -> MemberRecord:
        phone_hash = self._secrets.lookup_hash(member.msisdn)
        async with self._sessions() as session, session.begin():
            by_sub = await session.scalar(
                select(Member).where(Member.vipps_sub == member.vipps_sub)
            )
            if by_sub is not None:
                if by_sub.phone_hash != phone_hash:
                    # The same Vipps user with a new number (follow the number), or the same
                    # number hashed under a rotated-out key (move it to the current key).
                    self._rehash(by_sub, member.msisdn)
                return MemberRecord(by_sub.id, by_sub.name)
            by_phone = await self._by_phone(session, member.msisdn)
            if by_phone is not None:
                # Registered earlier without a login (e.g. by an operator): link it to Vipps.
                by_phone.vipps_sub = member.vipps_sub
                by_phone.name = by_phone.name or member.name
                return MemberRecord(by_phone.id, by_phone.name)
            row = Member(
                id=str(uuid.uuid4()),
                phone_hash=phone_hash,
                phone_enc=self._secrets.encrypt(member.msisdn),
                vipps_sub=member.vipps_sub,
                name=member.name,
                store_id=member.store_id,
                enrolled_at=self._clock(),
            )
            session.add(row)
        return MemberRecord(row.id, row.name)

    async def _existing(self, member: NewMember) -> MemberRecord | None:
        hashes = self._secrets.lookup_hashes(member.msisdn)
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(Member).where(
                        (Member.vipps_sub == member.vipps_sub) | Member.phone_hash.in_(hashes)
                    )
                )
            ).all()
        if not rows:
            return None
        row = _earliest(rows)
        return MemberRecord(row.id, row.name)


def _earliest(members: Sequence[Member]) -> Member:
    """Of several rows for one customer (duplicates from before key rotation was handled), the
    one enrolled first: the member id tills have seen longest."""
    return min(members, key=lambda m: (m.enrolled_at, m.id))


class _MemberReply(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    member_id: str = Field(alias="memberId", min_length=1, max_length=36)
    name: str | None = Field(default=None, max_length=200)


class HttpMemberDirectory:
    """A chain's loyalty system over HTTP (contract in the module docstring).

    Calls are short (the customer is waiting at the till): one attempt each, bounded by the
    client's timeout. Anything but the documented answers raises
    :class:`MemberDirectoryUnavailable` naming the operation and status only.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: SecretStr | None = None,
        timeout_seconds: float = 2.0,
        owns_http: bool = False,
    ) -> None:
        self._http = http
        self._owns_http = owns_http
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = httpx.Timeout(timeout_seconds)

    @classmethod
    def create(cls, settings: ClubSettings) -> HttpMemberDirectory:
        """A directory with its own HTTP client (closed by :meth:`aclose`)."""
        if not settings.directory_url:
            raise ValueError("club.directory_url is not set")
        http = httpx.AsyncClient(follow_redirects=False)
        return cls(
            http,
            base_url=settings.directory_url,
            api_key=settings.directory_api_key,
            timeout_seconds=settings.directory_timeout_seconds,
            owns_http=True,
        )

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def find_by_phone(self, msisdn: str) -> MemberRecord | None:
        response = await self._post("members.search", "/members/search", {"msisdn": msisdn})
        if response.status_code == 404:
            return None
        return self._record("members.search", response, ok=(200,))

    async def enroll(self, member: NewMember) -> MemberRecord:
        body: dict[str, Any] = {
            "msisdn": member.msisdn,
            "vippsSub": member.vipps_sub,
            "name": member.name,
            "email": member.email,
            "storeId": member.store_id,
        }
        response = await self._post(
            "members.enroll",
            "/members",
            {k: v for k, v in body.items() if v is not None},
            idempotency_key=f"enroll-{member.vipps_sub}"[:200],
        )
        return self._record("members.enroll", response, ok=(200, 201))

    async def _post(
        self,
        operation: str,
        path: str,
        body: dict[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        headers = {"Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        try:
            return await self._http.post(
                self._base_url + path, json=body, headers=headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            log.warning(
                "loyalty.directory.unreachable", operation=operation, error=type(exc).__name__
            )
            raise MemberDirectoryUnavailable(f"{operation}: {type(exc).__name__}") from None

    def _record(
        self, operation: str, response: httpx.Response, *, ok: tuple[int, ...]
    ) -> MemberRecord:
        if response.status_code not in ok:
            log.warning(
                "loyalty.directory.failed", operation=operation, status=response.status_code
            )
            raise MemberDirectoryUnavailable(f"{operation}: HTTP {response.status_code}")
        try:
            reply = _MemberReply.model_validate_json(response.content)
        except ValidationError:
            # Not chained: validation errors quote their input.
            raise MemberDirectoryUnavailable(f"{operation}: unreadable answer") from None
        return MemberRecord(reply.member_id, reply.name)


def build_directory(
    settings: ClubSettings, sessions: async_sessionmaker[AsyncSession], secrets: SecretBox
) -> MemberDirectory:
    """The chain's loyalty system when ``club.directory_url`` is set, else our members table."""
    if settings.directory_url:
        return HttpMemberDirectory.create(settings)
    return DatabaseMemberDirectory(sessions, secrets)
