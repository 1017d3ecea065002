"""The OpenAPI document carries an example for every request and response body of the POS, admin
and display API, and each example is a valid instance of its model (so examples cannot drift from
the field names)."""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr
from pydantic_core import to_jsonable_python

from app.api import display, schemas
from app.main import create_app
from app.settings import Settings

# Modules whose models this test guards (app/api/club.py and reports.py define their own).
EXAMPLE_MODULES: tuple[ModuleType, ...] = (schemas, display)


# Bases that describe a kind of body, not a body: they have no fields and no example.
BASE_MODELS: frozenset[type[BaseModel]] = frozenset({schemas.ApiModel, schemas.ApiRequest})


def api_models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for module in EXAMPLE_MODULES:
        for _, member in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(member, schemas.ApiModel)
                and member not in BASE_MODELS
                and member.__module__ == module.__name__
            ):
                found.append(member)
    return found


def wire_form(instance: BaseModel) -> Any:
    """The JSON the instance stands for, secrets included (a dump masks SecretStr)."""
    return to_jsonable_python(_revealed(instance.model_dump(by_alias=True, exclude_unset=True)))


def _revealed(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: _revealed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_revealed(item) for item in value]
    return value


def examples_of(model: type[BaseModel]) -> list[Any]:
    extra = model.model_config.get("json_schema_extra")
    return list(extra.get("examples", [])) if isinstance(extra, dict) else []


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    spec: dict[str, Any] = create_app(Settings(environment="test")).openapi()
    return spec


@pytest.mark.parametrize("model", api_models(), ids=lambda m: m.__name__)
def test_each_example_is_a_valid_instance_of_its_model(model: type[BaseModel]) -> None:
    examples = examples_of(model)
    assert examples, f"{model.__name__} has no example"
    for example in examples:
        instance = model.model_validate(example)
        # The example is the model's wire form, field for field (no alias silently dropped).
        assert wire_form(instance) == example


def test_every_body_in_the_document_from_these_modules_has_an_example(
    openapi: dict[str, Any],
) -> None:
    ours = {m.__name__ for m in api_models()}
    components = openapi["components"]["schemas"]
    used = [name for name in components if name in ours]
    assert {"CheckoutOut", "CreateCheckoutRequest", "DisplayTokenOut"} <= set(used)
    missing = [name for name in used if not components[name].get("examples")]
    assert missing == []
