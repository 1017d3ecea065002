"""The POS contract: every code the API can answer with is documented, in docs/integration.md and
in the OpenAPI document, and every bad request is a problem+json naming its field.

Two ways to find the codes the API can emit: enumerating the tables (pydantic's every error type,
the service's error classes, the state machine's refusals, the receipt rules), and sending a
corpus of bad requests to every POS and operator route of the OpenAPI document.
"""

from __future__ import annotations

import ast
import copy
import importlib
import json
import pkgutil
import re
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from pydantic_core.core_schema import ErrorType

import app
from app.api.schemas import Barcode, UnitInfo
from app.domain import receipt as receipt_rules
from app.errors import FIELD_CODES, PROBLEM_CODES, PROBLEM_JSON, WARNING_CODES, field_code
from app.service.errors import ServiceError
from tests.api.support import VIPPS_EXAMPLE_RECEIPT, assert_problem, checked_stack, count_rows
from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parents[2]


def documented_codes() -> set[str]:
    """Backticked codes in the first column(s) of the tables of "Errors and every code"."""
    text = (ROOT / "docs" / "integration.md").read_text(encoding="utf-8")
    section = text.split("## Errors and every code", 1)[1].split("\n## ", 1)[0]
    codes: set[str] = set()
    for line in section.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            for cell in cells[:2]:
                codes.update(re.findall(r"`([a-z][a-z0-9_]*)`", cell))
    return codes


def openapi_codes(document: dict[str, Any]) -> tuple[set[str], set[str], set[str]]:
    schemas = document["components"]["schemas"]

    def listed(description: str) -> set[str]:
        return set(re.findall(r"^- `([a-z0-9_]+)`", description, re.MULTILINE))

    return (
        listed(schemas["Problem"]["properties"]["code"]["description"]),
        listed(schemas["FieldError"]["properties"]["code"]["description"]),
        listed(schemas["ReceiptWarning"]["properties"]["code"]["description"]),
    )


def refusal_codes() -> set[str]:
    """Every code the state machine refuses a request with (string literals in its source)."""
    tree = ast.parse((ROOT / "app" / "domain" / "state_machine.py").read_text(encoding="utf-8"))
    codes: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            position = {"_refuse": 0, "InvalidTransition": 2}.get(node.func.id)
            if position is not None and len(node.args) > position:
                argument = node.args[position]
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    codes.add(argument.value)
    assert len(codes) >= 10, codes  # the parse found the refusals
    return codes


