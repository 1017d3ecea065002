"""The OpenAPI document a POS vendor generates a client from, and Swagger UI served offline.

FastAPI derives the paths and models; this module adds what a client generator and "Try it out"
need and FastAPI does not know:

* the package's version, readable ``operationId``s (the route function's name in camelCase);
* ``securitySchemes``: the bearer key (a till's ``vpk_…`` key or the operator key) on every
  route that authenticates, the display cookie on the display page's routes;
* one ``Problem`` schema (RFC 7807) on every error response, as ``application/problem+json``,
  with an example for each code the response names; its ``code`` and ``FieldError.code``
  descriptions list every code (app/errors.py), as docs/integration.md does;
* Swagger UI from the ``swagger-ui-bundle-v2`` package's files, so ``/docs`` works on a till
  network without internet.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import authenticate, display_grant
from app.api.schemas import RECEIPT_MODELS
from app.errors import FIELD_CODES, PROBLEM_CODES, PROBLEM_JSON, TYPE_BASE

BEARER = "bearerAuth"
DISPLAY_COOKIE = "displayCookie"
_CODE = re.compile(r"`([a-z_]+)`")


def package_version() -> str:
    try:
        return version("vipps-pos")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def operation_id(route: APIRoute) -> str:
    """``create_checkout`` → ``createCheckout``."""
    head, *rest = route.name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _code_list(codes: dict[str, str]) -> str:
    return "\n".join(f"- `{code}`: {meaning}" for code, meaning in codes.items())


class FieldError(BaseModel):
    field: str = Field(
        description="Dotted path of the field, e.g. `receipt.orderLines[2].totalTaxAmount`; "
        "`body` for the body as a whole.",
        examples=["amount"],
    )
    code: str = Field(
        description="Stable; branch on this.\n\n" + _code_list(FIELD_CODES),
        examples=["invalid_type"],
    )
    message: str = Field(description="For people; may change.")


class Problem(BaseModel):
    """RFC 7807 problem details. Branch on `code` (stable), never on `title` or `detail`.
    Some codes add members, e.g. `activeCheckoutId`/`activeCheckoutState`
    (`active_checkout_exists`) or `state` (state rules)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=[TYPE_BASE + "validation_error"])
    title: str
    status: int
    detail: str
    code: str = Field(
        description="Stable; branch on this.\n\n"
        + _code_list({code: meaning for code, (_, meaning) in PROBLEM_CODES.items()}),
    )
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[FieldError] | None = Field(
        default=None, description="`validation_error` only: every invalid field."
    )


def _api_routes(app: FastAPI) -> Iterator[APIRoute]:
    """Every API route, also inside included routers (FastAPI keeps those as their own node)."""
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context.original_route


def _dependencies(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _dependencies(dependency)


def _security(route: APIRoute) -> list[dict[str, list[str]]] | None:
    calls = set(_dependencies(route.dependant))
    if display_grant in calls:
        return [{DISPLAY_COOKIE: []}, {BEARER: []}]
    if authenticate in calls:
        return [{BEARER: []}]
    return None


_EXAMPLE_DETAIL = {
    "unauthorized": "unknown or revoked API key",
    "forbidden": "this API key belongs to another till",
    "validation_error": "amount: must be an integer (amounts: minor units, e.g. 12900 = 129.00)",
    "active_checkout_exists": "till already has an active checkout 6f1c… (PAYMENT_REQUESTED); "
    "cancel or finish it",
    "rate_limited": "too many requests from this till",
}


def _example(code: str, status: int, path: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": "The request is not valid"
        if code == "validation_error"
        else HTTPStatus(status).phrase,
        "status": status,
        "detail": _EXAMPLE_DETAIL.get(code, PROBLEM_CODES[code][1]),
        "code": code,
        "instance": path,
    }
    if code == "validation_error":
        body["errors"] = [
            {
                "field": "amount",
                "code": "invalid_type",
                "message": "must be an integer (amounts: minor units, e.g. 12900 = 129.00)",
            }
        ]
    if code == "active_checkout_exists":
        body["activeCheckoutId"] = "6f1c2e1a-3d4b-4f7a-9a51-0c2f4f6b9e10"
        body["activeCheckoutState"] = "PAYMENT_REQUESTED"
    return body


def _problem_response(status: int, description: str, path: str) -> dict[str, Any]:
    named = [c for c in _CODE.findall(description) if PROBLEM_CODES.get(c, (None,))[0] == status]
    if not named:
        named = [c for c, (s, _) in PROBLEM_CODES.items() if s == status][:1] or ["http_error"]
    if status == 422 and "validation_error" not in named:
        named.insert(0, "validation_error")
    if not _CODE.search(description):
        description = f"{description.rstrip('.')} ({', '.join(f'`{c}`' for c in named)})."
    return {
        "description": description,
        "content": {
            PROBLEM_JSON: {
                "schema": {"$ref": "#/components/schemas/Problem"},
                "examples": {
                    code: {"summary": PROBLEM_CODES[code][1], "value": _example(code, status, path)}
                    for code in named
                },
            }
        },
    }


_DEFAULT_DESCRIPTIONS = {
    401: "Missing, unknown or revoked credential (`unauthorized`).",
    422: "Invalid request; `errors` names each field (`validation_error`).",
}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    models: tuple[type[BaseModel], ...] = (Problem, FieldError, *RECEIPT_MODELS)
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas[model.__name__] = schema
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "A till's API key (`vpk_<id>_<secret>`, acts on its own till only) "
            "or the operator key (`VIPPS_POS_SECURITY__ADMIN_API_KEY`). The display page "
            "routes take a display token (`vdt1.…`) instead.",
        },
        DISPLAY_COOKIE: {
            "type": "apiKey",
            "in": "cookie",
            "name": "vipps_pos_display",
            "description": "The display page's session (set by `POST .../display/session`).",
        },
    }
    routes = {operation_id(route): route for route in _api_routes(app)}
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            route = routes.get(operation.get("operationId", ""))
            security = _security(route) if route is not None else None
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if security:
                operation["security"] = security
                responses.setdefault("401", {"description": _DEFAULT_DESCRIPTIONS[401]})
            for status, response in list(responses.items()):
                if not status.isdigit() or int(status) < 400:
                    continue
                text = response.get("description") or _DEFAULT_DESCRIPTIONS.get(int(status), "")
                if int(status) == 422 and text == "Validation Error":
                    text = _DEFAULT_DESCRIPTIONS[422]
                responses[status] = _problem_response(int(status), text, path)
    return document


def install_openapi(app: FastAPI, *, serve_docs: bool = True) -> None:
    """Build the document (``app.openapi()``) and, with ``serve_docs``, serve Swagger UI at
    ``/docs`` from the package's own files (no outside CDN)."""
    from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if not serve_docs:
        return
    app.mount("/docs/static", StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title=f"{app.title} {app.version} — API",
            swagger_js_url=f"{root}/docs/static/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/static/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/static/favicon-32x32.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters={"persistAuthorization": True, "tryItOutEnabled": False},
        )
