"""Service settings: one typed object, nested per concern, loaded once.

Every field can be set from the environment with the ``VIPPS_POS_`` prefix and ``__`` between
levels, e.g. ``VIPPS_POS_VIPPS__CLIENT_SECRET``. ``.env.example`` lists every one.

Invariants (see :meth:`Settings.startup_problems`):

* In every mode the service refuses to start with an encryption key that is not a Fernet key,
  naming the setting (never its value).
* In ``production`` mode it also refuses every placeholder that ships in ``.env.example`` or the
  docs, the development keys, an admin key that is short or looks hand-made, a simulator URL
  and example hosts, and lists every bad setting in one message.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections import Counter
from enum import StrEnum
from functools import cached_property
from typing import Literal
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.vipps.webhook_urls import webhook_url_refusal

# Development placeholders. They let `make demo` run with nothing configured, and production mode
# refuses every one of them.
PLACEHOLDER_PREFIX = "dev-placeholder-"
DEV_ENCRYPTION_KEY = "ZGV2LXBsYWNlaG9sZGVyLWtleS0wMTIzNDU2Nzg5YWI="  # Fernet key, known to all
DEV_ADMIN_KEY = PLACEHOLDER_PREFIX + "admin-key"

# Values that ship in .env.example and the docs as stand-ins for real secrets. Production refuses
# every one of them for every secret (tests/foundation/test_settings.py reads .env.example and the
# docs to keep this list complete).
KNOWN_PLACEHOLDERS = frozenset(
    {
        *("change-me", "changeme", "change_me", "replace-me", "secret", "password", "admin"),
        "dev-admin",  # docs/integration.md
        # The simulator's fixed credentials (app/simulator/config.py, docs/simulator.md).
        *("sim-client-id", "sim-client-secret", "sim-subscription-key"),
    }
)
# An admin key is a credential we ask operators to generate (``vipps-pos admin-keys create``, or
# ``python -c "import secrets; print(secrets.token_urlsafe(32))"``): at least this long, with at
# least this much entropy as estimated from its characters (token_urlsafe(32) has ~200 bits).
MIN_ADMIN_KEY_LENGTH = 32
MIN_ADMIN_KEY_BITS = 100
# RFC 2606 names, used by .env.example and the docs; never a real deployment's host.
_EXAMPLE_HOSTS = ("example.com", "example.org", "example.net")

VIPPS_TEST_URL = "https://apitest.vipps.no"
VIPPS_PRODUCTION_URL = "https://api.vipps.no"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class UserFlow(StrEnum):
    """ePayment ``userFlow`` for customer-token payments (DESIGN.md §7: configurable)."""

    PUSH_MESSAGE = "PUSH_MESSAGE"
    WEB_REDIRECT = "WEB_REDIRECT"


class DatabaseSettings(BaseModel):
    url: str = Field(
        default="sqlite+aiosqlite:///./var/vipps-pos.db",
        description="SQLAlchemy async URL. SQLite for one instance; Postgres "
        "(postgresql+asyncpg://...) for several replicas.",
    )
    # The ORM's pool serves the operator paths; the hot paths have their own pool of raw
    # connections (Postgres only). Per process: pool_size + max_overflow + hot_pool_size + 1
    # (the LISTEN connection) at most.
    pool_size: int = Field(default=5, ge=1, le=200)
    max_overflow: int = Field(default=5, ge=0, le=200)
    hot_pool_size: int = Field(default=10, ge=1, le=200)
    echo: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")


class VippsSettings(BaseModel):
    base_url: str = Field(default=VIPPS_TEST_URL, description="Vipps MobilePay API host.")
    client_id: SecretStr = SecretStr(PLACEHOLDER_PREFIX + "client-id")
    client_secret: SecretStr = SecretStr(PLACEHOLDER_PREFIX + "client-secret")
    subscription_key: SecretStr = SecretStr(PLACEHOLDER_PREFIX + "subscription-key")
    partner_keys: bool = Field(
        default=False,
        description="The three keys above are partner keys: one set for every sales unit, which "
        "is named in Merchant-Serial-Number on each call. Off: they are the sales-unit keys of "
        "DEFAULT_MSN only, and every other sales unit's own keys are added with `vipps-pos keys "
        "add` or PUT /api/v1/vipps-keys/{msn} (stored encrypted). Leave all three empty to keep "
        "every sales unit's keys in the database.",
    )
    default_msn: str = Field(default="123456", pattern=r"^[0-9]{4,6}$")
    system_name: str = Field(default="vipps-pos", max_length=30)
    system_version: str = Field(default="0.1.0", max_length=30)
    plugin_name: str = Field(default="vipps-pos-callback-qr", max_length=30)
    plugin_version: str = Field(default="0.1.0", max_length=30)
    user_flow: UserFlow = UserFlow.PUSH_MESSAGE
    # Sent with WEB_REDIRECT only; Vipps requires it there.
    return_url: str = "https://example.com/vipps/return"
    connect_timeout_seconds: float = Field(default=3.0, gt=0)
    read_timeout_seconds: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=10)
    qr_category: str | None = Field(
        default="IN_STORE",
        description="QR `category`; dropped automatically if Vipps rejects it (REFERENCE.md §3.1).",
    )

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("qr_category")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @property
    def is_vipps_host(self) -> bool:
        return self.base_url in (VIPPS_TEST_URL, VIPPS_PRODUCTION_URL)

    @property
    def configured_keys(self) -> tuple[SecretStr, SecretStr, SecretStr] | None:
        """The keys set here, or None when all three are empty (keys live in the database)."""
        keys = (self.client_id, self.client_secret, self.subscription_key)
        if not any(k.get_secret_value() for k in keys):
            return None
        return keys


class WebhookSettings(BaseModel):
    public_url: str = Field(
        default="http://127.0.0.1:8000/webhooks/vipps",
        description="The URL registered at Vipps. The HMAC covers its path and host, so behind a "
        "proxy this must be the outside URL, not what the app server sees.",
    )
    max_age_seconds: int = Field(
        default=300,
        ge=10,
        description="Largest accepted skew of x-ms-date (either way). Undocumented by Vipps; "
        "duplicates are caught by the inbox regardless.",
    )
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    ensure_on_startup: bool = Field(
        default=False, description="Register/repair the webhook per MSN when the service starts."
    )

    @cached_property
    def host(self) -> str:
        """URL authority as Vipps signs it: hostname plus ``:port`` when not the default."""
        return urlsplit(self.public_url).netloc

    @cached_property
    def path_and_query(self) -> str:
        parts = urlsplit(self.public_url)
        return parts.path + (f"?{parts.query}" if parts.query else "")


class SecuritySettings(BaseModel):
    encryption_key: SecretStr = Field(
        default=SecretStr(DEV_ENCRYPTION_KEY),
        description="Fernet key (urlsafe base64 of 32 bytes) for secrets stored in the database. "
        "Several keys, comma separated, rotate: the first encrypts, all decrypt.",
    )
    admin_api_key: SecretStr = Field(
        default=SecretStr(DEV_ADMIN_KEY),
        description="Bootstrap operator credential with every admin role. Empty: none (named "
        "keys from `vipps-pos admin-keys create` only). Production: at least "
        f"{MIN_ADMIN_KEY_LENGTH} generated characters.",
    )
    # Throttling (app/throttle.py): counted across replicas through Postgres, per replica on
    # SQLite. Windows slide over a minute unless said otherwise.
    till_rate_limit_per_minute: int = Field(
        default=600, ge=1, description="Requests per till key (and per till display)."
    )
    admin_rate_limit_per_minute: int = Field(
        default=600, ge=1, description="Requests per admin key."
    )
    auth_failures_per_source: int = Field(
        default=20,
        ge=1,
        description="Failed authentications per source address within the failure window before "
        "the address backs off (1 s, 2 s, 4 s ... between attempts, up to the backoff maximum).",
    )
    webhook_failures_per_source: int = Field(
        default=60,
        ge=1,
        description="Webhook deliveries failing signature checks per source address within the "
        "failure window before the address backs off the same way.",
    )
    failure_window_seconds: int = Field(default=600, ge=60, le=3600)
    backoff_max_seconds: int = Field(default=300, ge=1, le=3600)
    throttle_sync_seconds: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="How often each replica adds its counts to the shared ones (Postgres) and "
        "reads the cluster's totals: one statement per interval.",
    )
    api_docs: Literal["public", "admin", "off"] | None = Field(
        default=None,
        description="/docs and /openapi.json: public, behind an admin key (openapi.json only), or "
        "off. Default: public, but off in production.",
    )
    metrics: Literal["public", "admin", "off"] | None = Field(
        default=None,
        description="/metrics: public, behind an admin key (operator or monitor role), or off. "
        "Default: public, but admin in production.",
    )
    till_auth_cache_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long a till's API key is trusted without asking the database. A key "
        "rotation or deactivation reaches every replica at once regardless.",
    )


class CheckoutSettings(BaseModel):
    awaiting_scan_timeout_seconds: int = Field(
        default=900, ge=10, description="A checkout nobody scans for this long expires."
    )
    customer_token_lifetime_seconds: int = Field(
        default=900, description="Vipps: a customerToken is valid 15 minutes from the scan."
    )
    payment_request_margin_seconds: int = Field(
        default=60,
        description="Send the payment request at the latest this long before the token expires.",
    )
    cancel_after_approval: Literal["release", "keep"] = Field(
        default="release",
        description="When the customer approved before a cancel reached Vipps: release the "
        "reservation, or keep it for the till to capture or cancel.",
    )
    max_wait_seconds: int = Field(default=30, ge=1, le=120)


class ClubSettings(BaseModel):
    """Customer club at the till (REFERENCE.md §5, §8). Each store's policy (off, lookup, enroll)
    and member-price hold live in the database and are set through the admin API."""

    directory_url: str | None = Field(
        default=None,
        description="Base URL of the chain's loyalty system (see app/loyalty/members.py for the "
        "contract). Unset: members live in this service's own members table.",
    )
    directory_api_key: SecretStr | None = Field(
        default=None, description="Sent as `Authorization: Bearer` to the loyalty system."
    )
    directory_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    enroll_wait_seconds: int = Field(
        default=90,
        ge=1,
        le=840,
        description="How long a sale waits for the customer to answer the enrollment login "
        "before the payment goes out without membership (the login continues meanwhile).",
    )
    login_scope: str = Field(
        default="openid name phoneNumber",
        description="Scopes of the enrollment login; must include openid.",
    )
    login_requested_expiry_seconds: int | None = Field(
        default=None,
        ge=60,
        le=900,
        description="`requested_expiry` of the enrollment login; unset: Vipps's default.",
    )

    @field_validator("directory_url")
    @classmethod
    def _strip_directory_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None


class WorkerSettings(BaseModel):
    enabled: bool = True
    outbox_poll_interval_seconds: float = Field(default=0.5, gt=0)
    outbox_batch_size: int = Field(default=20, ge=1, le=500)
    outbox_concurrency: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Outbox loops per process; a slow Vipps call holds up only its own loop.",
    )
    outbox_lease_seconds: int = Field(default=30, ge=5)
    reconcile_interval_seconds: float = Field(default=2.0, gt=0)
    # Vipps polling guidance: first poll ~5 s after create, then every 2 s (REFERENCE.md §7.11).
    reconcile_first_poll_seconds: float = Field(default=5.0, ge=0)
    reconcile_poll_every_seconds: float = Field(default=2.0, gt=0)
    inbox_retry_seconds: float = Field(default=5.0, gt=0)


class ServerSettings(BaseModel):
    """The HTTP server (uvicorn, ``vipps-pos serve``; see app/server.py and
    docs/operations.md for what the proxy in front should set)."""

    request_read_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A request (line, headers and body) must arrive completely within this long "
        "of the connection opening or the previous response ending; else the connection is "
        "closed. uvicorn itself has no such timeout.",
    )
    keep_alive_timeout_seconds: int = Field(
        default=5, ge=1, le=600, description="Idle keep-alive connections are closed after this."
    )
    max_request_head_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request line plus headers; a connection sending more before its "
        "headers end is closed.",
    )


class LogSettings(BaseModel):
    level: str = "INFO"
    json_logs: bool | None = Field(
        default=None, description="JSON lines; default: on in production, off in development."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VIPPS_POS_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    environment: Environment = Environment.DEVELOPMENT
    database: DatabaseSettings = DatabaseSettings()
    vipps: VippsSettings = VippsSettings()
    webhooks: WebhookSettings = WebhookSettings()
    security: SecuritySettings = SecuritySettings()
    checkout: CheckoutSettings = CheckoutSettings()
    club: ClubSettings = ClubSettings()
    workers: WorkerSettings = WorkerSettings()
    server: ServerSettings = ServerSettings()
    logging: LogSettings = LogSettings()

    @property
    def api_docs(self) -> Literal["public", "admin", "off"]:
        if self.security.api_docs is not None:
            return self.security.api_docs
        return "off" if self.environment is Environment.PRODUCTION else "public"

    @property
    def metrics_access(self) -> Literal["public", "admin", "off"]:
        if self.security.metrics is not None:
            return self.security.metrics
        return "admin" if self.environment is Environment.PRODUCTION else "public"

    def startup_problems(self) -> list[str]:
        """Every reason this configuration must not start, naming each setting (never a value):
        an unusable encryption key in any mode, and :meth:`production_problems` in production."""
        problems = encryption_key_problems(self.security.encryption_key)
        if self.environment is Environment.PRODUCTION:
            problems += self.production_problems()
        return problems

    def production_problems(self) -> list[str]:
        """Every reason this configuration must not run in production, naming the setting."""
        problems: list[str] = []
        # The admin key is judged below (empty is allowed: named admin keys only).
        secrets: dict[str, SecretStr] = {}
        if self.vipps.configured_keys is not None or self.vipps.partner_keys:
            # All three empty is allowed: every sales unit's keys are then in the database.
            secrets |= {
                "VIPPS_POS_VIPPS__CLIENT_ID": self.vipps.client_id,
                "VIPPS_POS_VIPPS__CLIENT_SECRET": self.vipps.client_secret,
                "VIPPS_POS_VIPPS__SUBSCRIPTION_KEY": self.vipps.subscription_key,
            }
        if self.club.directory_url:
            secrets["VIPPS_POS_CLUB__DIRECTORY_API_KEY"] = self.club.directory_api_key or SecretStr(
                ""
            )
        for name, secret in secrets.items():
            if is_placeholder(secret.get_secret_value()):
                problems.append(f"{name} is a placeholder (from .env.example or the docs)")
        # (A placeholder encryption key is not a Fernet key: startup_problems names it already.)
        if any(
            key.strip() == DEV_ENCRYPTION_KEY
            for key in self.security.encryption_key.get_secret_value().split(",")
        ):
            problems.append("VIPPS_POS_SECURITY__ENCRYPTION_KEY is the development key")
        else:
            problems += _generated_key_problems(self.security.encryption_key)
        admin_key = self.security.admin_api_key.get_secret_value()
        if admin_key:  # empty: no bootstrap key, named admin keys only
            problem = admin_key_problem(admin_key)
            if problem:
                problems.append(f"VIPPS_POS_SECURITY__ADMIN_API_KEY {problem}")
        host = (urlsplit(self.webhooks.public_url).hostname or "").lower()
        if host.endswith(_EXAMPLE_HOSTS):
            problems.append(
                "VIPPS_POS_WEBHOOKS__PUBLIC_URL is the example host from .env.example; "
                "set the outside URL Vipps can reach"
            )
        return_host = (urlsplit(self.vipps.return_url).hostname or "").lower()
        if self.vipps.user_flow is UserFlow.WEB_REDIRECT and return_host.endswith(_EXAMPLE_HOSTS):
            problems.append(
                "VIPPS_POS_VIPPS__RETURN_URL is the example URL (sent with WEB_REDIRECT)"
            )
        if not self.vipps.is_vipps_host:
            problems.append(
                f"VIPPS_POS_VIPPS__BASE_URL={self.vipps.base_url} is not a Vipps MobilePay host "
                f"({VIPPS_TEST_URL} or {VIPPS_PRODUCTION_URL}); a simulator is not allowed"
            )
        directory = self.club.directory_url
        if directory and not directory.startswith("https://"):
            problems.append(
                "VIPPS_POS_CLUB__DIRECTORY_URL must be https (it receives phone numbers)"
            )
        refusal = webhook_url_refusal(self.webhooks.public_url)
        if refusal is not None:
            problems.append(f"VIPPS_POS_WEBHOOKS__PUBLIC_URL: {refusal}")
        return problems

    def check_startable(self) -> None:
        """Raise :class:`UnsafeConfiguration` listing every problem of :meth:`startup_problems`."""
        problems = self.startup_problems()
        if problems:
            raise UnsafeConfiguration(problems, self.environment)


class UnsafeConfiguration(RuntimeError):
    def __init__(self, problems: list[str], environment: Environment) -> None:
        self.problems = problems
        super().__init__(
            f"refusing to start in {environment.value} mode:\n  - " + "\n  - ".join(problems)
        )


def is_placeholder(value: str) -> bool:
    """Empty, a development placeholder, or a stand-in from .env.example or the docs."""
    text = value.strip().lower()
    return (
        not text
        or text.startswith(PLACEHOLDER_PREFIX)
        or text in KNOWN_PLACEHOLDERS
        or "change-me" in text
        or "changeme" in text
    )


def estimated_bits(value: str) -> float:
    """Entropy of ``value`` estimated from its own character frequencies (Shannon, per character,
    times the length). A lower bound for hand-made keys, close to the truth for generated ones."""
    if not value:
        return 0.0
    counts = Counter(value)
    per_char = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return per_char * len(value)


def admin_key_problem(value: str) -> str | None:
    """Why ``value`` is not acceptable as a production admin key, or ``None``."""
    if is_placeholder(value):
        return "is a placeholder (from .env.example or the docs)"
    if len(value) < MIN_ADMIN_KEY_LENGTH:
        return f"is shorter than {MIN_ADMIN_KEY_LENGTH} characters; generate one"
    if estimated_bits(value) < MIN_ADMIN_KEY_BITS:
        return "has too little entropy (repeated or patterned characters); generate one"
    return None


def _fernet_keys(keys: SecretStr) -> list[str]:
    return [k.strip() for k in keys.get_secret_value().split(",") if k.strip()]


def encryption_key_problems(keys: SecretStr) -> list[str]:
    """Whether every comma-separated part is a Fernet key, naming the position, not the value."""
    name = "VIPPS_POS_SECURITY__ENCRYPTION_KEY"
    parts = _fernet_keys(keys)
    if not parts:
        return [f"{name} is empty; generate a Fernet key (see .env.example)"]
    problems = []
    for position, key in enumerate(parts, start=1):
        try:
            Fernet(key.encode())
        except (ValueError, binascii.Error):
            which = f"key {position} of {len(parts)}" if len(parts) > 1 else "the key"
            problems.append(
                f"{name}: {which} is not a Fernet key (urlsafe base64 of 32 bytes); "
                'generate one with python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"'
            )
    return problems


def _generated_key_problems(keys: SecretStr) -> list[str]:
    """Fernet keys that decode to something a person typed rather than 32 random bytes."""
    parts = _fernet_keys(keys)
    problems = []
    for position, key in enumerate(parts, start=1):
        try:
            raw = base64.urlsafe_b64decode(key.encode())
        except (ValueError, binascii.Error):
            continue  # reported by encryption_key_problems
        # 32 random bytes are all printable with probability ~1e-14 and have ~30 distinct values.
        if len(set(raw)) < 16 or all(32 <= byte < 127 for byte in raw):
            which = f"key {position} of {len(parts)}" if len(parts) > 1 else "the key"
            problems.append(
                f"VIPPS_POS_SECURITY__ENCRYPTION_KEY: {which} is not random (hand-made or "
                "patterned); generate one"
            )
    return problems
