"""Dependencies: services, authentication of tills and operators, per-till rate limits, and the
read-only display tokens of the customer-facing till display."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Cookie, Depends, Header, Path, Request

from app.crypto import api_key_id, api_key_matches
from app.errors import ApiProblem
from app.service import Services
from app.service.errors import TillNotFound
from app.settings import Settings


# Dependencies are ``async def`` even when they do not await: FastAPI runs a plain ``def``
# dependency in the thread pool, a thread hop on every request for no work at all.
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: a till (acting on its own till only) or an operator (admin)."""

    till_id: str | None
    key_id: str
    is_admin: bool

    @property
    def actor(self) -> str:
        return "admin" if self.is_admin else f"till:{self.key_id}"


def _bearer(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


class _TillRateLimiter:
    """Token bucket per till, in memory (per replica)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, per_minute: int) -> float:
        """0 if allowed, else seconds until one request is allowed."""
        now = time.monotonic()
        rate = per_minute / 60.0
        tokens, stamp = self._buckets.get(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - stamp) * rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / rate


async def authenticate(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    key = _bearer(authorization, x_api_key)
    if not key:
        raise ApiProblem(401, "unauthorized", "an API key is required", headers=_UNAUTHORIZED)
    admin_key = services.ctx.settings.security.admin_api_key.get_secret_value()
    if hmac.compare_digest(key.encode(), admin_key.encode()):
        return Principal(None, "admin", True)
    key_id = api_key_id(key)
    till = await services.tills.credential(key_id) if key_id else None
    if till is None or not api_key_matches(key, till.key_hash):
        raise ApiProblem(401, "unauthorized", "unknown or revoked API key", headers=_UNAUTHORIZED)
    limiter: _TillRateLimiter = request.app.state.__dict__.setdefault(
        "till_rate_limiter", _TillRateLimiter()
    )
    wait = limiter.take(till.till_id, services.ctx.settings.security.till_rate_limit_per_minute)
    if wait > 0:
        raise ApiProblem(
            429,
            "rate_limited",
            "too many requests from this till",
            headers={"Retry-After": str(max(1, int(wait + 0.999)))},
        )
    return Principal(till.till_id, till.key_id, False)


PrincipalDep = Annotated[Principal, Depends(authenticate)]


async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise ApiProblem(403, "forbidden", "operator credentials required")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


async def till_scope(principal: PrincipalDep, till_id: Annotated[str, Path()]) -> str:
    """The till a request acts on: a till key may only act on its own till."""
    if not principal.is_admin and principal.till_id != till_id:
        raise ApiProblem(403, "forbidden", "this API key belongs to another till")
    return till_id


TillScope = Annotated[str, Depends(till_scope)]


def own_till(principal: Principal) -> str | None:
    """Restrict checkout lookups to the caller's till (``None``: operators see all)."""
    return None if principal.is_admin else principal.till_id


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
    """A verified display token: read-only access to one till's display until ``expires_at``."""

    till_id: str
    expires_at: datetime
    lifetime_seconds: int


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
    try:
        till = await services.tills.get(till_id)
    except TillNotFound:
        raise ApiProblem(401, "unauthorized", _DISPLAY_REFUSED) from None
    if till.status != "ACTIVE" or not hmac.compare_digest(till.api_key_id, match["key"]):
        raise ApiProblem(401, "unauthorized", _DISPLAY_REFUSED)
    limiter: _TillRateLimiter = request.app.state.__dict__.setdefault(
        "till_rate_limiter", _TillRateLimiter()
    )
    wait = limiter.take(
        f"display:{till_id}", services.ctx.settings.security.till_rate_limit_per_minute
    )
    if wait > 0:
        raise ApiProblem(
            429,
            "rate_limited",
            "too many requests from this display",
            headers={"Retry-After": str(max(1, int(wait + 0.999)))},
        )
    return DisplayGrant(till_id, datetime.fromtimestamp(expires, UTC), int(match["ttl"]))


DisplayGrantDep = Annotated[DisplayGrant, Depends(display_grant)]
