"""Dependencies: services, authentication and authorization of tills and operators, throttling,
and the read-only display tokens of the customer-facing till display.

Who may do what is decided in one place, :func:`check_access` with its two tables; every route
states what it does (:class:`Access`) through one of the ``…Dep``/``Till…`` dependencies below.
A deactivated till's key may still read its own sales and cancel an unfinished one, nothing else
(docs/integration.md, "Keys, roles and what a deactivated till may do").

Throttling (app/throttle.py) costs no database statement: requests are counted per till key and
per admin key, failed authentications per source address (with backoff); see docs/operations.md.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Cookie, Depends, Header, Path, Request

from app.crypto import ADMIN_KEY_PREFIX, api_key_id, api_key_matches
from app.errors import ApiProblem
from app.notifications import admin_key_subject, till_key_subject
from app.service import Services
from app.service.admin_keys import ALL_ROLES, Role
from app.service.errors import TillNotFound
from app.settings import Settings
from app.throttle import ADMIN, AUTH_FAILURE, DISPLAY, TILL, Throttle, source_of


# Dependencies are ``async def`` even when they do not await: FastAPI runs a plain ``def``
# dependency in the thread pool, a thread hop on every request for no work at all.
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

# The bootstrap key (settings) is never revoked while the process runs: its event is never set.
_NEVER = asyncio.Event()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a till (acting on its own till only) or an operator with admin roles.

    ``revoked`` is set once the credential is revoked (key rotated, till deactivated, admin key
    revoked), on any replica: streams and long-polls opened with it hold it and end.
    """

    till_id: str | None
    key_id: str
    roles: frozenset[Role] = frozenset()
    till_active: bool = True
    name: str | None = None
    revoked: asyncio.Event = field(default=_NEVER, compare=False, repr=False)

    @property
    def is_admin(self) -> bool:
        return self.till_id is None

    @property
    def is_bootstrap(self) -> bool:
        return self.is_admin and self.name is None

    @property
    def actor(self) -> str:
        """How the audit trail names the caller."""
        if not self.is_admin:
            return f"till:{self.key_id}"
        return "admin" if self.is_bootstrap else f"admin:{self.name}/{self.key_id}"


