"""The Vipps MobilePay HTTP client: QR, ePayment, Webhooks and merchant-initiated login.

One :class:`VippsClient` serves every sales unit: the MSN is an explicit argument of each call
and travels in ``Merchant-Serial-Number``, and the keys for it come from a
:class:`~app.vipps.credentials.CredentialsProvider` (a sales unit's own keys, or partner keys for
all), with one cached access token per key set. It runs over one shared
:class:`httpx.AsyncClient` that the application lifespan builds and closes;
:meth:`VippsClient.create` is the only place that builds one itself.

Retries (see :class:`RetryPolicy`):

* Retried: connection errors and timeouts, 5xx, 429 (waiting ``Retry-After``) and 423 (payment
  locked by a concurrent operation). Never retried: any other 4xx — Vipps remembers a 4xx against
  the Idempotency-Key and would answer the same again.
* Every attempt of a call sends the same bytes: the body is serialized once, before the first
  attempt, and the ``Idempotency-Key`` is the caller's. That is what makes retrying create,
  capture, cancel and refund safe: Vipps returns the original outcome for a repeated key and body
  instead of moving money twice (REFERENCE.md §7.10). The client never invents a key.
* A call that changes something at Vipps and has no idempotency guarantee (webhook registration,
  CIBA start/poll, force approve) is retried only when the request provably never reached Vipps
  (connect errors, 429, 423). When it may have, the caller gets
  :class:`~app.vipps.errors.VippsOutcomeUnknown` at once.
* When retries run out and any attempt of a mutating call may have been processed, the error is
  :class:`~app.vipps.errors.VippsOutcomeUnknown`: GET before deciding.
* A 401 on a platform call drops the cached access token and repeats the call once with a new
  one; that repeat is not counted as a retry.

Logging uses dotted event names (``vipps.call.retry``, ``vipps.call.failed``, ...) with the
operation, status, Vipps error code and trace id only: never headers, bodies, tokens, secrets,
customer tokens or phone numbers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from random import random as _uniform
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import httpx
from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError

from app.settings import VippsSettings
from app.vipps.credentials import Credentials, CredentialsProvider, NoCredentials, StaticCredentials
from app.vipps.errors import (
    VippsError,
    VippsOutcomeUnknown,
    VippsRejected,
    VippsUnavailable,
    VippsUnexpectedResponse,
    error_from_response,
    error_from_transport,
)
from app.vipps.login import (
    CIBA_GRANT_TYPE,
    ENDED_ERRORS,
    CibaEnded,
    CibaPending,
    CibaPollResult,
    basic_auth,
    validate_binding_message,
)
from app.vipps.schemas import (
    Amount,
    CancelRequest,
    CibaStart,
    CibaTokens,
    CreatePaymentRequest,
    CreatePaymentResponse,
    Customer,
    CustomerExchangeRequest,
    CustomerExchangeResult,
    ForceApproveRequest,
    MerchantCallbackQr,
    MerchantCallbackQrRequest,
    ModificationRequest,
    ModificationResponse,
    OidcConfiguration,
    PaymentDetails,
    PaymentEvent,
    QrImageFormat,
    UserInfo,
    Webhook,
    WebhookList,
    WebhookRegistration,
    WebhookRegistrationRequest,
    to_wire,
)
from app.vipps.tokens import AccessTokenProvider, OnCall, report_call

logger = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

_MSN = re.compile(r"^[0-9]{4,6}$")
_HEADER_SAFE = re.compile(r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")
_MAX_SYSTEM_HEADER = 30
_MAX_IDEMPOTENCY_KEY = 50
_MAX_LOCATION_DESCRIPTION = 36
_DEFAULT_DISCOVERY_MAX_AGE = 300.0
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)
DISCOVERY_PATH = "/access-management-1.0/access/.well-known/openid-configuration"

_QR_LIST = TypeAdapter(list[MerchantCallbackQr])
_EVENTS = TypeAdapter(list[PaymentEvent])


# --------------------------------------------------------------------------------------------
# Configuration values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemInfo:
    """``Vipps-System-*`` headers: who is calling. Each value is at most 30 characters."""

    name: str
    version: str
    plugin_name: str
    plugin_version: str

    def __post_init__(self) -> None:
        for label, value in self.headers().items():
            if len(value) > _MAX_SYSTEM_HEADER or not _HEADER_SAFE.match(value):
                raise ValueError(f"{label} must be 1-30 printable ASCII characters")

    def headers(self) -> dict[str, str]:
        return {
            "Vipps-System-Name": self.name,
            "Vipps-System-Version": self.version,
            "Vipps-System-Plugin-Name": self.plugin_name,
            "Vipps-System-Plugin-Version": self.plugin_version,
        }


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with capped, jittered exponential backoff.

    Retry ``n`` (0-based) waits between half and all of ``min(max_backoff, base_backoff * 2**n)``
    ("equal jitter", so concurrent callers spread out but never hammer at zero delay). A
    ``Retry-After`` from Vipps replaces the computed wait; one longer than ``max_retry_after`` is
    not waited out inside the call — the error is raised with ``retry_after`` set so the caller
    can schedule the work. Keep ``max_retries`` low for mutating calls: Vipps allows 5 calls per
    minute per payment reference (REFERENCE.md §7.11).
    """

    max_retries: int = 3
    base_backoff: float = 0.25
    max_backoff: float = 5.0
    max_retry_after: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    random: Callable[[], float] = _uniform

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.base_backoff < 0 or self.max_backoff < 0:
            raise ValueError("retry settings must not be negative")

    def delay(self, retry_number: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry ``retry_number``, or ``None`` for "do not retry now"."""
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        ceiling = min(self.max_backoff, self.base_backoff * 2.0**retry_number)
        return ceiling / 2 + ceiling / 2 * self.random()


class _Auth(Enum):
    PLATFORM = "platform"  # access token + subscription key
    LOGIN = "login"  # Login: client_secret_basic; partner keys: the platform token as Bearer
    USER = "user"  # Login userinfo: the user's access token
    NONE = "none"  # OIDC discovery


@dataclass(frozen=True)
class _Call:
    operation: str
    method: str
    path: str
    auth: _Auth = _Auth.PLATFORM
    # An absolute URL from the OIDC discovery document; ``path`` then only names it in logs.
    url: str | None = None
    msn: str | None = None
    json_body: Any = None
    form: Mapping[str, str] | None = None
    params: Mapping[str, str] | None = None
    idempotency_key: str | None = None
    user_token: SecretStr | None = None
    # Changes state at Vipps: an attempt that may have been processed makes the outcome unknown.
    mutating: bool = False
    # Repeating it cannot do anything twice (reads, PUT upserts, calls with an Idempotency-Key).
    idempotent: bool = True
    # Wait out a 429's Retry-After and try again. Off where a wait would hold a customer at the
    # till (starting a login): the caller goes on without, and does not ask again meanwhile.
    retry_rate_limited: bool = True


def _may_have_been_sent(exc: httpx.RequestError) -> bool:
    """False only when the request provably never left: no connection, or none from the pool."""
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _check_msn(msn: str) -> str:
    if not _MSN.match(msn):
        raise ValueError("Merchant-Serial-Number must be 4-6 digits")
    return msn


def _check_idempotency_key(key: str) -> str:
    if not key or len(key) > _MAX_IDEMPOTENCY_KEY or not _HEADER_SAFE.match(key):
        raise ValueError("Idempotency-Key must be 1-50 printable ASCII characters")
    return key


def _segment(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} must not be empty")
    return quote(value, safe="")


def _max_age(cache_control: str | None) -> float:
    if not cache_control:
        return _DEFAULT_DISCOVERY_MAX_AGE
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0.0
    match = _MAX_AGE.search(cache_control)
    return float(match.group(1)) if match else _DEFAULT_DISCOVERY_MAX_AGE


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


class VippsClient:
    """Typed calls to Vipps MobilePay for any number of sales units of one credential set.

    Safe to share between tasks. Holds no per-sale state; the only mutable state is the token
    cache, the cached OIDC discovery document, and whether Vipps has refused the QR ``category``
    field (then it is left out of every later PUT from this client).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        credentials: CredentialsProvider | None = None,
        client_id: SecretStr | None = None,
        client_secret: SecretStr | None = None,
        subscription_key: SecretStr | None = None,
        system: SystemInfo | None = None,
        retry: RetryPolicy | None = None,
        on_call: OnCall | None = None,
        token_refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.time,
        tokens: AccessTokenProvider | None = None,
        owns_http: bool = False,
    ) -> None:
        """``credentials`` gives the keys per MSN; or pass one key set (``client_id``,
        ``client_secret``, ``subscription_key``) to use for every MSN."""
        self._http = http
        self._owns_http = owns_http
        self._base_url = base_url.rstrip("/")
        if credentials is None:
            if client_id is None or client_secret is None or subscription_key is None:
                raise ValueError(
                    "give credentials, or client_id, client_secret and subscription_key"
                )
            credentials = StaticCredentials(Credentials(client_id, client_secret, subscription_key))
        self._credentials = credentials
        self._system = system
        self._system_headers = system.headers() if system else {}
        self._retry = retry or RetryPolicy()
        self._on_call = on_call
        self._clock = clock
        self._tokens = tokens or AccessTokenProvider(
            http,
            self._base_url,
            system_headers=self._system_headers,
            refresh_margin=token_refresh_margin,
            clock=clock,
            on_call=on_call,
        )
        self._qr_category_accepted = True
        self._discovery: tuple[OidcConfiguration, float] | None = None
        self._discovery_lock = asyncio.Lock()

    @classmethod
    def create(
        cls,
        settings: VippsSettings,
        *,
        on_call: OnCall | None = None,
        retry: RetryPolicy | None = None,
    ) -> VippsClient:
        """A client that owns its :class:`httpx.AsyncClient`, with explicit timeouts from
        ``settings``, using the configured keys for every MSN (the service itself resolves keys
        per sales unit; see ``app.service.credentials``). Close it with :meth:`aclose`."""
        timeout = httpx.Timeout(
            connect=settings.connect_timeout_seconds,
            read=settings.read_timeout_seconds,
            write=settings.read_timeout_seconds,
            pool=settings.connect_timeout_seconds,
        )
        http = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            follow_redirects=False,
        )
        keys = Credentials(
            settings.client_id,
            settings.client_secret,
            settings.subscription_key,
            partner=settings.partner_keys,
        )
        return cls(
            http,
            base_url=settings.base_url,
            credentials=StaticCredentials(keys),
            system=SystemInfo(
                name=settings.system_name,
                version=settings.system_version,
                plugin_name=settings.plugin_name,
                plugin_version=settings.plugin_version,
            ),
            retry=retry or RetryPolicy(max_retries=settings.max_retries),
            on_call=on_call,
            owns_http=True,
        )

    @property
    def credentials(self) -> CredentialsProvider:
        return self._credentials

    def with_credentials(self, credentials: CredentialsProvider) -> VippsClient:
        """This client with other keys: same connection pool, token cache, retries and hooks.

        Used to try keys before storing them (an operator adding a sales unit's keys).
        """
        return VippsClient(
            self._http,
            base_url=self._base_url,
            credentials=credentials,
            system=self._system,
            retry=self._retry,
            on_call=self._on_call,
            clock=self._clock,
            tokens=self._tokens,
        )

    async def aclose(self) -> None:
        """Close the HTTP client if this instance built it; a shared one is the lifespan's."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ----------------------------------------------------------------------------------------
    # QR: merchant callback QR
    # ----------------------------------------------------------------------------------------

    async def put_callback_qr(
        self,
        msn: str,
        merchant_qr_id: str,
        location_description: str,
        category: str | None = None,
    ) -> None:
        """Create or update the till's callback QR (an upsert; the image never changes).

        ``category`` postdates the published QR spec (REFERENCE.md §3.1, values unverified).
        If Vipps answers 400 naming it, the PUT is repeated once without it and this client
        stops sending it.
        """
        _check_msn(msn)
        if not 1 <= len(location_description) <= _MAX_LOCATION_DESCRIPTION:
            raise ValueError("locationDescription must be 1-36 characters")
        path = f"/qr/v1/merchant-callback/{_segment(merchant_qr_id, 'merchantQrId')}"
        sent_category = category if self._qr_category_accepted else None
        body = MerchantCallbackQrRequest(
            location_description=location_description, category=sent_category
        )
        call = _Call(
            "qr.put_callback_qr", "PUT", path, msn=msn, json_body=to_wire(body), mutating=True
        )
        try:
            await self._send(call)
        except VippsRejected as err:
            if sent_category is None or err.status != 400 or not err.names_param("category"):
                raise
            self._qr_category_accepted = False
            logger.warning("vipps.qr.category_dropped", extra={"trace_id": err.trace_id})
            without = to_wire(body.model_copy(update={"category": None}))
            await self._send(
                _Call("qr.put_callback_qr", "PUT", path, msn=msn, json_body=without, mutating=True)
            )

    async def get_callback_qr(
        self,
        msn: str,
        merchant_qr_id: str,
        image_format: QrImageFormat = "SVG",
        image_size: int | None = None,
    ) -> MerchantCallbackQr:
        """One callback QR with a fresh ``qrImageUrl``. ``image_size`` (100-2000 px) applies to
        PNG. The query names are capitalized as in the spec (``QrImageFormat``)."""
        _check_msn(msn)
        path = f"/qr/v1/merchant-callback/{_segment(merchant_qr_id, 'merchantQrId')}"
        call = _Call(
            "qr.get_callback_qr", "GET", path, msn=msn, params=_qr_params(image_format, image_size)
        )
        return _model(MerchantCallbackQr, await self._send(call), call)

    async def list_callback_qrs(
        self, msn: str, image_format: QrImageFormat = "SVG", image_size: int | None = None
    ) -> list[MerchantCallbackQr]:
        """Every callback QR of the sales unit ``msn``."""
        _check_msn(msn)
        call = _Call(
            "qr.list_callback_qrs",
            "GET",
            "/qr/v1/merchant-callback",
            msn=msn,
            params=_qr_params(image_format, image_size),
        )
        return _adapted(_QR_LIST, await self._send(call), call)

    async def delete_callback_qr(self, msn: str, merchant_qr_id: str) -> None:
        """Delete a QR, so a scan says "not found" instead of leaving the user waiting.

        Raises :class:`~app.vipps.errors.VippsNotFound` for an unknown id — also when a retried
        attempt finds that an earlier one already deleted it.
        """
        _check_msn(msn)
        path = f"/qr/v1/merchant-callback/{_segment(merchant_qr_id, 'merchantQrId')}"
        await self._send(_Call("qr.delete_callback_qr", "DELETE", path, msn=msn, mutating=True))

    async def exchange_customer_token(
        self, msn: str, customer_token: SecretStr
    ) -> CustomerExchangeResult:
        """The phone number behind a ``user.checked-in.v1`` customer token (valid 15 minutes).

        A read: safe to retry. The result's ``msisdn`` is a :class:`SecretStr`.
        """
        _check_msn(msn)
        body = CustomerExchangeRequest(customer=Customer(customer_token=customer_token))
        call = _Call(
            "qr.exchange_customer_token",
            "POST",
            "/qr/v1/exchange/customer",
            msn=msn,
            json_body=to_wire(body),
        )
        return _model(CustomerExchangeResult, await self._send(call), call)

    # ----------------------------------------------------------------------------------------
    # ePayment
    # ----------------------------------------------------------------------------------------

    async def create_payment(
        self, msn: str, request: CreatePaymentRequest, idempotency_key: str
    ) -> CreatePaymentResponse:
        """Start a payment. Retried on transient failures with the same key and body, so at
        most one payment exists for ``request.reference``; 409 means the reference is taken."""
        _check_msn(msn)
        call = _Call(
            "epayment.create_payment",
            "POST",
            "/epayment/v1/payments",
            msn=msn,
            json_body=to_wire(request),
            idempotency_key=_check_idempotency_key(idempotency_key),
            mutating=True,
        )
        return _model(CreatePaymentResponse, await self._send(call), call)

    async def get_payment(self, msn: str, reference: str) -> PaymentDetails:
        """The payment's state and money movements (``aggregate``): the truth to act on."""
        _check_msn(msn)
        call = _Call(
            "epayment.get_payment",
            "GET",
            f"/epayment/v1/payments/{_segment(reference, 'reference')}",
            msn=msn,
        )
        return _model(PaymentDetails, await self._send(call), call)

    async def get_payment_events(self, msn: str, reference: str) -> list[PaymentEvent]:
        """The payment's event log, oldest first as Vipps returns it."""
        _check_msn(msn)
        call = _Call(
            "epayment.get_payment_events",
            "GET",
            f"/epayment/v1/payments/{_segment(reference, 'reference')}/events",
            msn=msn,
        )
        return _adapted(_EVENTS, await self._send(call), call)

    async def capture_payment(
        self, msn: str, reference: str, amount: Amount, idempotency_key: str
    ) -> ModificationResponse:
        """Capture ``amount`` of an authorized payment; safe to repeat with the same key."""
        body = ModificationRequest(modification_amount=amount)
        return await self._modify("capture", msn, reference, body, idempotency_key)

    async def cancel_payment(
        self,
        msn: str,
        reference: str,
        idempotency_key: str,
        cancel_transaction_only: bool = False,
    ) -> ModificationResponse:
        """Cancel a payment, or release what is left uncaptured of an authorized one.

        With ``cancel_transaction_only`` the body ``{"cancelTransactionOnly": true}`` is sent:
        the cancel then succeeds only if the user has not authorized yet (else error 6060), so a
        concurrent approval is never silently released (REFERENCE.md §7.6). Otherwise no body.
        """
        body = CancelRequest(cancel_transaction_only=True) if cancel_transaction_only else None
        return await self._modify("cancel", msn, reference, body, idempotency_key)

    async def refund_payment(
        self, msn: str, reference: str, amount: Amount, idempotency_key: str
    ) -> ModificationResponse:
        """Refund up to the captured amount; safe to repeat with the same key."""
        body = ModificationRequest(modification_amount=amount)
        return await self._modify("refund", msn, reference, body, idempotency_key)

    async def _modify(
        self,
        action: str,
        msn: str,
        reference: str,
        body: BaseModel | None,
        idempotency_key: str,
    ) -> ModificationResponse:
        _check_msn(msn)
        call = _Call(
            f"epayment.{action}_payment",
            "POST",
            f"/epayment/v1/payments/{_segment(reference, 'reference')}/{action}",
            msn=msn,
            json_body=to_wire(body) if body is not None else None,
            idempotency_key=_check_idempotency_key(idempotency_key),
            mutating=True,
        )
        # The spec labels these 200s application/problem+json: the body decides, not the type.
        return _model(ModificationResponse, await self._send(call), call)

    async def force_approve_payment(self, msn: str, reference: str, phone_number: str) -> None:
        """Test environment only: approve as the test user with ``phone_number``.

        Not idempotent (no key): retried only when the request never left.
        """
        _check_msn(msn)
        body = ForceApproveRequest(customer=Customer(phone_number=SecretStr(phone_number)))
        call = _Call(
            "epayment.force_approve_payment",
            "POST",
            f"/epayment/v1/test/payments/{_segment(reference, 'reference')}/approve",
            msn=msn,
            json_body=to_wire(body),
            mutating=True,
            idempotent=False,
        )
        await self._send(call)

    # ----------------------------------------------------------------------------------------
    # Webhooks
    # ----------------------------------------------------------------------------------------

    async def register_webhook(
        self, msn: str, url: str, events: Sequence[str]
    ) -> WebhookRegistration:
        """Register ``url`` for ``events`` for the sales unit ``msn``; the answer holds the
        signing secret. Not idempotent: after :class:`~app.vipps.errors.VippsOutcomeUnknown`,
        list the webhooks before registering again (one ``user.checked-in.v1`` per MSN)."""
        _check_msn(msn)
        body = WebhookRegistrationRequest(url=url, events=list(events))
        call = _Call(
            "webhooks.register",
            "POST",
            "/webhooks/v1/webhooks",
            msn=msn,
            json_body=to_wire(body),
            mutating=True,
            idempotent=False,
        )
        return _model(WebhookRegistration, await self._send(call), call)

    async def list_webhooks(self, msn: str) -> list[Webhook]:
        _check_msn(msn)
        call = _Call("webhooks.list", "GET", "/webhooks/v1/webhooks", msn=msn)
        return list(_model(WebhookList, await self._send(call), call).webhooks)

    async def delete_webhook(self, msn: str, webhook_id: str) -> None:
        """Delete a registration (204)."""
        _check_msn(msn)
        path = f"/webhooks/v1/webhooks/{_segment(webhook_id, 'webhook id')}"
        await self._send(_Call("webhooks.delete", "DELETE", path, msn=msn, mutating=True))

    # ----------------------------------------------------------------------------------------
    # Login: merchant-initiated (CIBA)
    # ----------------------------------------------------------------------------------------

    async def login_discovery(self) -> OidcConfiguration:
        """The OIDC configuration, cached for the response's ``Cache-Control: max-age``.

        The Login calls below take their endpoints from it, as the merchant-initiated login guide
        prescribes ("the merchant has fetched the OpenID configuration from the well-known
        endpoint and cached it", then calls the ``backchannel_authentication_endpoint`` and
        ``token_endpoint`` listed there) instead of fixed paths.
        """
        async with self._discovery_lock:
            if self._discovery is not None and self._clock() < self._discovery[1]:
                return self._discovery[0]
            call = _Call("login.discovery", "GET", DISCOVERY_PATH, auth=_Auth.NONE)
            response = await self._send(call)
            config = _model(OidcConfiguration, response, call)
            self._discovery = (
                config,
                self._clock() + _max_age(response.headers.get("Cache-Control")),
            )
            return config

    async def _login_endpoint(self, name: str, operation: str) -> str:
        """An endpoint named in the discovery document, on the configured Vipps origin only.

        Client secrets and user tokens go to these URLs; one on another origin would be a
        misconfiguration or worse, so it is refused rather than followed.
        """
        url = getattr(await self.login_discovery(), name)
        if not isinstance(url, str) or not url:
            raise VippsUnexpectedResponse(
                f"the OpenID configuration names no {name}", operation=operation
            )
        if _origin(url) != _origin(self._base_url):
            raise VippsUnexpectedResponse(
                f"the OpenID configuration's {name} is not on the Vipps host", operation=operation
            )
        return url

    async def ciba_start(
        self,
        msn: str,
        login_hint: str,
        scope: str,
        binding_message: str | None = None,
        requested_expiry: int | None = None,
    ) -> CibaStart:
        """Start a merchant-initiated login; the user confirms in the app.

        ``login_hint`` is ``urn:msisdn:<digits>`` (see :func:`app.vipps.login.msisdn_login_hint`);
        ``scope`` is space-separated and must include ``openid``. Not idempotent: a repeat would
        push the user twice, so it is retried only when the request never left — and not after a
        429: Vipps limits logins started towards one user ("Too many login requests started
        towards the same user at the same time. Please respect the Retry-After header"), and a
        customer at the till cannot wait that out. The 429 is raised with ``retry_after`` set.
        """
        _check_msn(msn)
        if "openid" not in scope.split():
            raise ValueError("scope must include openid")
        form = {"scope": scope, "login_hint": login_hint}
        if binding_message is not None:
            form["binding_message"] = validate_binding_message(binding_message)
        if requested_expiry is not None:
            if requested_expiry <= 0:
                raise ValueError("requested_expiry must be a positive number of seconds")
            form["requested_expiry"] = str(requested_expiry)
        operation = "login.ciba_start"
        call = _Call(
            operation,
            "POST",
            "backchannel_authentication_endpoint",
            url=await self._login_endpoint("backchannel_authentication_endpoint", operation),
            auth=_Auth.LOGIN,
            msn=msn,
            form=form,
            mutating=True,
            idempotent=False,
            retry_rate_limited=False,
        )
        return _model(CibaStart, await self._send(call), call)

    async def ciba_poll_token(self, msn: str, auth_req_id: str) -> CibaPollResult:
        """Poll once for the tokens of a login started for ``msn``; call no more often than
        ``CibaStart.interval``.

        Returns :class:`~app.vipps.schemas.CibaTokens`, :class:`~app.vipps.login.CibaPending`
        or :class:`~app.vipps.login.CibaEnded`; other errors raise. Tokens are handed out once,
        so a poll that may have reached Vipps is not repeated.
        """
        _check_msn(msn)
        operation = "login.ciba_token"
        call = _Call(
            operation,
            "POST",
            "token_endpoint",
            url=await self._login_endpoint("token_endpoint", operation),
            auth=_Auth.LOGIN,
            msn=msn,
            form={"grant_type": CIBA_GRANT_TYPE, "auth_req_id": auth_req_id},
            mutating=True,
            idempotent=False,
        )
        try:
            response = await self._send(call)
        except VippsRejected as err:
            if err.status == 400 and err.oauth_error in ("authorization_pending", "slow_down"):
                return CibaPending(slow_down=err.oauth_error == "slow_down")
            if err.status == 400 and err.oauth_error in ENDED_ERRORS:
                if err.oauth_error == "access_denied":
                    return CibaEnded(reason="access_denied", detail=err.detail)
                return CibaEnded(reason="expired_token", detail=err.detail)
            raise
        return _model(CibaTokens, response, call)

    async def userinfo(self, access_token: SecretStr) -> UserInfo:
        """The consented claims of the logged-in user; no subscription key (REFERENCE.md §8.3)."""
        operation = "login.userinfo"
        call = _Call(
            operation,
            "GET",
            "userinfo_endpoint",
            url=await self._login_endpoint("userinfo_endpoint", operation),
            auth=_Auth.USER,
            user_token=access_token,
        )
        return _model(UserInfo, await self._send(call), call)

    # ----------------------------------------------------------------------------------------
    # Transport
    # ----------------------------------------------------------------------------------------

    def _headers(
        self, call: _Call, token: SecretStr | None, keys: Credentials | None
    ) -> dict[str, str]:
        headers = dict(self._system_headers)
        match call.auth:
            case _Auth.PLATFORM:
                assert token is not None
                assert keys is not None
                headers["Authorization"] = f"Bearer {token.get_secret_value()}"
                headers["Ocp-Apim-Subscription-Key"] = keys.subscription_key.get_secret_value()
            case _Auth.LOGIN:
                assert keys is not None
                if keys.partner:
                    # Partner keys on Login: the platform access token as Bearer, and the MSN
                    # header; client_secret_basic does not work for them (Login, "Partner keys").
                    assert token is not None
                    headers["Authorization"] = f"Bearer {token.get_secret_value()}"
                else:
                    headers["Authorization"] = basic_auth(keys.client_id, keys.client_secret)
            case _Auth.USER:
                assert call.user_token is not None
                headers["Authorization"] = f"Bearer {call.user_token.get_secret_value()}"
            case _Auth.NONE:
                pass
        if call.msn is not None:
            headers["Merchant-Serial-Number"] = call.msn
        if call.json_body is not None:
            headers["Content-Type"] = "application/json"
        elif call.form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if call.idempotency_key is not None:
            headers["Idempotency-Key"] = call.idempotency_key
        return headers

    async def _keys(self, call: _Call) -> Credentials | None:
        """The key set ``call`` authenticates with (None for calls that need none)."""
        if call.auth not in (_Auth.PLATFORM, _Auth.LOGIN):
            return None
        if call.msn is None:
            raise NoCredentials(None, call.operation)
        try:
            return await self._credentials.credentials_for(call.msn)
        except NoCredentials as exc:
            if exc.operation is None:
                exc.operation = call.operation
            raise

    async def _send(self, call: _Call) -> httpx.Response:
        """Run ``call`` under the retry policy; return the 2xx response or raise a VippsError."""
        content: bytes | None = None
        if call.json_body is not None:
            # Serialized once: every attempt sends byte-identical content with the same key.
            content = json.dumps(call.json_body, separators=(",", ":")).encode("utf-8")
        elif call.form is not None:
            content = urlencode(call.form).encode("ascii")
        url = call.url or self._base_url + call.path
        # Resolved once: every attempt of the call uses the same keys (and a NoCredentials is
        # raised before anything is sent).
        keys = await self._keys(call)
        retries = 0
        token_refreshed = False
        maybe_processed = False
        while True:
            token: SecretStr | None = None
            error: VippsError
            try:
                if keys is not None and (call.auth is _Auth.PLATFORM or keys.partner):
                    token = await self._tokens.get(keys)
            except VippsUnavailable as exc:
                error = exc  # the token endpoint failed; the call itself was not sent
            else:
                started = time.monotonic()
                try:
                    response = await self._http.request(
                        call.method,
                        url,
                        params=call.params,
                        content=content,
                        headers=self._headers(call, token, keys),
                    )
                except httpx.RequestError as exc:
                    elapsed = time.monotonic() - started
                    report_call(self._on_call, call.operation, None, elapsed, None)
                    sent = _may_have_been_sent(exc)
                    unknown = call.mutating and sent
                    maybe_processed = maybe_processed or unknown
                    error = error_from_transport(
                        exc, operation=call.operation, outcome_unknown=unknown
                    )
                    if sent and not call.idempotent:
                        self._log_failure(call, error, retries)
                        raise error from None
                else:
                    elapsed = time.monotonic() - started
                    status = response.status_code
                    if status < 300:
                        report_call(self._on_call, call.operation, status, elapsed, None)
                        return response
                    error = error_from_response(response, operation=call.operation)
                    report_call(self._on_call, call.operation, status, elapsed, error.error_code)
                    if status == 401 and token is not None and not token_refreshed:
                        # The cached token may have been revoked or expired early: one fresh try.
                        assert keys is not None
                        token_refreshed = True
                        self._tokens.invalidate(keys, token)
                        logger.info("vipps.call.token_rejected", extra=_log_fields(call, error))
                        continue
                    if not isinstance(error, VippsUnavailable):
                        self._log_failure(call, error, retries)
                        raise error
                    if status >= 500 and call.mutating:
                        # A 5xx may come after the work was done; only a GET can tell.
                        maybe_processed = True
                        if not call.idempotent:
                            error = VippsOutcomeUnknown.after(error, "Vipps failed mid-request")
                            self._log_failure(call, error, retries)
                            raise error
            retry_after = error.retry_after if isinstance(error, VippsUnavailable) else None
            delay = self._retry.delay(retries, retry_after)
            if error.status == 429 and not call.retry_rate_limited:
                delay = None
            if retries >= self._retry.max_retries or delay is None:
                if maybe_processed and not isinstance(error, VippsOutcomeUnknown):
                    error = VippsOutcomeUnknown.after(
                        error, "gave up; an earlier attempt may have been processed"
                    )
                self._log_failure(call, error, retries)
                raise error
            logger.warning(
                "vipps.call.retry",
                extra={**_log_fields(call, error), "retry": retries + 1, "delay_seconds": delay},
            )
            await self._retry.sleep(delay)
            retries += 1

    def _log_failure(self, call: _Call, error: VippsError, retries: int) -> None:
        logger.warning("vipps.call.failed", extra={**_log_fields(call, error), "retries": retries})


