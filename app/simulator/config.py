"""Configuration of the Vipps MobilePay simulator: credential sets, sales units, test users, limits.

Everything has a default so ``create_simulator_app()`` works with nothing configured; the defaults
are the values documented in ``docs/simulator.md`` (client id ``sim-client-id`` and so on).
Durations are seconds on the simulator's clock (:mod:`app.simulator.clock`), except the webhook
retry schedule and fault latencies, which are real seconds so deliveries stay fast in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import httpx

from app.simulator.clock import Clock

Currency = Literal["NOK", "DKK", "EUR"]


@dataclass(frozen=True)
class SalesUnit:
    """One MSN. ``currency`` is its market: ePayment rejects other currencies with 5040."""

    msn: str
    currency: Currency = "NOK"
    name: str = "Simulated store"
    # PUSH_MESSAGE needs sales-unit approval; without it Vipps answers 5080 (REFERENCE.md §7.1).
    push_message_allowed: bool = True
    # Some sales units refuse partial capture with 6140 (REFERENCE.md §7.5).
    partial_capture_allowed: bool = True


@dataclass(frozen=True)
class CredentialSet:
    """The API keys of one merchant: valid for the listed MSNs only (others answer 403)."""

    client_id: str = "sim-client-id"
    client_secret: str = "sim-client-secret"  # noqa: S105 - a documented simulator default
    # Primary and secondary subscription keys are interchangeable (REFERENCE.md §1).
    subscription_keys: tuple[str, ...] = ("sim-subscription-key",)
    msns: tuple[str, ...] = ("123456", "654321")


@dataclass(frozen=True)
class TestUser:
    """A Vipps MobilePay test user: the phone number is the identity (MSISDN, digits only)."""

    phone_number: str
    name: str
    email: str
    given_name: str = ""
    family_name: str = ""
    birth_date: str = "1990-01-01"


DEFAULT_SALES_UNITS: tuple[SalesUnit, ...] = (
    SalesUnit("123456", "NOK", "Simulated store Oslo"),
    SalesUnit("654321", "DKK", "Simulated store København"),
)
DEFAULT_TEST_USERS: tuple[TestUser, ...] = (
    TestUser("4712345678", "Ola Nordmann", "ola.nordmann@example.com", "Ola", "Nordmann"),
    TestUser("4798765432", "Kari Nordmann", "kari.nordmann@example.com", "Kari", "Nordmann"),
    TestUser("4540123456", "Mette Hansen", "mette.hansen@example.com", "Mette", "Hansen"),
)
# Fast by default: the real schedule (REFERENCE.md §6.4) runs for 7 days.
DEFAULT_WEBHOOK_RETRY_DELAYS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass
class SimulatorConfig:
    """All knobs of one simulator instance.

    ``public_base_url`` is the origin put into ``qrImageUrl`` and ``redirectUrl``; ``None`` means
    "the origin the request came in on", which is right both behind uvicorn and in-process.
    """

    credential_sets: tuple[CredentialSet, ...] = (CredentialSet(),)
    sales_units: tuple[SalesUnit, ...] = DEFAULT_SALES_UNITS
    test_users: tuple[TestUser, ...] = DEFAULT_TEST_USERS
    public_base_url: str | None = None
    clock: Clock | None = None

    # Access token API: 1 hour in the test environment (REFERENCE.md §2).
    access_token_lifetime_seconds: int = 3600
    # ePayment: the user has 10 minutes in total (REFERENCE.md §7.4).
    payment_expiry_seconds: int = 600
    # QR: customer tokens from a scan live 15 minutes (REFERENCE.md §4).
    customer_token_lifetime_seconds: int = 900
    # QR PUT `category` (May 2024). False behaves like an API version without the field: 400.
    qr_category_supported: bool = True
    # Rate limits per reference (REFERENCE.md §7.11); None switches a limit off.
    mutations_per_minute: int | None = 5
    reads_per_minute: int | None = 120
    # Azure API Management answers some 401/429 itself, not as problem+json (REFERENCE.md §1).
    gateway_error_style: Literal["apim", "problem"] = "apim"
    # Webhooks API: 25 registrations per event type per MSN, 1 for user.checked-in.v1 (§6.2).
    max_registrations_per_event: int = 25
    # Vipps only delivers to HTTPS; False lets a developer register http://localhost URLs.
    require_https_webhook_urls: bool = False

    # Login (CIBA): `expires_in` and `interval` of the authentication response (REFERENCE.md §8.2).
    ciba_expires_in_seconds: int = 600
    ciba_interval_seconds: int = 5
    login_access_token_lifetime_seconds: int = 3600

    # Webhook delivery: real-time delays between attempts; the event is dropped after the last.
    webhook_retry_delays: tuple[float, ...] = DEFAULT_WEBHOOK_RETRY_DELAYS
    webhook_timeout_seconds: float = 10.0
    webhook_transport: httpx.AsyncBaseTransport | None = None
    # x-ms-date from the simulator clock instead of the wall clock (for fully frozen tests).
    webhook_dates_from_clock: bool = False

    # Faults: seed of the RNG that decides probabilistic faults (reproducible runs).
    fault_seed: int | None = None
    # Strict mode: validate every incoming request against the official specs, record violations.
    strict: bool = False
    # How often a background task expires payments whose time ran out (real seconds).
    expiry_sweep_interval_seconds: float = 1.0

    def sales_unit(self, msn: str) -> SalesUnit | None:
        for unit in self.sales_units:
            if unit.msn == msn:
                return unit
        return None
