"""Access tokens for the Vipps MobilePay platform APIs (``POST /accesstoken/get``).

Invariants:

* One cached token per credential set, keyed by base URL + ``client_id`` + a hash of the
  subscription key (the key itself is never kept as a dict key or logged).
* At most one fetch in flight per credential set: an :class:`asyncio.Lock` per set, checked
  again after acquiring it, so 100 concurrent callers with a cold cache cause exactly one POST.
* A token is replaced ``refresh_margin`` seconds before ``expires_on`` (Vipps: refresh shortly
  before expiry, never fetch one per request), but never later than half-way through its life,
  so short-lived tokens are not used to the last second.
* :meth:`AccessTokenProvider.invalidate` drops a token only if it is still the cached one: when
  many requests fail with 401 at once, only the first forces a new fetch.

The token is a bearer credential: it lives in a :class:`SecretStr` and is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
from pydantic import SecretStr, ValidationError

from app.vipps.credentials import Credentials
from app.vipps.errors import (
    VippsError,
    VippsUnexpectedResponse,
    error_from_response,
    error_from_transport,
)
from app.vipps.schemas import AccessTokenResponse

logger = logging.getLogger(__name__)

__all__ = ["AccessToken", "AccessTokenProvider", "Credentials", "OnCall", "report_call"]

OnCall = Callable[[str, int | None, float, str | None], None]
"""Metrics hook: ``(operation, HTTP status or None, seconds, Vipps error code or None)``."""

FETCH_OPERATION = "accesstoken.get"
# Used when Vipps sends neither a usable expires_on nor expires_in; a 401 replaces it sooner.
_FALLBACK_LIFETIME_SECONDS = 300.0


@dataclass(frozen=True)
class AccessToken:
    value: SecretStr
    expires_at: float
    refresh_at: float


@dataclass
class _Slot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    token: AccessToken | None = None


def report_call(
    on_call: OnCall | None,
    operation: str,
    status: int | None,
    seconds: float,
    error_code: str | None,
) -> None:
    """Run the metrics hook; a failing hook is logged and never breaks a payment call."""
    if on_call is None:
        return
    try:
        on_call(operation, status, seconds, error_code)
    except Exception:
        logger.exception("vipps.on_call_hook.failed", extra={"operation": operation})


class AccessTokenProvider:
    """Fetches and caches platform access tokens over a shared :class:`httpx.AsyncClient`.

    :meth:`get` makes at most one HTTP attempt; the caller's retry policy decides whether a
    :class:`~app.vipps.errors.VippsUnavailable` from the token endpoint is tried again.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        system_headers: Mapping[str, str] | None = None,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.time,
        on_call: OnCall | None = None,
    ) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._system_headers = dict(system_headers or {})
        self._refresh_margin = refresh_margin
        self._clock = clock
        self._on_call = on_call
        self._slots: dict[tuple[str, str, str], _Slot] = {}

    def _slot(self, credentials: Credentials) -> _Slot:
        key = credentials.cache_key(self._base_url)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        return slot

    def _fresh(self, token: AccessToken | None) -> bool:
        return token is not None and self._clock() < token.refresh_at

    async def get(self, credentials: Credentials) -> SecretStr:
        """A valid token for ``credentials``, fetching one only when none is fresh."""
        slot = self._slot(credentials)
        if slot.token is not None and self._fresh(slot.token):
            return slot.token.value
        async with slot.lock:
            # Double-checked: another caller may have fetched while we waited for the lock.
            if slot.token is not None and self._fresh(slot.token):
                return slot.token.value
            slot.token = await self._fetch(credentials)
            return slot.token.value

    def invalidate(self, credentials: Credentials, token: SecretStr) -> bool:
        """Forget ``token`` after Vipps answered 401 to it. False if it was already replaced."""
        slot = self._slot(credentials)
        if slot.token is not None and slot.token.value == token:
            slot.token = None
            logger.info("vipps.token.invalidated")
            return True
        return False

    async def _fetch(self, credentials: Credentials) -> AccessToken:
        headers = {
            "client_id": credentials.client_id.get_secret_value(),
            "client_secret": credentials.client_secret.get_secret_value(),
            "Ocp-Apim-Subscription-Key": credentials.subscription_key.get_secret_value(),
            **self._system_headers,
        }
        started = time.monotonic()
        try:
            # The body is empty (REFERENCE.md §2); credentials travel in headers only.
            response = await self._http.post(
                f"{self._base_url}/accesstoken/get", headers=headers, content=b""
            )
        except httpx.RequestError as exc:
            report_call(self._on_call, FETCH_OPERATION, None, time.monotonic() - started, None)
            raise error_from_transport(exc, operation=FETCH_OPERATION) from exc
        elapsed = time.monotonic() - started
        if response.status_code >= 300:
            error: VippsError = error_from_response(response, operation=FETCH_OPERATION)
            report_call(
                self._on_call, FETCH_OPERATION, response.status_code, elapsed, error.error_code
            )
            raise error
        report_call(self._on_call, FETCH_OPERATION, response.status_code, elapsed, None)
        try:
            body = AccessTokenResponse.model_validate_json(response.content)
        except ValidationError:
            # Not chained: a pydantic error quotes its input, and the input holds the token.
            raise VippsUnexpectedResponse(
                "unreadable access token response",
                operation=FETCH_OPERATION,
                status=response.status_code,
            ) from None
        token = self._token_from(body)
        logger.info(
            "vipps.token.fetched",
            extra={"expires_in_seconds": round(token.expires_at - self._clock())},
        )
        return token

    def _token_from(self, body: AccessTokenResponse) -> AccessToken:
        now = self._clock()
        expires_at: float | None = None
        # expires_on is epoch seconds; ignore it when our clock says it is already past (skew).
        if body.expires_on is not None and body.expires_on > now:
            expires_at = body.expires_on
        elif body.expires_in is not None and body.expires_in > 0:
            expires_at = now + body.expires_in
        if expires_at is None:
            expires_at = now + _FALLBACK_LIFETIME_SECONDS
        lifetime = expires_at - now
        margin = min(self._refresh_margin, lifetime / 2)
        return AccessToken(
            value=body.access_token, expires_at=expires_at, refresh_at=expires_at - margin
        )
