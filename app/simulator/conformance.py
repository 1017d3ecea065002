"""Validate Vipps MobilePay requests and responses against the official OpenAPI files.

The files in ``specs/`` are byte-exact copies of what Vipps MobilePay published (see
``specs/SOURCES.md``). Two fixes are applied in memory only, both from REFERENCE.md §11:

* ePayment takes ``receipt`` from a remote ``$ref``; it is pointed at the local Order Management
  copy (``latest`` by default, which has ``taxRate``; 2.3.24 requires ``taxPercentage``).
* ``Customer`` is a ``oneOf`` whose alternatives require nothing, so any customer object matches all
  three and a strict validator rejects every valid request. Each alternative gets its one property
  as ``required``, which is the documented rule "exactly one of them".

OpenAPI 3.0 ``nullable: true`` is rewritten to a JSON-Schema type union.

The CIBA login endpoints have no published spec (SOURCES.md); :func:`find_operation` answers
``None`` for them and callers decide what that means.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SPEC_DIR = Path(__file__).parent / "specs"
_REMOTE_RECEIPT = (
    "https://raw.githubusercontent.com/vippsas/vipps-order-management-api/2.3.24/docs/swagger.yaml"
)

# (spec file, path prefix the servers entry adds)
_SPECS: dict[str, tuple[str, str]] = {
    "access-token": ("access-token-api/swagger.yaml", ""),
    "login": ("login-api/swagger.yaml", ""),
    "qr": ("qr-api/swagger.yaml", "/qr"),
    "webhooks": ("webhooks-api/swagger.yaml", "/webhooks"),
    "epayment": ("epayment-api/epayment.v1.yml", ""),
}
_CUSTOMER_ALTERNATIVES = {
    "CustomerPhoneNumber": "phoneNumber",
    "PersonalQrCode": "personalQr",
    "CustomerToken": "customerToken",
}


class SpecViolation(AssertionError):
    """A body does not match the official schema."""


@dataclass(frozen=True)
class Operation:
    api: str
    method: str
    template: str
    spec: dict[str, Any]
    document: str

    def request_schema(self) -> dict[str, Any] | None:
        content = self.spec.get("requestBody", {}).get("content", {})
        for media, body in content.items():
            if "json" in media and "schema" in body:
                return dict(body["schema"])
        return None

    def response_schema(self, status: int) -> dict[str, Any] | None:
        responses = self.spec.get("responses", {})
        response = responses.get(str(status)) or responses.get("default")
        if response is None:
            raise SpecViolation(
                f"{self.method} {self.template}: status {status} is not a documented response "
                f"(documented: {sorted(responses)})"
            )
        response = _deref(response, self.document)
        for media, body in response.get("content", {}).items():
            if "json" in media and "schema" in body:
                return dict(body["schema"])
        return None


def _nullable_to_union(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _nullable_to_union(v) for k, v in node.items()}
        if out.pop("nullable", False) is True:
            if "type" in out:
                out["type"] = [out["type"], "null"]
            elif "$ref" in out or "allOf" in out or "oneOf" in out or "anyOf" in out:
                out = {"anyOf": [out, {"type": "null"}]}
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        return out
    if isinstance(node, list):
        return [_nullable_to_union(item) for item in node]
    return node


def _load_yaml(relative: str) -> dict[str, Any]:
    with (SPEC_DIR / relative).open(encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle)
    assert isinstance(loaded, dict)
    return loaded


def _uri(name: str) -> str:
    return f"urn:vipps-spec:{name}"


@cache
def _registry(order_management: str = "latest") -> Registry:
    registry: Registry = Registry()
    for api, (relative, _prefix) in _SPECS.items():
        document = _load_yaml(relative)
        if api == "epayment":
            document = _patch_epayment(document, order_management)
        registry = registry.with_resource(
            _uri(api), Resource.from_contents(_nullable_to_union(document), DRAFT4)
        )
    for version in ("latest", "2.3.24"):
        document = _load_yaml(f"order-management-api/{version}/swagger.yaml")
        registry = registry.with_resource(
            _uri(f"order-management-{version}"),
            Resource.from_contents(_nullable_to_union(document), DRAFT4),
        )
    return registry


def _patch_epayment(document: dict[str, Any], order_management: str) -> dict[str, Any]:
    patched = copy.deepcopy(document)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(_REMOTE_RECEIPT):
                fragment = ref.split("#", 1)[1]
                node["$ref"] = f"{_uri(f'order-management-{order_management}')}#{fragment}"
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(patched)
    schemas = patched["components"]["schemas"]
    for name, prop in _CUSTOMER_ALTERNATIVES.items():
        if name in schemas:
            schemas[name] = {**schemas[name], "required": [prop]}
    return patched


def _deref(node: dict[str, Any], document: str) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = _registry().contents(_uri(document))
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


@cache
def _operations() -> list[Operation]:
    found: list[Operation] = []
    for api, (_relative, prefix) in _SPECS.items():
        document = _registry().contents(_uri(api))
        for template, item in document.get("paths", {}).items():
            for method, spec in item.items():
                if method.lower() in {"get", "put", "post", "delete", "patch"}:
                    found.append(Operation(api, method.upper(), prefix + template, spec, api))
    return found


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
    return re.compile(f"^{pattern}$")


def find_operation(method: str, path: str) -> Operation | None:
    """The documented operation for a concrete request path, or ``None`` (e.g. CIBA)."""
    method = method.upper()
    path = path.split("?", 1)[0]
    candidates = [
        op
        for op in _operations()
        if op.method == method and _template_regex(op.template).match(path)
    ]
    # Prefer the most literal template: /v1/merchant-callback/mobilepay/{id} over /{id}.
    candidates.sort(key=lambda op: op.template.count("{"))
    return candidates[0] if candidates else None


def _validator(schema: dict[str, Any], document: str, order_management: str) -> Draft4Validator:
    registry = _registry(order_management)
    # Resolve local "#/components/..." references against the spec the schema came from.
    root = {**registry.contents(_uri(document)), "__schema__": schema}
    resource = Resource.from_contents(root, DRAFT4)
    registry = registry.with_resource(_uri(document) + ":root", resource)
    return Draft4Validator(
        {"$ref": _uri(document) + ":root#/__schema__"},
        registry=registry,
    )


def _errors(schema: dict[str, Any], document: str, body: Any, om: str) -> Iterator[str]:
    for error in _validator(schema, document, om).iter_errors(body):
        location = "/".join(str(p) for p in error.absolute_path) or "<body>"
        yield f"{location}: {error.message}"


def validate_request(
    method: str, path: str, body: Any, *, order_management: str = "latest"
) -> Operation:
    """Raise :class:`SpecViolation` if ``body`` is not what the spec allows for this request."""
    operation = _require(method, path)
    schema = operation.request_schema()
    if schema is None:
        if body not in (None, b"", {}):
            raise SpecViolation(f"{method} {path}: the spec defines no JSON body")
        return operation
    problems = list(_errors(schema, operation.document, body, order_management))
    if problems:
        raise SpecViolation(f"{method} {path} request: " + "; ".join(problems))
    return operation


def validate_response(
    method: str, path: str, status: int, body: Any, *, order_management: str = "latest"
) -> Operation:
    """Raise :class:`SpecViolation` if a response does not match the documented one."""
    operation = _require(method, path)
    schema = operation.response_schema(status)
    if schema is not None:
        problems = list(_errors(schema, operation.document, body, order_management))
        if problems:
            raise SpecViolation(f"{method} {path} -> {status}: " + "; ".join(problems))
    return operation


def validate_schema(
    api: str, schema_name: str, body: Any, *, order_management: str = "latest"
) -> None:
    """Validate against a named component schema, e.g. ``("epayment", "WebhookEvent")``."""
    schema = {"$ref": f"#/components/schemas/{schema_name}"}
    problems = list(_errors(schema, api, body, order_management))
    if problems:
        raise SpecViolation(f"{api}:{schema_name}: " + "; ".join(problems))


def _require(method: str, path: str) -> Operation:
    operation = find_operation(method, path)
    if operation is None:
        raise SpecViolation(f"{method} {path} is not in any official spec")
    return operation
