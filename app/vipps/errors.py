"""Errors raised by the Vipps MobilePay client, and the mapping from HTTP answers onto them.

The tree (callers branch on the class, never on message text)::

    VippsError                      anything that went wrong talking to Vipps
    ├── VippsUnavailable            retryable: connection error, timeout, 5xx, 429, 423, and
    │   │                           the "retry" codes 6250 and 6280 whatever their status
    │   │                           (``retry_after`` holds Retry-After when Vipps sent one)
    │   └── VippsOutcomeUnknown     a mutating request may have been processed: read timeout,
    │                               connection dropped after sending, or 5xx. GET the resource
    │                               before deciding; re-sending with the same Idempotency-Key
    │                               is also safe where the endpoint takes one.
    ├── VippsRejected               business 4xx: Vipps understood and said no. Never retried;
    │   │                           the same Idempotency-Key returns the same answer again.
    │   ├── VippsNotFound           404
    │   └── VippsConflict           409 (idempotency conflict, reference already used)
    ├── VippsAuthError              401/403: credentials, subscription key or product access
    └── VippsUnexpectedResponse     a 2xx whose body we cannot read. The call reached Vipps:
                                    for a mutating call, GET the resource to learn the outcome.

Every error carries what Vipps said in a form that is safe to log: ``status``, Vipps's numeric
``error_code`` (problem+json ``extraDetails[{name: "ErrorCode"}]``, ePayment ``code``, OAuth
``error_code``/``error``), ``title``, ``detail``, ``trace_id``, ``invalid_params`` and, from
the Login API, the OAuth ``oauth_error`` name (``authorization_pending``, ``invalid_grant``, ...).

Invariant: no message or attribute holds a secret, token or phone number. Text that comes from
Vipps is passed through :func:`redact` (digit runs that could be an MSISDN, long opaque tokens),
and non-JSON bodies (Azure API Management answers 401/403/429 with plain text or HTML) are never
copied beyond a short redacted excerpt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

import httpx

# An MSISDN is 8-15 digits (REFERENCE.md §1); nothing numeric that long belongs in a log line.
_DIGIT_RUN = re.compile(r"\+?\d[\d ]{6,}\d")
# Customer tokens are base64 (~60 chars), access tokens are JWTs: any long opaque run goes.
_OPAQUE_RUN = re.compile(r"[A-Za-z0-9+/_=.\-]{32,}")
_MAX_TEXT = 300
# ePayment refusals that say "try again", whatever their status: 6250 "cannot cancel while the
# user is mid-authorization; retry later" (REFERENCE.md §7.6) and 6280 "transient failure; retry
# with the same key" (§7.5). Vipps does not remember them against the Idempotency-Key.
RETRY_LATER_CODES = frozenset({"6250", "6280"})
# What documented ePayment codes mean (REFERENCE.md §1, §7.5-§7.10). Vipps's problem ``title`` is
# often only the HTTP status phrase ("Bad Request"); for a documented code the meaning takes its
# place, so the reason a till or an operator sees says what happened.
EPAYMENT_CODE_MEANINGS = {
    "4010": "capture retried with the same Idempotency-Key but another body",
    "4020": "Idempotency-Key already used with another request",
    "4040": "amounts must be whole minor units",
    "4150": "reference already used, or refund retried with the same key but another body",
    "5040": "currency does not match the sales unit's market",
    "5050": "long-living payments are not enabled for this sales unit",
    "5080": "PUSH_MESSAGE is not approved for this sales unit (ask Vipps MobilePay to approve "
    "it, or set VIPPS_POS_VIPPS__USER_FLOW)",
    "6010": "amount below the minimum",
    "6040": "a fully captured payment cannot be cancelled; refund it instead",
    "6060": "already authorized; the cancel of a pending payment was refused",
    "6080": "not authorized (yet)",
    "6090": "amount higher than what is left to capture",
    "6100": "capture period expired: the reservation lapsed and cannot be captured any more",
    "6140": "partial capture is not allowed for this sales unit",
    "6150": "amount higher than what is left to refund",
    "6250": "the customer is authorizing the payment; retry later",
    "6260": "funds released early: the reservation was released before the capture",
    "6280": "transient failure; retry with the same Idempotency-Key",
}
_STATUS_PHRASES = frozenset(status.phrase.lower() for status in HTTPStatus)


def redact(text: str | None) -> str | None:
    """``text`` with anything that could be a phone number or token replaced, and shortened."""
    if text is None:
        return None
    cleaned = _OPAQUE_RUN.sub("<redacted>", text)
    cleaned = _DIGIT_RUN.sub(_mask_digits, cleaned)
    cleaned = " ".join(cleaned.split())
    if len(cleaned) > _MAX_TEXT:
        cleaned = cleaned[: _MAX_TEXT - 1] + "…"
    return cleaned


def _mask_digits(match: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in match.group(0))
    # Keep short numbers (amounts, error codes); eight digits or more could be an MSISDN.
    return match.group(0) if digits < 8 else "<number>"


@dataclass(frozen=True)
class InvalidParam:
    """One field Vipps named as invalid (QR ``invalidParams``, problem ``extraDetails``)."""

    name: str
    reason: str | None


class VippsError(Exception):
    """Base of every client error. All attributes are safe to log (see module docstring)."""

    def __init__(
        self,
        message: str,
        *,
        operation: str | None = None,
        status: int | None = None,
        error_code: str | None = None,
        title: str | None = None,
        detail: str | None = None,
        trace_id: str | None = None,
        invalid_params: tuple[InvalidParam, ...] = (),
        oauth_error: str | None = None,
    ) -> None:
        self.operation = operation
        self.oauth_error = oauth_error
        self.status = status
        self.error_code = error_code
        self.title = title
        self.detail = detail
        self.trace_id = trace_id
        self.invalid_params = invalid_params
        parts = [f"{operation}: {message}" if operation else message]
        if status is not None:
            parts.append(
                f"(HTTP {status}, code {error_code})" if error_code else f"(HTTP {status})"
            )
        elif error_code:
            parts.append(f"(code {error_code})")
        if title:
            parts.append(f"- {title}")
        if detail and detail != title:
            parts.append(f"- {detail}")
        if trace_id:
            parts.append(f"[trace {trace_id}]")
        super().__init__(" ".join(parts))

    def names_param(self, name: str) -> bool:
        """True if Vipps named field ``name`` (case-insensitive) as the problem."""
        wanted = name.lower()
        if any(param.name.lower() == wanted for param in self.invalid_params):
            return True
        text = " ".join(t for t in (self.title, self.detail) if t).lower()
        return re.search(rf"\b{re.escape(wanted)}\b", text) is not None


class VippsUnavailable(VippsError):
    """Vipps could not answer now; the same request may succeed later.

    ``retry_after`` is the server's ``Retry-After`` in seconds (429, some 503), else ``None``.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class VippsOutcomeUnknown(VippsUnavailable):
    """A mutating request may have been processed by Vipps, and we did not learn the result.

    Never treat this as a failure (REFERENCE.md §7.10): read the resource (GET the payment, list
    the webhooks) before deciding, or re-send with the same Idempotency-Key.
    """

    @classmethod
    def after(cls, last: VippsError, message: str) -> VippsOutcomeUnknown:
        """Escalate ``last`` when an earlier attempt of the same call may have been processed."""
        return cls(
            message,
            retry_after=getattr(last, "retry_after", None),
            operation=last.operation,
            status=last.status,
            error_code=last.error_code,
            title=last.title,
            detail=last.detail,
            trace_id=last.trace_id,
            invalid_params=last.invalid_params,
            oauth_error=last.oauth_error,
        )


