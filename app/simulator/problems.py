"""Error bodies exactly as each Vipps MobilePay API family writes them (REFERENCE.md §1).

* ePayment: RFC 7807 ``Problem`` (``type``, ``title``, ``detail``, ``status``, ``traceId``) as
  ``application/problem+json``; domain errors carry ``extraDetails: [{"name": "ErrorCode",
  "reason": "6080"}]``.
* Webhooks API: ``ProblemDetails`` (same fields, ``additionalProperties: false``).
* QR merchant callback: ``QrErrorResponse`` (``title``, ``detail``, ``instance``,
  ``invalidParams``).
* QR customer exchange: ``{title, status, detail, extraDetails}``.
* Login: OAuth ``{"error": ..., "error_description": ...}``.
* Azure API Management (the gateway in front of everything): ``{"statusCode", "message"}`` for
  401 and 429, which is why clients must parse error bodies defensively.

:class:`SimError` carries a finished response; handlers raise it and one exception handler
renders it, so every error path produces exactly one of these shapes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import orjson

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    423: "Locked",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
_TYPE_BASE = "https://developer.vippsmobilepay.com/docs/APIs/epayment-api/api-guide/errors"


class SimError(Exception):
    """A complete error response: status, JSON body, content type and extra headers."""

    def __init__(
        self,
        status: int,
        body: Mapping[str, Any],
        *,
        media_type: str = PROBLEM_JSON,
        headers: Mapping[str, str] | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(f"{status}: {body.get('detail') or body.get('error') or body}")
        self.status = status
        self.body = dict(body)
        self.media_type = media_type
        self.headers = dict(headers or {})
        # Not remembered against the Idempotency-Key: Vipps says to retry with the same key.
        self.transient = transient

    def render(self) -> bytes:
        return orjson.dumps(self.body)


def trace_id() -> str:
    return uuid.uuid4().hex


def title(status: int) -> str:
    return _TITLES.get(status, "Error")


def epayment_problem(
    status: int,
    detail: str,
    *,
    code: str | None = None,
    fields: Iterable[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
    transient: bool = False,
) -> SimError:
    """An ePayment ``Problem``; ``code`` becomes the ``ErrorCode`` extra detail."""
    extra = [{"name": name, "reason": reason} for name, reason in fields]
    if code is not None:
        extra.insert(0, {"name": "ErrorCode", "reason": code})
    body: dict[str, Any] = {
        "type": f"{_TYPE_BASE}#{code or status}",
        "title": title(status),
        "detail": detail,
        "status": status,
        "traceId": trace_id(),
    }
    if extra:
        body["extraDetails"] = extra
    return SimError(status, body, headers=headers, transient=transient)


def webhooks_problem(
    status: int, detail: str, *, instance: str, fields: Iterable[tuple[str, str]] = ()
) -> SimError:
    """A Webhooks API ``ProblemDetails`` (no properties beyond the documented ones)."""
    tid = trace_id()
    body: dict[str, Any] = {
        "type": f"00-{tid}-00",
        "title": title(status),
        "status": status,
        "detail": detail,
        "instance": instance,
        "traceId": tid,
    }
    extra = [{"name": name, "reason": reason} for name, reason in fields]
    if extra:
        body["extraDetails"] = extra
    return SimError(status, body)


def qr_problem(status: int, detail: str, *, fields: Iterable[tuple[str, str]] = ()) -> SimError:
    """A QR API ``QrErrorResponse`` (served as ``application/json``, as the spec says)."""
    body: dict[str, Any] = {
        "type": "https://datatracker.ietf.org/doc/html/rfc7231#section-6.5.1",
        "title": title(status) if status != 400 else "One or more validation errors occurred.",
        "detail": detail,
        "instance": f"00-{trace_id()}-00",
    }
    params = [{"name": name, "reason": reason} for name, reason in fields]
    if params:
        body["invalidParams"] = params
    return SimError(status, body, media_type=JSON)


def exchange_problem(
    status: int, detail: str, *, fields: Iterable[tuple[str, str]] = ()
) -> SimError:
    """The customer-exchange error: ``{title, status, detail, extraDetails}`` (QR spec)."""
    body: dict[str, Any] = {"title": title(status), "status": status, "detail": detail}
    extra = [{"name": name, "reason": reason} for name, reason in fields]
    if extra:
        body["extraDetails"] = extra
    return SimError(status, body, media_type=JSON)


def oauth_error(status: int, error: str, description: str) -> SimError:
    """An OAuth 2.0 / CIBA error (RFC 6749 §5.2, OpenID CIBA §11)."""
    return SimError(
        status,
        {"error": error, "error_description": description, "error_code": status},
        media_type=JSON,
        headers={"Cache-Control": "no-store"},
    )


def gateway_error(
    status: int,
    message: str,
    *,
    style: Literal["apim", "problem"],
    headers: Mapping[str, str] | None = None,
) -> SimError:
    """An error the API gateway answers before any API sees the request (401, 429)."""
    if style == "apim":
        return SimError(
            status, {"statusCode": status, "message": message}, media_type=JSON, headers=headers
        )
    return epayment_problem(status, message, headers=headers)