def service_error_codes() -> set[str]:
    for module in pkgutil.walk_packages(app.__path__, "app."):
        if ".simulator" not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    codes: set[str] = set()
    pending: list[type[ServiceError]] = [ServiceError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return codes


def test_every_pydantic_error_type_maps_to_a_documented_field_code() -> None:
    for error_type in get_args(ErrorType):
        for field in ("description", "amount", "currency", "receipt.bottomLine.currency"):
            assert field_code(error_type, field) in FIELD_CODES, (error_type, field)
    # The cases the first integrators met.
    assert field_code("missing", "amount") == "required"
    assert field_code("literal_error", "currency") == "unsupported_currency"
    assert field_code("string_too_long", "locationDescription") == "too_long"
    assert field_code("int_from_float", "amount") == "invalid_type"
    assert field_code("extra_forbidden", "amout") == "unknown_field"
    assert field_code("json_invalid", "body") == "invalid_json"
    assert field_code("greater_than_equal", "amount") == "amount_too_small"
    assert field_code("less_than_equal", "amount") == "amount_too_large"


def test_every_code_in_the_tables_is_documented_in_both_places() -> None:
    from app.main import create_app
    from tests.support.stack import service_settings

    document = create_app(service_settings("sqlite+aiosqlite:///:memory:")).openapi()
    problem, field, warning = openapi_codes(document)
    docs = documented_codes()
    emitted_problems = service_error_codes() | refusal_codes()
    assert emitted_problems <= set(PROBLEM_CODES), emitted_problems - set(PROBLEM_CODES)
    assert set(FIELD_CODES) >= receipt_rules.ERROR_CODES
    assert set(WARNING_CODES) == receipt_rules.WARNING_CODES
    assert set(PROBLEM_CODES) <= problem, set(PROBLEM_CODES) - problem
    assert set(FIELD_CODES) <= field, set(FIELD_CODES) - field
    assert set(WARNING_CODES) <= warning
    undocumented = (set(PROBLEM_CODES) | set(FIELD_CODES) | set(WARNING_CODES)) - docs
    assert not undocumented, f"missing from docs/integration.md: {sorted(undocumented)}"
    # The receipt's schema in the document holds the receipt rules' own vocabularies.
    unit = UnitInfo.model_json_schema()["properties"]["quantityUnit"]["anyOf"][0]["enum"]
    assert set(unit) == receipt_rules.QUANTITY_UNITS
    barcode = Barcode.model_json_schema()["properties"]["format"]["enum"]
    assert set(barcode) == receipt_rules.BARCODE_FORMATS


# ---- the corpus -------------------------------------------------------------------------------

JSON = {"content-type": "application/json"}


def as_json(body: Any) -> dict[str, bytes]:
    """The body as JSON with ASCII escapes, so lone surrogates travel as ``\\ud800`` the way
    a till's JSON library would send them (httpx's own encoder refuses them)."""
    return {"content": json.dumps(body).encode()}


PATH_VALUES = {
    "till_id": "till-1",
    "store_id": "store-1",
    "msn": "123456",
    "member_id": "m-1",
}


def _wrong_values(schema: dict[str, Any], components: dict[str, Any]) -> list[Any]:
    """Values of the wrong type or out of bounds for a property ``schema``."""
    if "$ref" in schema:
        return ["not-an-object", 5]
    options = schema.get("anyOf", [schema])
    types = {o.get("type") for o in options}
    values: list[Any] = []
    if "integer" in types:
        values += [True, "5", 12900.0, "129.00", 2**70]
    if "string" in types:
        values += [17, True, ["x"], "x" * 5000, "a\u0000b", "\ud800"]
    if "boolean" in types:
        values += ["true", 1]
    if "array" in types:
        values += ["x", {"a": 1}]
    if not values:
        values += [["not", "this"]]
    return values


def _request_example(operation: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    content = operation["requestBody"]["content"]["application/json"]["schema"]
    ref = next(
        (o["$ref"] for o in content.get("anyOf", [content]) if "$ref" in o), content.get("$ref")
    )
    schema = components[ref.rsplit("/", 1)[-1]]
    examples = schema.get("examples") or [{}]
    return {"schema": schema, "example": copy.deepcopy(examples[0])}


async def _corpus(stack: Stack, document: dict[str, Any]) -> list[httpx.Response]:
    till = await stack.register_till()
    other = await stack.register_till("till-2")
    checkout = await stack.checkout(till, 10000)
    values = {**PATH_VALUES, "checkout_id": checkout["id"]}
    components = document["components"]["schemas"]
    responses: list[httpx.Response] = []
    client = stack.service
    for path, operations in document["paths"].items():
        if path.startswith("/webhooks/") or path in ("/healthz", "/readyz"):
            continue  # Vipps's door and the probes: not the POS contract
        for method, operation in operations.items():
            url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)

            async def send(target: str = url, verb: str = method, **kwargs: Any) -> httpx.Response:
                if "json" in kwargs:
                    kwargs["headers"] = {**kwargs.get("headers", {}), **JSON}
                    kwargs.update(as_json(kwargs.pop("json")))
                response = await client.request(verb.upper(), target, **kwargs)
                responses.append(response)
                return response

            admin = stack.admin
            await send()  # no credential
            await send(headers={"Authorization": "Bearer vpk_0123456789abcdef_wrong"})
            await send(headers=stack.till_headers(other))  # another till's key
            await send(verb="PATCH" if method != "patch" else "PUT", headers=admin)
            if "{" in path:
                await send(target=re.sub(r"\{\w+\}", "x%00y", path), headers=admin)
                await send(target=re.sub(r"\{\w+\}", "unknown-thing", path), headers=admin)
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query":
                    for bad in ("a\x00b", "-5", "x" * 300, "2026-13-45"):
                        await send(params={parameter["name"]: bad}, headers=admin)
            if "requestBody" not in operation:
                continue
            await send(
                content=b'{"amount": ', headers={**admin, "content-type": "application/json"}
            )
            await send(json=[1, 2], headers=admin)
            request = _request_example(operation, components)
            base, schema = request["example"], request["schema"]
            await send(json={**base, "amout": 1}, headers=admin)
            for name in schema.get("required", []):
                await send(json={k: v for k, v in base.items() if k != name}, headers=admin)
            for name, prop in schema.get("properties", {}).items():
                for wrong in _wrong_values(prop, components):
                    await send(json={**base, name: wrong}, headers=admin)
                    await send(json={**base, name: wrong}, headers=stack.till_headers(till))
            await send(json={**base, "k\u0000ey": 1}, headers=admin)
    # The receipt's own rules, through the create route.
    for receipt in (
        {"orderLines": []},
        {"orderLines": [{**VIPPS_EXAMPLE_RECEIPT["orderLines"][0], "totalAmount": True}]},
        {"orderLines": [{**VIPPS_EXAMPLE_RECEIPT["orderLines"][0], "name": "a\u0000"}]},
        {**VIPPS_EXAMPLE_RECEIPT, "bottomLine": {"currency": "DKK", "receiptNumber": "\ud800"}},
    ):
        responses.append(
            await client.post(
                "/api/v1/tills/till-2/checkouts",
                **as_json({"amount": 10000, "receipt": receipt}),
                headers={**stack.till_headers(other), **JSON},
            )
        )
    return responses


async def test_a_corpus_of_bad_requests_meets_only_documented_codes(sqlite_url: str) -> None:
    async with checked_stack(sqlite_url) as stack:
        await stack.ensure_webhook()
        document = (await stack.service.get("/openapi.json")).json()
        responses = await _corpus(stack, document)
    problem_codes: set[str] = set()
    field_codes: set[str] = set()
    for response in responses:
        request = f"{response.request.method} {response.request.url}: {response.text[:300]}"
        assert response.status_code < 500, request
        if response.status_code < 400:
            continue
        assert response.headers["content-type"] == PROBLEM_JSON, request
        body = response.json()
        problem_codes.add(body["code"])
        for error in body.get("errors") or []:
            assert error["field"], request
            assert error["message"], request
            field_codes.add(error["code"])
    documented = documented_codes()
    in_openapi = openapi_codes(document)
    assert problem_codes <= documented & in_openapi[0], problem_codes - (documented & in_openapi[0])
    assert field_codes <= documented & in_openapi[1], field_codes - (documented & in_openapi[1])
    # The corpus reaches the codes it is meant to reach.
    assert {"unauthorized", "forbidden", "validation_error", "method_not_allowed"} <= problem_codes
    assert {
        "invalid_json",
        "invalid_type",
        "required",
        "unknown_field",
        "invalid_text",
        "too_long",
        "amount_too_large",
        "no_order_lines",
    } <= field_codes, field_codes


# ---- the cases from the first integration ------------------------------------------------------


async def _create(stack: Stack, till: dict[str, Any], body: dict[str, Any]) -> httpx.Response:
    return await stack.service.post(
        f"/api/v1/tills/{till['tillId']}/checkouts",
        **as_json(body),
        headers={**stack.till_headers(till), **JSON},
    )


def _errors(response: httpx.Response) -> set[tuple[str, str]]:
    body = assert_problem(response, 422, "validation_error")
    return {(e["field"], e["code"]) for e in body["errors"]}


async def test_the_codes_a_vendor_met_are_the_documented_ones(sqlite_url: str) -> None:
    async with checked_stack(sqlite_url) as stack:
        till = await stack.register_till()
        assert _errors(await _create(stack, till, {"currency": "NOK"})) == {("amount", "required")}
        assert _errors(await _create(stack, till, {"amount": 1000, "currency": "SEK"})) == {
            ("currency", "unsupported_currency")
        }
        assert _errors(await _create(stack, till, {"amount": 1000, "amout": 5})) == {
            ("amout", "unknown_field")
        }
        long_location = await stack.service.post(
            "/api/v1/tills",
            json={"tillId": "t-9", "storeId": "s", "locationDescription": "K" * 48},
            headers=stack.admin,
        )
        assert _errors(long_location) == {("locationDescription", "too_long")}
        broken = await stack.service.post(
            "/api/v1/tills/till-1/checkouts",
            content=b'[{"amount": 1',
            headers={**stack.till_headers(till), "content-type": "application/json"},
        )
        assert _errors(broken) == {("body", "invalid_json")}
        assert _errors(await _create(stack, till, {"amount": 0})) == {
            ("amount", "amount_too_small")
        }
        assert await count_rows(stack, "checkouts") == 0


LOOSE_AMOUNTS = [True, "5", 12900.0, "129.00", [12900]]


@pytest.mark.parametrize("amount", LOOSE_AMOUNTS, ids=repr)
async def test_amounts_are_strict_integers_everywhere(sqlite_url: str, amount: Any) -> None:
    async with checked_stack(sqlite_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        headers = stack.till_headers(till)
        expected_code = "invalid_type"
        assert _errors(await _create(stack, till, {"amount": amount})) == {
            ("amount", expected_code)
        }
        line = {**VIPPS_EXAMPLE_RECEIPT["orderLines"][0], "totalAmount": amount}
        errors = _errors(
            await _create(stack, till, {"amount": 10000, "receipt": {"orderLines": [line]}})
        )
        assert ("receipt.orderLines[0].totalAmount", expected_code) in errors, errors

        checkout = await stack.checkout(till, 10000, captureMode="MANUAL")
        for action in ("capture", "refund", "member-price"):
            response = await stack.service.post(
                f"/api/v1/checkouts/{checkout['id']}/{action}",
                json={"amount": amount},
                headers=headers,
            )
            assert _errors(response) == {("amount", expected_code)}, (action, response.text)
        after = await stack.get(till, checkout["id"])
        assert after["amount"]["value"] == 10000
        assert after["capturedAmount"] == after["refundedAmount"] == 0
        assert await count_rows(stack, "checkouts") == 1


UNSAFE_TEXT = ["a\u0000bc", "\ud800", "ok \udfff then"]


@pytest.mark.parametrize("text", UNSAFE_TEXT, ids=["nul", "high-surrogate", "low-surrogate"])
async def test_nul_and_lone_surrogates_are_refused_naming_the_field(
    sqlite_url: str, text: str
) -> None:
    async with checked_stack(sqlite_url) as stack:
        till = await stack.register_till()
        line = {**VIPPS_EXAMPLE_RECEIPT["orderLines"][0], "name": text}
        cases = {
            "description": {"amount": 10000, "description": text},
            "receipt.orderLines[0].name": {"amount": 10000, "receipt": {"orderLines": [line]}},
            "receipt.bottomLine.receiptNumber": {
                "amount": 10000,
                "receipt": {
                    **VIPPS_EXAMPLE_RECEIPT,
                    "bottomLine": {"currency": "NOK", "receiptNumber": text},
                },
            },
        }
        for field, body in cases.items():
            assert _errors(await _create(stack, till, body)) == {(field, "invalid_text")}
        store = await stack.service.put(
            "/api/v1/stores/store-1", **as_json({"name": text}), headers={**stack.admin, **JSON}
        )
        assert _errors(store) == {("name", "invalid_text")}
        assert await count_rows(stack, "checkouts") == 0
        # A surrogate pair is one valid character (here an emoji), not a lone surrogate.
        fine = await _create(stack, till, {"amount": 10000, "description": "Takk \ud83d\ude00!"})
        assert fine.status_code == 201, fine.text
        assert fine.json()["description"] == "Takk \U0001f600!"


async def test_nul_in_path_and_query_is_a_422_not_a_500(sqlite_url: str) -> None:
    async with checked_stack(sqlite_url) as stack:
        till = await stack.register_till()
        path = await stack.service.get("/api/v1/tills/till%001", headers=stack.admin)
        assert _errors(path) == {("till_id", "invalid_text")}
        query = await stack.service.get(
            "/api/v1/tills", params={"storeId": "a\x00b"}, headers=stack.admin
        )
        assert _errors(query) == {("storeId", "invalid_text")}
        unknown_tz = await stack.service.get(
            "/api/v1/reports/end-of-day",
            params={"date": "2026-11-27", "tz": "Oslo"},
            headers=stack.admin,
        )
        assert _errors(unknown_tz) == {("tz", "invalid_value")}
        assert (await stack.get(till, (await stack.checkout(till))["id"]))["state"]
