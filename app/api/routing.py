"""The route class of every POS and operator router: text the database cannot hold is refused
at the door with a 422 that names the field.

PostgreSQL text cannot hold NUL (U+0000), and a lone UTF-16 surrogate (``"\\ud800"`` in JSON) is
not Unicode at all: neither can be stored, hashed for idempotency or logged. Python's JSON parser
accepts both, so before FastAPI validates anything the route looks at every string the request
carries — path and query parameters, and each key and value of a JSON body — and answers a
``validation_error`` with code ``invalid_text`` for the first such string in each place. The
body is parsed once: the parsed value is kept on the request, where FastAPI's own reading
finds it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

# A JSON body can only carry these characters as escapes (raw control characters and invalid
# UTF-8 are refused by the parser): a cheap test before walking the parsed value.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_SURROGATE = re.compile("[\ud800-\udfff]")
_MESSAGE = "must not contain NUL characters or unpaired UTF-16 surrogates"


def is_unsafe_text(text: str) -> bool:
    """True for text that contains NUL or a lone surrogate."""
    return "\x00" in text or _SURROGATE.search(text) is not None


def _unsafe_paths(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if isinstance(value, str):
        if is_unsafe_text(value):
            yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            if is_unsafe_text(key):
                yield path  # the key itself: name the object that holds it
            else:
                yield from _unsafe_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _unsafe_paths(item, (*path, index))


def _error(loc: tuple[str | int, ...]) -> dict[str, Any]:
    return {"type": "invalid_text", "loc": loc, "msg": _MESSAGE, "input": None}


async def unsafe_text_errors(request: Request) -> list[dict[str, Any]]:
    """Validation errors (pydantic's shape) for every unsafe string of ``request``."""
    errors = [
        _error(("path", name)) for name, v in request.path_params.items() if is_unsafe_text(str(v))
    ]
    errors += [
        _error(("query", name))
        for name, v in request.query_params.multi_items()
        if is_unsafe_text(name) or is_unsafe_text(v)
    ]
    content_type = request.headers.get("content-type", "")
    if request.method in ("POST", "PUT", "PATCH") and "json" in content_type:
        body = await request.body()
        if _SUSPECT_ESCAPE.search(body):
            try:
                parsed = json.loads(body)
            except ValueError:
                return errors  # FastAPI reports the syntax error itself
            request._json = parsed  # Starlette's cache, which request.json() reads
            errors += [_error(("body", *path)) for path in _unsafe_paths(parsed)]
    return errors


class TextCheckedRoute(APIRoute):
    """An :class:`APIRoute` that refuses NUL and lone surrogates anywhere in the request."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            errors = await unsafe_text_errors(request)
            if errors:
                raise RequestValidationError(errors)
            return await handler(request)

        return checked


def problems(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route's errors: status → description naming its codes in
    backticks. The document gives each the ``Problem`` schema and one example per named code
    (app/api/openapi.py)."""
    return {status: {"description": text} for status, text in described.items()}


# Error responses shared by the operator routes (app/api/admin.py, reports.py).
OPERATOR_PROBLEMS: dict[int, str] = {
    401: "Missing, unknown or revoked credential (`unauthorized`).",
    403: "Operator credential required (`forbidden`).",
    422: "Invalid request; `errors` names each field (`validation_error`).",
}
# ... and by those that call Vipps on the operator's behalf.
VIPPS_PROBLEMS: dict[int, str] = {
    422: "Invalid request (`validation_error`), or our Vipps credentials do not cover the MSN "
    "(`msn_not_accessible`).",
    429: "Vipps limits calls (`vipps_rate_limited`); wait `Retry-After` seconds.",
    502: "Vipps refused the request (`vipps_refused`).",
    503: "Vipps could not be reached (`vipps_unavailable`).",
}