class VippsRejected(VippsError):
    """Vipps refused the request for a business reason (4xx). Retrying does not help.

    A 4xx is remembered against the Idempotency-Key (REFERENCE.md §7.10): fix the request and use
    a new key.
    """


class VippsNotFound(VippsRejected):
    """404: the payment, QR or webhook does not exist for this sales unit."""


class VippsConflict(VippsRejected):
    """409: idempotency conflict (same key, different body) or the reference is already used."""


class VippsAuthError(VippsError):
    """401/403: token, client credentials or subscription key refused, or the sales unit lacks
    the product. Not retried beyond the one token refresh the client does on 401."""


class VippsUnexpectedResponse(VippsError):
    """A 2xx whose body does not have the documented shape. The request reached Vipps."""


# --------------------------------------------------------------------------------------------
# Mapping HTTP answers onto the tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ParsedBody:
    title: str | None = None
    detail: str | None = None
    error_code: str | None = None
    trace_id: str | None = None
    invalid_params: tuple[InvalidParam, ...] = ()
    oauth_error: str | None = None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


_TRACE_ID = re.compile(r"^[A-Za-z0-9._:/\-]{1,128}$")


def _trace_id(value: str | None) -> str | None:
    """Trace ids are opaque hex/UUID strings support needs verbatim; anything else is dropped."""
    if value is None or value.isdigit() or not _TRACE_ID.match(value):
        return None
    return value


