"""Errors the service raises for the edge to turn into problem+json. Codes are stable API."""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar

from app.vipps.credentials import NoCredentials
from app.vipps.errors import VippsAuthError, VippsError, VippsRejected, VippsUnavailable


class _Problem(Protocol):
    @property
    def field(self) -> str: ...
    @property
    def code(self) -> str: ...
    @property
    def message(self) -> str: ...


class ServiceError(Exception):
    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.errors: list[dict[str, str]] | None = None
        self.headers: dict[str, str] | None = None


class NotFound(ServiceError):
    status, code, title = 404, "not_found", "Not found"


class CheckoutNotFound(NotFound):
    code = "checkout_not_found"

    def __init__(self, checkout_id: str) -> None:
        super().__init__(f"checkout {checkout_id} not found")


class TillNotFound(NotFound):
    code = "till_not_found"

    def __init__(self, till_id: str) -> None:
        super().__init__(f"till {till_id} not found")


class StoreNotFound(NotFound):
    code = "store_not_found"

    def __init__(self, store_id: str) -> None:
        super().__init__(f"store {store_id} not found")


class Conflict(ServiceError):
    status, code, title = 409, "conflict", "Conflict"


class ActiveCheckoutExists(Conflict):
    code = "active_checkout_exists"

    def __init__(self, checkout_id: str, state: str) -> None:
        super().__init__(
            f"till already has an active checkout {checkout_id} ({state}); cancel or finish it",
            activeCheckoutId=checkout_id,
            activeCheckoutState=state,
        )


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used with a different request body")


class TillInactive(Conflict):
    code = "till_inactive"

    def __init__(self, till_id: str) -> None:
        super().__init__(f"till {till_id} is deactivated")


class TillExists(Conflict):
    code = "till_exists"

    def __init__(self, till_id: str) -> None:
        super().__init__(f"till {till_id} already exists")


class TransitionRefused(Conflict):
    """The checkout's state does not allow the request; ``code`` comes from the state machine."""

    def __init__(self, code: str, detail: str, state: str) -> None:
        super().__init__(detail, state=state)
        self.code = code


class InvalidCheckout(ServiceError):
    status, code, title = 422, "validation_error", "The request is not valid"

    def __init__(self, problems: Sequence[_Problem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in list(problems)[:5]))
        self.errors = [{"field": p.field, "code": p.code, "message": p.message} for p in problems]


class VippsRefused(ServiceError):
    """Vipps refused an operator action (e.g. creating a QR); its code is kept."""

    status, code, title = 502, "vipps_refused", "Vipps MobilePay refused the request"


class VippsUnreachable(ServiceError):
    status, code, title = 503, "vipps_unavailable", "Vipps MobilePay is not reachable"


class VippsRateLimited(ServiceError):
    """Vipps answered 429 (its per-payment limit, REFERENCE.md §7.11): ask again after
    ``Retry-After``. Not an outage, so not a 503."""

    status, code, title = 429, "vipps_rate_limited", "Vipps MobilePay rate limit reached"


class MsnNotAccessible(ServiceError):
    """Our Vipps credentials do not cover this sales unit (Vipps answered 403)."""

    status, code, title = 422, "msn_not_accessible", "Sales unit not accessible"


class VippsKeysRefused(ServiceError):
    """Vipps refused the keys we hold (401): wrong, revoked or expired in the portal. Nothing a
    retry fixes; an operator rotates them."""

    status, code, title = 422, "vipps_keys_refused", "Vipps refused our API keys"


class MsnNotCovered(ServiceError):
    """We hold no Vipps API keys for this sales unit, so nothing can be done for it at Vipps."""

    status, code, title = 422, "msn_not_covered", "No Vipps API keys for this sales unit"

    def __init__(self, msn: str) -> None:
        super().__init__(
            f"no Vipps API keys cover sales unit {msn}: add its own keys (`vipps-pos keys add "
            f"{msn}` or PUT /api/v1/vipps-keys/{msn}), or configure partner keys "
            "(VIPPS_POS_VIPPS__PARTNER_KEYS=true with the partner's keys)",
            msn=msn,
        )
        self.errors = [{"field": "msn", "code": self.code, "message": self.detail}]


P = ParamSpec("P")
R = TypeVar("R")


def vipps_errors_as_problems(call: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """For operator actions that call Vipps directly: its errors become problems with a code
    (never a 500). 403 means the MSN is not ours to use; other refusals keep Vipps's code."""

    @functools.wraps(call)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await call(*args, **kwargs)
        except NoCredentials as exc:
            raise MsnNotCovered(exc.msn or "?") from exc
        except VippsAuthError as exc:
            if exc.status == 403:
                raise MsnNotAccessible(
                    "the Vipps credentials do not cover this sales unit (MSN)"
                ) from exc
            raise VippsKeysRefused(
                "Vipps refused our API keys (credentials) for this sales unit (HTTP "
                f"{exc.status}): rotate them (`vipps-pos keys rotate <msn>`) or fix the "
                "configured keys (VIPPS_POS_VIPPS__...)",
                vippsStatus=exc.status,
            ) from exc
        except VippsRejected as exc:
            raise VippsRefused(
                exc.title or "refused", vippsStatus=exc.status, vippsCode=exc.error_code
            ) from exc
        except VippsUnavailable as exc:
            if exc.status == 429:
                limited = VippsRateLimited("Vipps limits calls per payment; try again later")
                limited.headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after or 60)))}
                raise limited from exc
            raise VippsUnreachable("Vipps did not answer; try again") from exc
        except VippsError as exc:
            raise VippsRefused("unexpected answer from Vipps") from exc

    return wrapper
