"""Dependencies: services, authentication of tills and operators, per-till rate limits."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Path, Request

from app.crypto import api_key_id, api_key_matches
from app.errors import ApiProblem
from app.service import Services


def get_services(request: Request) -> Services:
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
    till = await services.tills.find_by_key_id(key_id) if key_id else None
    if till is None or not api_key_matches(key, till.api_key_hash):
        raise ApiProblem(401, "unauthorized", "unknown or revoked API key", headers=_UNAUTHORIZED)
    limiter: _TillRateLimiter = request.app.state.__dict__.setdefault(
        "till_rate_limiter", _TillRateLimiter()
    )
    wait = limiter.take(till.id, services.ctx.settings.security.till_rate_limit_per_minute)
    if wait > 0:
        raise ApiProblem(
            429,
            "rate_limited",
            "too many requests from this till",
            headers={"Retry-After": str(max(1, int(wait + 0.999)))},
        )
    return Principal(till.id, till.api_key_id, False)


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise ApiProblem(403, "forbidden", "operator credentials required")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


def till_scope(principal: PrincipalDep, till_id: Annotated[str, Path()]) -> str:
    """The till a request acts on: a till key may only act on its own till."""
    if not principal.is_admin and principal.till_id != till_id:
        raise ApiProblem(403, "forbidden", "this API key belongs to another till")
    return till_id


TillScope = Annotated[str, Depends(till_scope)]


def own_till(principal: Principal) -> str | None:
    """Restrict checkout lookups to the caller's till (``None``: operators see all)."""
    return None if principal.is_admin else principal.till_id