def _params(items: Any) -> list[InvalidParam]:
    found: list[InvalidParam] = []
    if not isinstance(items, list):
        return found
    for item in items:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            found.append(InvalidParam(name=item["name"], reason=redact(_text(item.get("reason")))))
    return found


def parse_error_body(response: httpx.Response) -> _ParsedBody:
    """Read whatever Vipps (or the gateway in front of it) sent with an error status.

    Handles, whatever the Content-Type says:

    * RFC 7807 problem+json (ePayment ``Problem``, Webhooks ``ProblemDetails``) with the numeric
      code in ``extraDetails[{"name": "ErrorCode", "reason": "6080"}]`` or a top-level ``code``;
    * QR ``QrErrorResponse`` with ``invalidParams[{name, reason}]``, and the exchange endpoints'
      ``{title, status, detail, extraDetails}``;
    * OAuth/OIDC errors ``{error, error_description, error_code}`` from the Login API;
    * Azure API Management ``{statusCode, message}`` and plain-text or HTML gateway pages.
    """
    try:
        payload = json.loads(response.content) if response.content else None
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        # Non-JSON gateway answer: only a short, redacted first line is kept.
        excerpt = response.text.strip().splitlines()[0] if response.text.strip() else None
        if excerpt and excerpt.lstrip().startswith("<"):
            excerpt = None  # HTML page: nothing useful, and not worth logging.
        return _ParsedBody(title=response.reason_phrase or None, detail=redact(excerpt))

    extra = _params(payload.get("extraDetails"))
    code: str | None = None
    params: list[InvalidParam] = []
    for item in extra:
        if item.name.lower() == "errorcode" and code is None:
            code = item.reason
        else:
            params.append(item)
    params.extend(_params(payload.get("invalidParams")))
    for key in ("code", "error_code"):
        if code is None and _text(payload.get(key)) is not None:
            code = _text(payload.get(key))
    oauth_error = payload.get("error") if isinstance(payload.get("error"), str) else None
    if code is None and oauth_error is not None:
        code = oauth_error  # OAuth error name, e.g. "invalid_grant".
    title = _text(payload.get("title")) or _text(payload.get("error"))
    detail = (
        _text(payload.get("detail"))
        or _text(payload.get("error_description"))
        or _text(payload.get("message"))
    )
    if title is None or title.lower() in _STATUS_PHRASES:
        # Only the status phrase: what the documented code means, else Vipps's detail, says more.
        title = EPAYMENT_CODE_MEANINGS.get(code or "") or detail or title
    trace_id = _text(payload.get("traceId")) or _text(payload.get("instance"))
    return _ParsedBody(
        title=redact(title),
        detail=redact(detail),
        error_code=redact(code),
        trace_id=_trace_id(trace_id),
        invalid_params=tuple(params),
        oauth_error=redact(oauth_error),
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN or infinite
        return None
    return max(0.0, seconds)


def error_from_response(response: httpx.Response, *, operation: str) -> VippsError:
    """The error for a non-2xx answer. Status decides the class; the body only fills it in."""
    status = response.status_code
    body = parse_error_body(response)
    fields: dict[str, Any] = {
        "operation": operation,
        "status": status,
        "error_code": body.error_code,
        "title": body.title,
        "detail": body.detail,
        "trace_id": body.trace_id,
        "invalid_params": body.invalid_params,
        "oauth_error": body.oauth_error,
    }
    if status == 429 or status == 423 or status >= 500 or body.error_code in RETRY_LATER_CODES:
        # 423: payment locked by a concurrent operation, retry shortly (REFERENCE.md §1).
        # 6250 and 6280 are refusals Vipps tells us to retry (see RETRY_LATER_CODES).
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return VippsUnavailable("Vipps unavailable", retry_after=retry_after, **fields)
    if status in (401, 403):
        return VippsAuthError("Vipps refused the credentials", **fields)
    if status == 404:
        return VippsNotFound("not found at Vipps", **fields)
    if status == 409:
        return VippsConflict("conflict at Vipps", **fields)
    if 400 <= status < 500:
        return VippsRejected("Vipps rejected the request", **fields)
    return VippsUnexpectedResponse("unexpected HTTP status from Vipps", **fields)


def error_from_transport(
    exc: httpx.RequestError, *, operation: str, outcome_unknown: bool = False
) -> VippsUnavailable:
    """The error for a request that got no HTTP answer. Names only the exception type: httpx
    messages can carry URLs, and nothing from the request belongs in an error."""
    kind = type(exc).__name__
    if outcome_unknown:
        return VippsOutcomeUnknown(
            f"no answer from Vipps after sending ({kind})", operation=operation
        )
    return VippsUnavailable(f"no answer from Vipps ({kind})", operation=operation)
