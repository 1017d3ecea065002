"""RFC 7807 problem+json for the POS and admin API, with stable machine-readable codes.

Every error a till can see is an :class:`ApiProblem` with a ``code`` that never changes meaning;
integrators branch on ``code``, never on ``title`` or ``detail``. Validation errors list each
offending field under ``errors``. Codes are documented in docs/integration.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.service.errors import ServiceError

PROBLEM_JSON = "application/problem+json"
# Where the correlation middleware leaves the request id for handlers outside it.
REQUEST_ID_SCOPE_KEY = "vipps_pos.request_id"
TYPE_BASE = "https://vipps-pos.example/problems/"


class ApiProblem(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = headers
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


def problem_response(problem: ApiProblem, instance: str | None = None) -> JSONResponse:
    return JSONResponse(
        problem.body(instance),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


# ---- the codes ------------------------------------------------------------------------------
#
# Every ``code`` the API can answer with, in one place. docs/integration.md lists each of them,
# the OpenAPI document carries these tables (``Problem.code``, ``FieldError.code``), and
# tests/api/test_error_codes.py fails on any code the API emits that is missing from either.

# code → (HTTP status, 0 for any; meaning)
PROBLEM_CODES: Final[dict[str, tuple[int, str]]] = {
    "bad_request": (400, "Generic bad request."),
    "unauthorized": (401, "No API key, an unknown or revoked key (or no valid display token)."),
    "forbidden": (403, "The key belongs to another till, or an operator credential is needed."),
    "not_found": (404, "No such route or resource."),
    "checkout_not_found": (404, "No such checkout (or not this till's)."),
    "till_not_found": (404, "No such till."),
    "store_not_found": (404, "No such store."),
    "member_not_found": (404, "No such club member."),
    "method_not_allowed": (405, "Wrong HTTP method for this path."),
    "conflict": (409, "Generic conflict."),
    "active_checkout_exists": (
        409,
        "The till already has an active checkout (`activeCheckoutId`, `activeCheckoutState`).",
    ),
    "idempotency_key_reused": (409, "The same Idempotency-Key came with a different body."),
    "till_inactive": (409, "The till is deactivated."),
    "till_exists": (409, "A till with this id exists."),
    "admin_key_exists": (409, "An active admin key has this name."),
    "admin_key_not_found": (404, "No such active admin key."),
    "checkin_webhook_taken": (
        409,
        "Another webhook registration at Vipps holds `user.checked-in.v1` for this MSN.",
    ),
    "members_managed_elsewhere": (409, "Members live in the chain's loyalty system, not here."),
    "checkout_final": (409, "The checkout has ended."),
    "release_in_progress": (409, "Cancel while the reservation is already being released."),
    "capture_in_progress": (409, "Cancel while a capture is in flight or done: refund instead."),
    "not_authorized": (409, "Capture before the customer approved."),
    "already_captured": (409, "Capture of a captured checkout."),
    "amount_exceeds_authorized": (409, "Capture of more than is left of the reservation."),
    "not_captured": (409, "Refund of something not captured."),
    "already_refunded": (409, "Refund of a fully refunded checkout."),
    "amount_exceeds_captured": (409, "Refund of more than captured minus refunded."),
    "invalid_amount": (409, "Nothing to capture or refund."),
    "update_not_expected": (409, "Member price while the checkout is not waiting for one."),
    "update_window_closed": (409, "Member price after the payment request went out."),
    "validation_error": (422, "The request is invalid; `errors[]` names each field with its code."),
    "payload_too_large": (413, "The request body is too large."),
    "rate_limited": (429, "Too many requests; wait `Retry-After` seconds."),
    "msn_not_accessible": (422, "Vipps says our keys do not cover this sales unit (MSN) (403)."),
    "msn_not_covered": (
        422,
        "No Vipps keys cover the till's MSN: add its keys or configure partner keys.",
    ),
    "vipps_keys_not_found": (404, "No stored keys for this sales unit."),
    "vipps_keys_exist": (409, "The sales unit has keys; rotate them."),
    "vipps_keys_in_use": (409, "Active tills would be left without keys."),
    "vipps_keys_rejected": (422, "Vipps refused the keys offered for a sales unit."),
    "vipps_keys_refused": (422, "Vipps refused the keys we hold (401): rotate them."),
    "webhook_url_refused": (
        422,
        "Vipps would not (or did not) register our webhook URL; fix "
        "`VIPPS_POS_WEBHOOKS__PUBLIC_URL`.",
    ),
    "vipps_refused": (502, "Vipps refused an operator action (e.g. creating a QR)."),
    "vipps_rate_limited": (429, "Vipps limits calls per payment; wait `Retry-After` seconds."),
    "vipps_unavailable": (503, "Vipps could not be reached for an operator action."),
    "invalid_signature": (
        401,
        "Webhook endpoint only: HMAC or `x-ms-date` rejected; nothing stored.",
    ),
    "internal_error": (500, "An unexpected error on our side; the request id is in `requestId`."),
    "http_error": (0, "Any other HTTP error."),
}

# ``errors[].code`` of a ``validation_error``. The receipt rules (app/domain/receipt.py) use the
# same names; what pydantic finds is mapped onto them by :func:`field_code`.
FIELD_CODES: Final[dict[str, str]] = {
    "required": "A required field is missing.",
    "invalid_type": 'Wrong JSON type: e.g. `true`, `"5"` or `12900.0` where an integer '
    "belongs (amounts are integers in minor units).",
    "invalid_json": "The body is not JSON.",
    "invalid_text": "Text contains a NUL character or a lone UTF-16 surrogate.",
    "invalid_format": "Text does not have the required form (a pattern, a date).",
    "unknown_field": "A field this request does not have (check the spelling).",
    "invalid_value": "Any other invalid value.",
    "blank": "`name`/`id` is empty.",
    "too_short": "Text (or a list) is too short (description: 3–100 characters).",
    "too_long": "Text (or a list) is too long (location description: at most 36).",
    "out_of_range": "A number out of bounds (e.g. `taxRate` > 10000).",
    "amount_too_small": "Below the currency's minimum (NOK: 100 øre; DKK, EUR: 1).",
    "amount_too_large": "Above 65 000 000 minor units.",
    "unsupported_currency": "Not NOK, DKK or EUR.",
    "unsupported_value": "Not one of the allowed values (e.g. `captureMode`, `quantityUnit`).",
    "currency_mismatch": "The receipt's currency differs from the checkout's.",
    "no_order_lines": "A receipt without order lines.",
    "too_many_order_lines": "More than 1000 order lines.",
    "line_total_mismatch": "`totalAmount` ≠ `totalAmountExcludingTax` + `totalTaxAmount`.",
    "tax_missing": "Neither `taxRate` nor `taxPercentage`.",
    "tax_conflict": "`taxRate` and `taxPercentage` disagree.",
    "invalid_quantity": "`unitInfo.quantity` is not a decimal string.",
    "receipt_total_mismatch": "The order lines (returns negative, plus tip) do not add up to "
    "`amount`.",
}

# Warnings on an accepted checkout (``warnings[].code``): they never block a sale.
WARNING_CODES: Final[dict[str, str]] = {
    "unit_price_mismatch": "`unitPrice` × `quantity` does not explain the line total.",
    "tax_rate_mismatch": "The tax rate does not explain the tax amount.",
    "tax_percentage_deprecated": "`taxPercentage` alone (older receipt schema).",
    "negative_line_amount": "A negative line amount (use `isReturn`/`discount`).",
    "deprecated_field_dropped": "A deprecated field was removed before sending.",
}

# pydantic's error types (pydantic_core ``ErrorType``) that do not follow the suffix rules below.
_PYDANTIC_CODES: Final[dict[str, str]] = {
    "missing": "required",
    "missing_argument": "required",
    "missing_keyword_only_argument": "required",
    "missing_positional_only_argument": "required",
    "missing_sentinel_error": "required",
    "extra_forbidden": "unknown_field",
    "unexpected_keyword_argument": "unknown_field",
    "unexpected_positional_argument": "unknown_field",
    "no_such_attribute": "unknown_field",
    "json_invalid": "invalid_json",
    "json_type": "invalid_json",
    "string_unicode": "invalid_text",
    "bytes_invalid_encoding": "invalid_text",
    "invalid_text": "invalid_text",
    "string_too_long": "too_long",
    "too_long": "too_long",
    "bytes_too_long": "too_long",
    "url_too_long": "too_long",
    "string_too_short": "too_short",
    "too_short": "too_short",
    "bytes_too_short": "too_short",
    "greater_than": "out_of_range",
    "greater_than_equal": "out_of_range",
    "less_than": "out_of_range",
    "less_than_equal": "out_of_range",
    "multiple_of": "out_of_range",
    "finite_number": "out_of_range",
    "int_parsing_size": "out_of_range",
    "decimal_max_digits": "out_of_range",
    "decimal_max_places": "out_of_range",
    "decimal_whole_digits": "out_of_range",
    "date_future": "out_of_range",
    "date_past": "out_of_range",
    "datetime_future": "out_of_range",
    "datetime_past": "out_of_range",
    "literal_error": "unsupported_value",
    "enum": "unsupported_value",
    "union_tag_invalid": "unsupported_value",
    "union_tag_not_found": "required",
    "string_pattern_mismatch": "invalid_format",
    "string_not_ascii": "invalid_format",
    "url_scheme": "invalid_format",
    "url_syntax_violation": "invalid_format",
    "uuid_version": "invalid_format",
    "timezone_aware": "invalid_format",
    "timezone_naive": "invalid_format",
    "timezone_offset": "invalid_format",
    "date_from_datetime_inexact": "invalid_format",
    "int_from_float": "invalid_type",
    "is_instance_of": "invalid_type",
    "is_subclass_of": "invalid_type",
    "none_required": "invalid_type",
    "needs_python_object": "invalid_type",
}
_NUMERIC_PARSING: Final = frozenset(
    {"int_parsing", "float_parsing", "bool_parsing", "decimal_parsing", "complex_str_parsing"}
)
_AMOUNT_BOUNDS: Final[dict[str, str]] = {
    "greater_than": "amount_too_small",
    "greater_than_equal": "amount_too_small",
    "less_than": "amount_too_large",
    "less_than_equal": "amount_too_large",
}


def field_code(error_type: str, field: str) -> str:
    """The documented ``errors[].code`` for a pydantic error ``error_type`` at ``field``.

    Total: every pydantic error type maps to a code in :data:`FIELD_CODES` (the last resort is
    ``invalid_value``). Amount bounds and the currency get the same codes the receipt rules use.
    """
    leaf = field.rsplit(".", 1)[-1]
    if leaf == "amount" and error_type in _AMOUNT_BOUNDS:
        return _AMOUNT_BOUNDS[error_type]
    if leaf == "currency" and error_type == "literal_error":
        return "unsupported_currency"
    if error_type in _PYDANTIC_CODES:
        return _PYDANTIC_CODES[error_type]
    if error_type.endswith("_type") or error_type in _NUMERIC_PARSING:
        return "invalid_type"
    if error_type.endswith("_parsing"):  # dates, times, UUIDs, URLs given as text
        return "invalid_format"
    return "invalid_value"


def field_name(loc: tuple[Any, ...] | list[Any], error_type: str = "") -> str:
    """``("body", "receipt", "orderLines", 0, "name")`` → ``receipt.orderLines[0].name``."""
    if error_type in ("json_invalid", "json_type"):
        return "body"  # pydantic's loc is the character offset, which is no field
    parts = [p for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def _message(error: Mapping[str, Any], code: str) -> str:
    if code == "invalid_json":
        reason = (error.get("ctx") or {}).get("error")
        return f"the body is not valid JSON ({reason})" if reason else "the body is not valid JSON"
    if code == "unknown_field":
        return "is not a field of this request"
    if code == "invalid_type" and error.get("type") in (
        "int_type",
        "int_from_float",
        "int_parsing",
    ):
        return "must be an integer (amounts: minor units, e.g. 12900 = 129.00)"
    return str(error.get("msg", "invalid value"))


def validation_problem(raw_errors: Sequence[Mapping[str, Any]]) -> ApiProblem:
    """One 422 ``validation_error`` from pydantic's error list, with documented field codes."""
    errors: list[dict[str, str]] = []
    for error in raw_errors:
        error_type = str(error.get("type", ""))
        field = field_name(error.get("loc", ()), error_type)
        code = field_code(error_type, field)
        errors.append({"field": field, "code": code, "message": _message(error, code)})
    return ApiProblem(
        422,
        "validation_error",
        "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]),
        title="The request is not valid",
        errors=errors,
    )


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        problem = ApiProblem(
            exc.status,
            exc.code,
            exc.detail,
            title=exc.title,
            errors=exc.errors,
            headers=exc.headers,
            **exc.extra,
        )
        return problem_response(problem, request.url.path)

    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(validation_problem(exc.errors()), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            400: "bad_request",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        problem = ApiProblem(exc.status_code, code, str(exc.detail), headers=headers)
        return problem_response(problem, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this response (the server logs the traceback) and the
        # server then drops the connection: ``Connection: close`` tells the till so, and its
        # next request opens a new connection instead of failing on a dead one.
        # This handler runs outside the correlation middleware, which left the id in the scope.
        request_id = str(request.scope.get(REQUEST_ID_SCOPE_KEY) or "")
        problem = ApiProblem(
            500,
            "internal_error",
            "unexpected error; the request id helps the operator find it in the log",
            headers={"Connection": "close", "x-request-id": request_id},
            requestId=request_id,
        )
        return problem_response(problem, request.url.path)
