"""Strict mode: check each incoming request against the official OpenAPI files.

Used by end-to-end tests of the service to prove that every request it sends to Vipps would be
accepted by the published contract, not merely by this simulator. Checks:

* the JSON body against the operation's request schema (:mod:`app.simulator.conformance`);
* ``Idempotency-Key`` present (the ePayment spec marks it required on create, capture, refund and
  cancel) and at most 50 characters;
* ``Vipps-System-*`` headers at most 30 characters each.

One documented departure: the cancel body ``{"cancelTransactionOnly": true}`` is newer than the
ePayment 1.4.1 spec, which has no cancel body (REFERENCE.md §7.6); it is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from app.simulator.conformance import SpecViolation, find_operation, validate_request

_SYSTEM_HEADERS = (
    "vipps-system-name",
    "vipps-system-version",
    "vipps-system-plugin-name",
    "vipps-system-plugin-version",
)
_NEEDS_KEY = re.compile(r"^/epayment/v1/payments(/[^/]+/(capture|cancel|refund))?$")
_CANCEL = re.compile(r"^/epayment/v1/payments/[^/]+/cancel$")


def request_violations(
    method: str, path: str, headers: Mapping[str, str], body: bytes
) -> list[str]:
    """Every problem found (empty when the request conforms or has no published spec)."""
    if find_operation(method, path) is None:
        return []  # CIBA, userinfo and the QR image URL have no published spec
    problems: list[str] = []
    for name in _SYSTEM_HEADERS:
        value = headers.get(name)
        if value is not None and len(value) > 30:
            problems.append(f"header {name} is longer than 30 characters")
    if method == "POST" and _NEEDS_KEY.match(path):
        key = headers.get("idempotency-key")
        if not key:
            problems.append("header Idempotency-Key is required")
        elif len(key) > 50:
            problems.append("header Idempotency-Key is longer than 50 characters")
    if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        # The login token endpoint takes a form (login spec), not JSON; its fields are
        # checked by the engine itself.
        return problems
    parsed: Any = None
    if body.strip():
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return [*problems, "the body is not valid JSON"]
    if _CANCEL.match(path) and (
        parsed is None
        or (
            isinstance(parsed, dict)
            and set(parsed) <= {"cancelTransactionOnly"}
            and isinstance(parsed.get("cancelTransactionOnly", False), bool)
        )
    ):
        return problems
    try:
        validate_request(method, path, parsed)
    except SpecViolation as violation:
        problems.append(str(violation))
    return problems
