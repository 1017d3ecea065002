"""Configuration of the Vipps MobilePay simulator: credential sets, sales units, test users, limits.

Everything has a default so ``create_simulator_app()`` works with nothing configured; the defaults
are the values documented in ``docs/simulator.md`` (client id ``sim-client-id`` and so on).
Durations are seconds on the simulator's clock (:mod:`app.simulator.clock`), except the webhook
retry schedule and fault latencies, which are real seconds so deliveries stay fast in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import httpx

from app.simulator.clock import Clock

Currency = Literal["NOK", "DKK", "EUR"]


@dataclass(frozen=True)
class SalesUnit:
    """One MSN and what Vipps MobilePay has switched on for it.

    The defaults are those of a **fresh test sales unit** as a merchant gets it from the portal,
    before asking Vipps MobilePay for anything:

    * ``currency`` ``NOK``: the market (a Norwegian sales unit); ePayment rejects other
      currencies with 5040 (REFERENCE.md §1).
    * ``push_message_allowed`` off: ``userFlow: PUSH_MESSAGE`` needs the sales unit to be
      approved for it, otherwise error 5080 (REFERENCE.md §7.1).
    * ``login_enabled`` off: Login has to be activated for the sales unit in the business portal
      ("Why does Login fail for my sales unit? Make sure that your test sales unit is set up for
      using login", Login API FAQ); until then the Login endpoints answer ``invalid_client``.
    * ``customer_token_exchange_allowed`` on: no approval for ``POST /qr/v1/exchange/customer``
      is documented (REFERENCE.md §5 marks it unverified; the Vipps page for this flow uses it
      with the sales unit's ordinary keys).
    * ``partial_capture_allowed`` on: some sales units refuse partial capture with 6140 (§7.5).

    ``POST /_sim/sales-units/{msn}`` changes them at run time, as Vipps MobilePay would after a
    request from the merchant.
    """

    msn: str
    currency: Currency = "NOK"
    name: str = "Simulated store"
    push_message_allowed: bool = False
    login_enabled: bool = False
    customer_token_exchange_allowed: bool = True
    partial_capture_allowed: bool = True


def approved(unit: SalesUnit) -> SalesUnit:
    """``unit`` after the merchant's requests went through: push approved, Login enabled.

    What the demo and the service's tests run against; the simulator's own defaults stay those of
    a fresh sales unit (see :class:`SalesUnit`).
    """
    return replace(unit, push_message_allowed=True, login_enabled=True)


KeyKind = Literal["sales_unit", "partner", "management"]


@dataclass(frozen=True)
class CredentialSet:
    """One set of API keys and the sales units it may act for.

    * ``sales_unit`` keys belong to one sales unit (each has its own set; "API keys", Vipps
      knowledge base): a call naming any other MSN is refused with 403.
    * ``partner`` keys act for every sales unit connected to the partner (``msns``); the
      ``Merchant-Serial-Number`` header is then mandatory on every call, since it is the only
      thing that says which merchant the partner acts for ("Partner keys": "The partner
      specifies the MSN of the sales unit it's acting on behalf of in the Merchant-Serial-Number
      HTTP header"). On Login they authenticate with a platform access token as ``Bearer``, not
      with ``client_secret_basic`` (Login API, "Partner keys").
    * ``management`` keys reach only the Management API and cannot act for merchants ("Types of
      partner keys"): every API simulated here answers them with 403.
    """

    client_id: str = "sim-client-id"
    client_secret: str = "sim-client-secret"  # noqa: S105 - a documented simulator default
    # Primary and secondary subscription keys are interchangeable (REFERENCE.md §1).
    subscription_keys: tuple[str, ...] = ("sim-subscription-key",)
    msns: tuple[str, ...] = ("123456",)
    kind: KeyKind = "sales_unit"

    def covers(self, msn: str) -> bool:
        return self.kind != "management" and msn in self.msns


@dataclass(frozen=True)
class TestUser:
    """A Vipps MobilePay test user: the phone number is the identity (MSISDN, digits only)."""

    phone_number: str
    name: str
    email: str
    given_name: str = ""
    family_name: str = ""
    birth_date: str = "1990-01-01"
    # Merchant-initiated login refuses users who may not use it (``invalid_user``: no active
    # account, or e.g. under 15) and apps too old for it (``old_app``).
    login_eligible: bool = True
    app_supports_login: bool = True


DEFAULT_SALES_UNITS: tuple[SalesUnit, ...] = (
    SalesUnit("123456", "NOK", "Simulated store Oslo"),
    SalesUnit("654321", "DKK", "Simulated store København"),
)
# Each sales unit has its own keys; the partner keys reach both; the management keys neither.
DEFAULT_CREDENTIAL_SETS: tuple[CredentialSet, ...] = (
    CredentialSet(),
    CredentialSet(
        "sim-client-id-654321",
        "sim-client-secret-654321",
        ("sim-subscription-key-654321",),
        msns=("654321",),
    ),
    CredentialSet(
        "sim-partner-client-id",
        "sim-partner-client-secret",
        ("sim-partner-subscription-key",),
        msns=("123456", "654321"),
        kind="partner",
    ),
    CredentialSet(
        "sim-management-client-id",
        "sim-management-client-secret",
        ("sim-management-subscription-key",),
        msns=("123456", "654321"),
        kind="management",
    ),
)
DEFAULT_TEST_USERS: tuple[TestUser, ...] = (
    TestUser("4712345678", "Ola Nordmann", "ola.nordmann@example.com", "Ola", "Nordmann"),
    TestUser("4798765432", "Kari Nordmann", "kari.nordmann@example.com", "Kari", "Nordmann"),
    TestUser("4540123456", "Mette Hansen", "mette.hansen@example.com", "Mette", "Hansen"),
    TestUser(
        "4790000015",
        "Emma Ung",
        "emma.ung@example.com",
        "Emma",
        "Ung",
        birth_date="2013-05-01",
        login_eligible=False,
    ),
    TestUser(
        "4790000042",
        "Per Gammel",
        "per.gammel@example.com",
        "Per",
        "Gammel",
        app_supports_login=False,
    ),
)
# Fast by default: the real schedule (REFERENCE.md §6.4) runs for 7 days.
DEFAULT_WEBHOOK_RETRY_DELAYS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass
class SimulatorConfig:
    """All knobs of one simulator instance.

    ``public_base_url`` is the origin put into ``qrImageUrl`` and ``redirectUrl``; ``None`` means
    "the origin the request came in on", which is right both behind uvicorn and in-process.
    """

    credential_sets: tuple[CredentialSet, ...] = DEFAULT_CREDENTIAL_SETS
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
    # Rate limits (REFERENCE.md §7.11, ePayment "Error handling"): create, capture, cancel and
    # refund each 5 per minute per reference + MSN, in a bucket of their own; get payment and the
    # event log 120 per minute per reference + subscription key. None switches a limit off.
    mutations_per_minute: int | None = 5
    reads_per_minute: int | None = 120
    # A reservation can be captured for this long after authorization; later captures answer
    # 6100 "capture period expired" (REFERENCE.md §7.5). The real period depends on the card
    # scheme and is not documented per payment; seven days is the simulator's choice.
    capture_period_seconds: int = 7 * 24 * 3600
    # Refunds are possible within 365 days (REFERENCE.md §7.7), counted from the last capture.
    refund_window_seconds: int = 365 * 24 * 3600
    # Azure API Management answers some 401/429 itself, not as problem+json (REFERENCE.md §1).
    gateway_error_style: Literal["apim", "problem"] = "apim"
    # Webhooks API: 25 registrations per event type per MSN, 1 for user.checked-in.v1 (§6.2).
    max_registrations_per_event: int = 25
    # Webhook URLs as the Webhooks API spec demands of ``url``: "The URL must use HTTPS", "Must
    # be a valid, world-reachable URL", "We don't send requests to all ports, so to be safe use
    # common ports such as: 80, 443, 8080" (REFERENCE.md §6.1). The spec's "such as" leaves the
    # list open; the simulator accepts exactly those three ports and nothing local.
    webhook_allowed_ports: tuple[int, ...] = (80, 443, 8080)
    # Development switch, off like the real service: also accept http:// and any port when the
    # host is this machine (localhost, 127.0.0.0/8, ::1). The demo and the end-to-end tests that
    # run the service on a local port turn it on explicitly.
    allow_http_localhost_webhooks: bool = False
    # With the switch on, these host names count as this machine too (e.g. the service's name in
    # a docker-compose network, where it is not localhost to the simulator).
    development_webhook_hosts: tuple[str, ...] = ()

    # Login (CIBA): `expires_in` and `interval` of the authentication response (REFERENCE.md §8.2).
    ciba_expires_in_seconds: int = 600
    ciba_interval_seconds: int = 5
    # "429 status responses: Too many login requests started towards the same user at the same
    # time. Please respect the Retry-After header returned." (merchant-initiated login, Error
    # responses). The docs give no number: a login towards a user who already has this many
    # unanswered ones (from any merchant) is refused until the oldest ends. None: no limit.
    ciba_open_logins_per_user: int | None = 1
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
