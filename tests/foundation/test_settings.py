"""Settings: every field documented in .env.example; production refuses development values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from app.settings import Settings, UnsafeConfiguration

ROOT = Path(__file__).resolve().parents[2]


def _env_names(model: type[BaseModel], prefix: str) -> set[str]:
    names: set[str] = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _env_names(annotation, f"{prefix}{name.upper()}__")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def test_env_example_lists_every_setting_with_a_comment() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?(VIPPS_POS_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    expected = _env_names(Settings, "VIPPS_POS_")
    assert expected - listed == set(), "settings missing from .env.example"
    assert listed - expected == set(), ".env.example names settings that do not exist"
    lines = text.splitlines()
    setting = re.compile(r"^#? ?VIPPS_POS_")
    for index, line in enumerate(lines):
        if setting.match(line):
            # A setting, or a group of related settings, sits under a comment saying what it is.
            above = index - 1
            while above >= 0 and setting.match(lines[above]):
                above -= 1
            assert lines[above].startswith("#"), f"{line} has no comment above it"


def test_env_example_loads() -> None:
    settings = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    assert settings.database.url.startswith("sqlite")
    assert settings.webhooks.path_and_query == "/webhooks/vipps"
    assert settings.webhooks.host == "pos.example.com"


def _production(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "production",
        "database": {"url": "postgresql+asyncpg://u:p@db/vipps"},
        "vipps": {
            "base_url": "https://api.vipps.no",
            "client_id": "real-client-id",
            "client_secret": "real-client-secret",
            "subscription_key": "real-subscription-key",
        },
        "webhooks": {"public_url": "https://pos.example.com/webhooks/vipps"},
        "security": {
            "encryption_key": "0S9uG8rK4Jmy0-yb7gGi5XJjKb6Y6zUJrPz3DgH5zC4=",
            "admin_api_key": "a-real-admin-key",
        },
    }
    values.update(overrides)
    return Settings.model_validate(values)


def test_production_with_real_values_starts() -> None:
    _production().check_startable()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"vipps": {"base_url": "https://api.vipps.no"}}, "VIPPS_POS_VIPPS__CLIENT_SECRET"),
        (
            {
                "vipps": {
                    "base_url": "http://127.0.0.1:8081",
                    "client_id": "x",
                    "client_secret": "y",
                    "subscription_key": "z",
                }
            },
            "VIPPS_POS_VIPPS__BASE_URL",
        ),
        ({"security": {"admin_api_key": "a-real-admin-key"}}, "VIPPS_POS_SECURITY__ENCRYPTION_KEY"),
        (
            {"webhooks": {"public_url": "http://pos.example.com/webhooks/vipps"}},
            "VIPPS_POS_WEBHOOKS__PUBLIC_URL",
        ),
    ],
)
def test_production_refuses_development_values_naming_the_setting(
    override: dict[str, object], named: str
) -> None:
    settings = _production(**override)
    with pytest.raises(UnsafeConfiguration) as refused:
        settings.check_startable()
    assert named in str(refused.value)


def test_development_runs_with_placeholders() -> None:
    Settings(environment="development").check_startable()  # type: ignore[arg-type]


def test_secrets_never_print() -> None:
    settings = _production()
    assert isinstance(settings.vipps.client_secret, SecretStr)
    assert "real-client-secret" not in repr(settings)
    assert "real-client-secret" not in str(settings.model_dump())