def _bearer(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def _throttle(request: Request) -> Throttle:
    throttle: Throttle = request.app.state.throttle
    return throttle


def too_many(wait: float, detail: str) -> ApiProblem:
    return ApiProblem(
        429, "rate_limited", detail, headers={"Retry-After": str(max(1, int(wait + 0.999)))}
    )


async def _identify(services: Services, key: str) -> Principal | None:
    """The principal ``key`` belongs to, or ``None``. Each credential's revocation event is
    taken before the database is asked, so a revocation committing after the check still
    reaches whoever holds the principal."""
    hub = services.ctx.hub
    bootstrap = services.ctx.settings.security.admin_api_key.get_secret_value()
    if bootstrap and hmac.compare_digest(key.encode(), bootstrap.encode()):
        return Principal(None, "bootstrap", ALL_ROLES)
    if key.startswith(ADMIN_KEY_PREFIX + "_"):
        admin_id = api_key_id(key, ADMIN_KEY_PREFIX)
        if admin_id is None:
            return None
        revoked = hub.revocation_event(admin_key_subject(admin_id))
        info = await services.admin_keys.authenticate(key)
        if info is None:
            return None
        return Principal(None, info.id, info.roles, name=info.name, revoked=revoked)
    key_id = api_key_id(key)
    if key_id is None:
        return None
    revoked = hub.revocation_event(till_key_subject(key_id))
    till = await services.tills.credential(key_id)  # cached; a revocation drops it at once
    if till is None or not api_key_matches(key, till.key_hash):
        return None
    return Principal(till.till_id, till.key_id, till_active=till.active, revoked=revoked)


async def authenticate(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    throttle = _throttle(request)
    source = AUTH_FAILURE + source_of(request.client.host if request.client else None)
    wait = throttle.begin(source)
    if wait > 0:
        raise too_many(wait, "too many failed authentications from this address; back off")
    principal: Principal | None = None
    try:
        key = _bearer(authorization, x_api_key)
        principal = await _identify(services, key) if key else None
    finally:
        throttle.end(source, failed=principal is None)
    if principal is None:
        raise ApiProblem(401, "unauthorized", "unknown or revoked API key", headers=_UNAUTHORIZED)
    if principal.is_admin:
        wait = throttle.take(ADMIN + principal.key_id)
    else:
        wait = throttle.take(TILL + str(principal.till_id))
    if wait > 0:
        raise too_many(wait, "too many requests with this key")
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


# ---- who may do what --------------------------------------------------------------------------


class Access(StrEnum):
    """What a route does, as far as authorization is concerned."""

    READ = "read"  # a checkout, the till, its active checkout
    STREAM = "stream"  # the till's event stream
    SELL = "sell"  # ring up a sale; member price
    CANCEL = "cancel"
    CAPTURE = "capture"
    REFUND = "refund"
    QR = "qr"  # the till's QR image; a display token
    LIST = "list"  # checkouts across tills
    OPERATE = "operate"  # tills, stores, webhooks, inbox, members, reports, drift, audit, re-sync
    MONITOR = "monitor"  # /metrics, the API description when behind a key


# A till key acts on its own till only (see till_scope and own_till).
_TILL_MAY = frozenset(
    {Access.READ, Access.STREAM, Access.SELL, Access.CANCEL, Access.CAPTURE, Access.REFUND}
    | {Access.QR}
)
# A deactivated till's key: learn how its sales ended, call off one still running. Refunds and
# captures of its sales are an operator's (money role) from then on.
_DEACTIVATED_TILL_MAY = frozenset({Access.READ, Access.CANCEL})
_ROLES_MAY: dict[Role, frozenset[Access]] = {
    Role.OPERATOR: frozenset(
        {Access.READ, Access.STREAM, Access.CANCEL, Access.QR, Access.LIST, Access.OPERATE}
        | {Access.MONITOR}
    ),
    Role.MONEY: frozenset(
        {Access.READ, Access.STREAM, Access.SELL, Access.CANCEL, Access.CAPTURE, Access.REFUND}
        | {Access.LIST}
    ),
    Role.MONITOR: frozenset({Access.MONITOR}),
}


def may(principal: Principal, access: Access) -> bool:
    if principal.is_admin:
        return any(access in _ROLES_MAY[role] for role in principal.roles)
    if not principal.till_active:
        return access in _DEACTIVATED_TILL_MAY
    return access in _TILL_MAY


def check_access(principal: Principal, access: Access) -> None:
    """The one place that decides whether ``principal`` may do ``access``; raises 403."""
    if may(principal, access):
        return
    if principal.is_admin:
        roles = ", ".join(sorted(principal.roles)) or "none"
        raise ApiProblem(
            403, "forbidden", f"this admin key's roles ({roles}) do not allow {access.value}"
        )
    if access in _TILL_MAY:
        # The code integrators already know for a deactivated till (docs/integration.md).
        raise ApiProblem(
            409,
            "till_inactive",
            "this till is deactivated: its key may read its sales and cancel an unfinished "
            "one; captures and refunds are an operator's",
        )
    raise ApiProblem(403, "forbidden", "operator credentials required")


def _allow(access: Access) -> Any:
    async def allowed(principal: PrincipalDep) -> Principal:
        check_access(principal, access)
        return principal

    allowed.__name__ = f"allow_{access.value}"
    return allowed


# One dependency callable per access, so FastAPI resolves each once per request.
_ALLOW = {access: _allow(access) for access in Access}
ReadDep = Annotated[Principal, Depends(_ALLOW[Access.READ])]
StreamDep = Annotated[Principal, Depends(_ALLOW[Access.STREAM])]
SellDep = Annotated[Principal, Depends(_ALLOW[Access.SELL])]
CancelDep = Annotated[Principal, Depends(_ALLOW[Access.CANCEL])]
CaptureDep = Annotated[Principal, Depends(_ALLOW[Access.CAPTURE])]
RefundDep = Annotated[Principal, Depends(_ALLOW[Access.REFUND])]
QrDep = Annotated[Principal, Depends(_ALLOW[Access.QR])]
ListDep = Annotated[Principal, Depends(_ALLOW[Access.LIST])]
OperatorDep = Annotated[Principal, Depends(_ALLOW[Access.OPERATE])]
MonitorDep = Annotated[Principal, Depends(_ALLOW[Access.MONITOR])]


def _scoped(access: Access) -> Any:
    # A default, not an annotation: annotations are strings here (PEP 563), resolved in the
    # module's namespace, where ``access`` does not exist.
    async def till_scope(
        till_id: Annotated[str, Path()],
        principal: Principal = Depends(_ALLOW[access]),  # noqa: B008
    ) -> str:
        """The till a request acts on: a till key may only act on its own till."""
        if not principal.is_admin and principal.till_id != till_id:
            raise ApiProblem(403, "forbidden", "this API key belongs to another till")
        return till_id

    till_scope.__name__ = f"till_scope_{access.value}"
    return till_scope


TillRead = Annotated[str, Depends(_scoped(Access.READ))]
TillStream = Annotated[str, Depends(_scoped(Access.STREAM))]
TillSell = Annotated[str, Depends(_scoped(Access.SELL))]
TillQr = Annotated[str, Depends(_scoped(Access.QR))]


def own_till(principal: Principal) -> str | None:
    """Restrict checkout lookups to the caller's till (``None``: operators see all)."""
    return None if principal.is_admin else principal.till_id


async def still_allowed(services: Services, principal: Principal, access: Access) -> bool:
    """Whether ``principal``'s credential still allows ``access``, asking the database: for a
    long-poll whose credential was revoked meanwhile, and for open streams at each keep-alive
    (which covers revocations a replica missed while its LISTEN connection was down, or that
    another process made on SQLite)."""
    if principal.is_bootstrap:
        return True
    if principal.is_admin:
        return await services.admin_keys.is_active(principal.key_id)
    till = await services.tills.credential(principal.key_id, fresh=True)
    if till is None:
        return False
    current = Principal(till.till_id, till.key_id, till_active=till.active)
    return may(current, access)


# ---- display tokens ---------------------------------------------------------------------------
#
# The till display page reads its data with ``EventSource`` and ``<img>``, which cannot send an
# Authorization header. Its credential is never the till's API key (which can move money) but a
# display token: read-only, for one till, with an expiry, and bound to the till's current API key
# id, so rotating the key (POST /api/v1/tills/{id}/api-key) or deactivating the till revokes every
# display token at once.
#
#   vdt1.<till id>.<api key id>.<expires unix s>.<lifetime s>.<HMAC-SHA256, base64url>
#
# It never travels in a URL the server sees (URLs end up in access logs, proxy logs and Referer
# headers): the page gets it in the URL fragment, presents it once as a Bearer header, and from
# then on holds it in an HttpOnly, SameSite=Strict cookie scoped to that till's display path,
# which EventSource and <img> send by themselves (app/api/display.py).
#
# The HMAC key is derived from each configured encryption key: the first signs, all verify, so an
# encryption-key rotation does not cut running displays off.

DISPLAY_COOKIE = "vipps_pos_display"
_DISPLAY_FORMAT = "vdt1"
_DISPLAY_TOKEN = re.compile(
    re.escape(_DISPLAY_FORMAT)
    + r"\.(?P<till>[A-Za-z0-9_-]{1,64})\.(?P<key>[0-9a-f]{1,32})\.(?P<exp>[0-9]{1,12})"
    r"\.(?P<ttl>[0-9]{1,6})\.(?P<mac>[A-Za-z0-9_-]{43})"
)


@dataclass(frozen=True)
class DisplayGrant:
    """A verified display token: read-only access to one till's display until ``expires_at``,
    or until the till key it was issued under is revoked (``revoked`` is then set)."""

    till_id: str
    key_id: str
    expires_at: datetime
    lifetime_seconds: int
    revoked: asyncio.Event = field(default=_NEVER, compare=False, repr=False)


def _display_keys(settings: Settings) -> list[bytes]:
    raw = settings.security.encryption_key.get_secret_value().split(",")
    return [
        hashlib.sha256(b"vipps-pos/display-token/" + key.strip().encode()).digest()
        for key in raw
        if key.strip()
    ]


def _display_mac(key: bytes, body: str) -> str:
    digest = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_display_token(
    settings: Settings, *, till_id: str, key_id: str, now: datetime, lifetime_seconds: int
) -> tuple[str, datetime]:
    """A display token for ``till_id`` valid ``lifetime_seconds`` from ``now``, and its expiry."""
    expires = int(now.timestamp()) + lifetime_seconds
    body = f"{_DISPLAY_FORMAT}.{till_id}.{key_id}.{expires}.{lifetime_seconds}"
    token = f"{body}.{_display_mac(_display_keys(settings)[0], body)}"
    return token, datetime.fromtimestamp(expires, UTC)


_DISPLAY_REFUSED = "display token invalid, expired or revoked; open the display from the till"


async def display_grant(
    request: Request,
    services: ServicesDep,
    till_id: Annotated[str, Path()],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    display_cookie: Annotated[
        str | None, Cookie(alias=DISPLAY_COOKIE, include_in_schema=False)
    ] = None,
) -> DisplayGrant:
    """Authenticate a display route by a display token: ``Authorization: Bearer vdt1...`` or
    the display cookie. Every failure is the same 401.

    The signature and expiry are checked before the database is asked, so forged tokens cost
    nothing; then the till must be active and still have the API key the token was issued under.
    """
    text = _bearer(authorization, None) or display_cookie or ""
    match = _DISPLAY_TOKEN.fullmatch(text)
    if match is None or match["till"] != till_id:
        raise ApiProblem(401, "unauthorized", _DISPLAY_REFUSED)
    body = text[: match.start("mac") - 1]
    if not any(
        hmac.compare_digest(_display_mac(key, body), match["mac"])
        for key in _display_keys(services.ctx.settings)
    ):
        raise ApiProblem(401, "unauthorized", _DISPLAY_REFUSED)
    expires = int(match["exp"])
    if expires <= services.ctx.clock().timestamp():
        raise ApiProblem(401, "unauthorized", _DISPLAY_REFUSED)
    revoked = services.ctx.hub.revocation_event(till_key_subject(match["key"]))
    if not await display_still_valid(services, till_id, match["key"]):
        raise ApiProblem(401, "unauthorized", _DISPLAY_REFUSED)
    wait = _throttle(request).take(DISPLAY + till_id)
    if wait > 0:
        raise too_many(wait, "too many requests from this display")
    return DisplayGrant(
        till_id, match["key"], datetime.fromtimestamp(expires, UTC), int(match["ttl"]), revoked
    )


async def display_still_valid(services: Services, till_id: str, key_id: str) -> bool:
    """The till is active and still has the API key the display token was issued under."""
    try:
        till = await services.tills.get(till_id)
    except TillNotFound:
        return False
    return till.status == "ACTIVE" and hmac.compare_digest(till.api_key_id, key_id)


DisplayGrantDep = Annotated[DisplayGrant, Depends(display_grant)]