def _log_fields(call: _Call, error: VippsError) -> dict[str, Any]:
    return {
        "operation": call.operation,
        "msn": call.msn,
        "status": error.status,
        "error_code": error.error_code,
        "trace_id": error.trace_id,
        "error_type": type(error).__name__,
    }


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _qr_params(image_format: QrImageFormat, image_size: int | None) -> dict[str, str]:
    if image_format not in ("SVG", "PNG"):
        raise ValueError("QrImageFormat is SVG or PNG")
    params: dict[str, str] = {"QrImageFormat": image_format}
    if image_size is not None:
        if not 100 <= image_size <= 2000:
            raise ValueError("QrImageSize must be 100-2000 pixels")
        params["QrImageSize"] = str(image_size)
    return params


def _unreadable(call: _Call, response: httpx.Response) -> VippsUnexpectedResponse:
    return VippsUnexpectedResponse(
        "response body does not have the documented shape",
        operation=call.operation,
        status=response.status_code,
    )


def _model(model: type[M], response: httpx.Response, call: _Call) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError:
        # Not chained: validation errors quote their input, which may hold tokens or numbers.
        raise _unreadable(call, response) from None


def _adapted(adapter: TypeAdapter[T], response: httpx.Response, call: _Call) -> T:
    try:
        return adapter.validate_json(response.content)
    except ValidationError:
        raise _unreadable(call, response) from None
