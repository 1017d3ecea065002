"""Settings: every field documented in .env.example; production refuses development values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from app.settings import (
    DEV_ENCRYPTION_KEY,
    KNOWN_PLACEHOLDERS,
    Settings,
    UnsafeConfiguration,
    is_placeholder,
)

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


REAL_FERNET_KEY = "0S9uG8rK4Jmy0-yb7gGi5XJjKb6Y6zUJrPz3DgH5zC4="
REAL_ADMIN_KEY = "Xq3v_9LkP2mZt8RwA1sJfG7hQ4nBc6Ey0UiOdTrK5Ma"  # secrets.token_urlsafe(32)


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
        "webhooks": {"public_url": "https://pos.butikken.no/webhooks/vipps"},
        "security": {
            "encryption_key": REAL_FERNET_KEY,
            "admin_api_key": REAL_ADMIN_KEY,
        },
    }
    for key, value in overrides.items():
        base = values.get(key)
        merge = isinstance(base, dict) and isinstance(value, dict)
        values[key] = {**base, **value} if merge else value  # type: ignore[dict-item]
    return Settings.model_validate(values)


def test_production_with_real_values_starts() -> None:
    _production().check_startable()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (
            {"vipps": {"client_secret": "dev-placeholder-client-secret"}},
            "VIPPS_POS_VIPPS__CLIENT_SECRET",
        ),
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
        (
            {"security": {"encryption_key": DEV_ENCRYPTION_KEY}},
            "VIPPS_POS_SECURITY__ENCRYPTION_KEY",
        ),
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


def _problems(settings: Settings) -> str:
    with pytest.raises(UnsafeConfiguration) as refused:
        settings.check_startable()
    return str(refused.value)


def test_production_with_the_env_example_file_names_every_placeholder_in_one_message() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=ROOT / ".env.example",
        environment="production",
        vipps={"base_url": "https://api.vipps.no"},
    )
    message = _problems(settings)
    for name in (
        "VIPPS_POS_VIPPS__CLIENT_ID",
        "VIPPS_POS_VIPPS__CLIENT_SECRET",
        "VIPPS_POS_VIPPS__SUBSCRIPTION_KEY",
        "VIPPS_POS_SECURITY__ENCRYPTION_KEY",
        "VIPPS_POS_SECURITY__ADMIN_API_KEY",
        "VIPPS_POS_WEBHOOKS__PUBLIC_URL",
    ):
        assert name in message, (name, message)
    assert "change-me" not in message  # settings are named, values never shown
    assert "Traceback" not in message


def test_every_secret_stand_in_of_the_env_example_and_the_docs_is_a_known_placeholder() -> None:
    secret = re.compile(r"VIPPS_POS_[A-Z_]*(?:KEY|SECRET|CLIENT_ID)=([A-Za-z0-9_.-]+)")
    values = set(secret.findall((ROOT / ".env.example").read_text()))
    for doc in ("README.md", "docs/integration.md", "docs/operations.md"):
        values |= set(secret.findall((ROOT / doc).read_text()))
    for doc in ("README.md", "docs/integration.md"):
        values |= set(re.findall(r"Bearer ([a-z][a-z0-9-]+)'", (ROOT / doc).read_text()))
    # The simulator's fixed credentials (docs/simulator.md) are public too.
    values |= {"sim-client-id", "sim-client-secret", "sim-subscription-key"}
    assert values, "no example secrets found: the pattern is stale"
    assert {v for v in values if not is_placeholder(v)} == set()
    assert "change-me" in KNOWN_PLACEHOLDERS


@pytest.mark.parametrize("environment", ["development", "production"])
def test_an_encryption_key_that_is_not_a_fernet_key_is_named_not_a_traceback(
    environment: str,
) -> None:
    settings = _production(
        environment=environment, security={"encryption_key": f"{REAL_FERNET_KEY},change-me"}
    )
    message = _problems(settings)
    assert "VIPPS_POS_SECURITY__ENCRYPTION_KEY: key 2 of 2 is not a Fernet key" in message
    assert "change-me" not in message
    assert REAL_FERNET_KEY not in message


def test_the_app_refuses_to_start_with_an_invalid_encryption_key_naming_it() -> None:
    from app.main import create_app

    with pytest.raises(UnsafeConfiguration, match="VIPPS_POS_SECURITY__ENCRYPTION_KEY"):
        create_app(Settings(security={"encryption_key": "change-me"}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("admin_key", "why"),
    [
        ("change-me", "placeholder"),
        ("dev-admin", "placeholder"),
        ("k3Y-short-but-random", "shorter than 32"),
        ("a" * 64, "entropy"),
        ("abababababababababababababababab", "entropy"),
    ],
)
def test_production_refuses_a_short_or_hand_made_admin_key(admin_key: str, why: str) -> None:
    message = _problems(_production(security={"admin_api_key": admin_key}))
    assert "VIPPS_POS_SECURITY__ADMIN_API_KEY" in message
    assert why in message
    assert admin_key not in message


def test_production_accepts_no_bootstrap_admin_key_at_all() -> None:
    """Empty: operators use named keys (``vipps-pos admin-keys create``) only."""
    _production(security={"admin_api_key": ""}).check_startable()


def test_production_refuses_a_hand_made_fernet_key() -> None:
    import base64

    typed = base64.urlsafe_b64encode(b"our-shop-key-2026-do-not-share!!").decode()
    zeros = base64.urlsafe_b64encode(bytes(32)).decode()
    for key in (typed, zeros):
        message = _problems(_production(security={"encryption_key": f"{REAL_FERNET_KEY},{key}"}))
        assert "VIPPS_POS_SECURITY__ENCRYPTION_KEY: key 2 of 2 is not random" in message


def test_production_refuses_the_example_return_url_only_where_it_is_sent() -> None:
    _production(vipps={"user_flow": "PUSH_MESSAGE"}).check_startable()
    message = _problems(_production(vipps={"user_flow": "WEB_REDIRECT"}))
    assert "VIPPS_POS_VIPPS__RETURN_URL" in message
