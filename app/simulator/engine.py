"""The simulator's state and every rule it enforces. No I/O except handing events to the
webhook dispatcher; every public method runs to completion without awaiting, so on one event loop
each call is atomic — two concurrent captures can never both pass the amount check.

Layout of a mutating ePayment call, mirroring what Vipps does (REFERENCE.md §1, §7):

1. gateway: subscription key and bearer token (401), then MSN (400/403);
2. rate limit per reference + MSN (429 with ``Retry-After``);
3. idempotency: same key and same body replays the stored response; same key and another body is
   409 with the documented code; any 4xx result is stored for its key like a success;
4. the business rule, which changes state only when it succeeds;
5. a ledger entry records the call, whether it took effect, and whether it was a replay.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import heapq
import hmac
import ipaddress
import itertools
import math
import random
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from app.simulator.clock import Clock, SystemClock
from app.simulator.config import CredentialSet, SalesUnit, SimulatorConfig, TestUser
from app.simulator.faults import FaultInjector, classify, note_ledger_entry
from app.simulator.models import (
    CHECKED_IN_EVENT,
    AccessToken,
    CibaRequest,
    CustomerTokenGrant,
    EventName,
    LedgerEntry,
    LoginGrant,
    MerchantQr,
    Payment,
    PaymentEvent,
    PaymentState,
    Result,
    WebhookRegistration,
    iso_7_digits,
    iso_millis,
)
from app.simulator.problems import (
    JSON,
    SimError,
    epayment_problem,
    exchange_problem,
    gateway_error,
    oauth_error,
    qr_problem,
    webhooks_problem,
)
from app.simulator.strict import request_violations
from app.simulator.validation import (
    MAX_IDEMPOTENCY_KEY,
    MSISDN_RE,
    MSN_RE,
    REFERENCE_RE,
    CreateRequest,
    business,
    invalid,
    parse_create,
    parse_modification,
)
from app.simulator.webhooks import WebhookDispatcher

Family = Literal["epayment", "qr", "exchange", "webhooks"]
_SUB_NAMESPACE = uuid.UUID("0b5c6a52-8f1e-4d7a-9a53-5f0e7d3c9b11")
_QR_NAMESPACE = uuid.UUID("7d1f3e0c-2b4a-4c6e-8f9a-1b2c3d4e5f60")
_BINDING_MESSAGE_RE = re.compile(r"^[A-Z0-9\-]{5,8}$")
_EVENT_NAME_RE = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)+\.v[0-9]+$")
CIBA_GRANT = "urn:openid:params:grant-type:ciba"
_rng = random.Random()


class SimControlError(SimError):
    """An error of the ``/_sim/`` control API: ``{"error": ...}`` JSON."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, {"error": message}, media_type=JSON)


@dataclass
class _Stored:
    fingerprint: bytes
    result: Result


@dataclass
class _Call:
    operation: str
    msn: str | None = None
    reference: str | None = None
    idempotency_key: str | None = None
    status: int = 500
    effect: bool = False
    replay: bool = False
    # Wall-clock arrival (epoch seconds, full precision) for latency measurements (benchmarks/).
    received_epoch: float = field(default_factory=time.time)


@dataclass
class _State:
    access_tokens: dict[str, AccessToken] = field(default_factory=dict)
    qrs: dict[tuple[str, str], MerchantQr] = field(default_factory=dict)
    qr_by_content: dict[str, tuple[str, str]] = field(default_factory=dict)
    customer_tokens: dict[str, CustomerTokenGrant] = field(default_factory=dict)
    payments: dict[tuple[str, str], Payment] = field(default_factory=dict)
    expiry_heap: list[tuple[datetime, str, str]] = field(default_factory=list)
    idempotency: dict[tuple[str, ...], _Stored] = field(default_factory=dict)
    windows: dict[tuple[str, ...], deque[datetime]] = field(default_factory=dict)
    registrations: dict[str, WebhookRegistration] = field(default_factory=dict)
    ciba: dict[str, CibaRequest] = field(default_factory=dict)
    login_grants: dict[str, LoginGrant] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _fingerprint(raw: bytes) -> bytes:
    """Equal for bodies that mean the same JSON, whatever their whitespace or key order."""
    try:
        parsed = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        return b"raw:" + hashlib.sha256(raw).digest()
    return hashlib.sha256(orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS)).digest()


class Simulator:
    """One simulated Vipps MobilePay environment (like "MT", the test environment)."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.clock: Clock = self.config.clock or SystemClock()
        self.faults = FaultInjector(self.config.fault_seed)
        self.webhooks = WebhookDispatcher(self.config, self.clock, self.faults)
        self.violations: list[dict[str, Any]] = []
        self._units = {unit.msn: unit for unit in self.config.sales_units}
        self._users = {user.phone_number: user for user in self.config.test_users}
        self._by_client_id = {c.client_id: c for c in self.config.credential_sets}
        self._by_subscription_key = {
            key: c for c in self.config.credential_sets for key in c.subscription_keys
        }
        self._signing_key = secrets.token_bytes(32)
        self._seq = itertools.count(1)
        self._sweeper: asyncio.Task[None] | None = None
        self.strict = self.config.strict
        self.state = _State()

    # ------------------------------------------------------------------ housekeeping

    def reset(self, *, keep_access_tokens: bool = True) -> None:
        """Forget every payment, QR, registration, login, ledger entry, fault and delivery, and
        put the sales units back as configured.

        Access tokens survive by default so a running service's cached token stays valid.
        """
        tokens = self.state.access_tokens
        self.state = _State()
        self._units = {unit.msn: unit for unit in self.config.sales_units}
        if keep_access_tokens:
            self.state.access_tokens = tokens
        self.faults.clear()
        self.violations.clear()
        self.webhooks.reset()

    def _ensure_sweeper(self) -> None:
        """Expire payments on time even when nobody polls them (the webhook must still fire)."""
        if self._sweeper is not None and not self._sweeper.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._sweeper = loop.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.expiry_sweep_interval_seconds)
            self.expire_due()

    async def aclose(self) -> None:
        """Stop background work: the expiry sweeper and every pending webhook delivery."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.webhooks.aclose()

    def check_request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> None:
        """Strict mode: record every way this request departs from the official spec."""
        problems = request_violations(method, path, headers, body)
        if problems:
            self.violations.append(
                {
                    "at": iso_millis(self.clock.now()),
                    "method": method,
                    "path": path,
                    "operation": classify(method, path),
                    "problems": problems,
                }
            )

    def advance_clock(self, seconds: float) -> datetime:
        """Move the clock forward and expire whatever ran out of time meanwhile."""
        now = self.clock.advance(seconds)
        self.expire_due()
        return now

    def expire_due(self) -> int:
        """Expire every CREATED payment whose deadline passed. O(k log n) for k expiring."""
        now = self.clock.now()
        heap = self.state.expiry_heap
        count = 0
        while heap and heap[0][0] <= now:
            _, msn, reference = heapq.heappop(heap)
            payment = self.state.payments.get((msn, reference))
            if payment is not None and self._refresh(payment):
                count += 1
        return count

    def _refresh(self, payment: Payment) -> bool:
        """Lazy expiry: a CREATED payment past its deadline becomes EXPIRED (§7.4)."""
        if payment.state is PaymentState.CREATED and self.clock.now() >= payment.expires_at:
            payment.state = PaymentState.EXPIRED
            self._add_event(
                payment, EventName.EXPIRED, payment.value, payment.create_idempotency_key
            )
            return True
        return False

    @contextmanager
    def _call(self, operation: str) -> Iterator[_Call]:
        call = _Call(operation)
        try:
            yield call
        except SimError as error:
            call.status = error.status
            raise
        finally:
            self._record(call)

    def _record(self, call: _Call, *, fault: str | None = None) -> LedgerEntry:
        entry = LedgerEntry(
            seq=next(self._seq),
            at=self.clock.now(),
            operation=call.operation,
            msn=call.msn,
            reference=call.reference,
            idempotency_key=call.idempotency_key,
            status=call.status,
            effect=call.effect,
            replay=call.replay,
            fault=fault,
            received_epoch=call.received_epoch,
        )
        self.state.ledger.append(entry)
        note_ledger_entry(entry)
        return entry

    def record_fault(
        self, operation: str | None, path: str, fault: str, status: int, headers: Mapping[str, str]
    ) -> None:
        """Ledger entry for a call a fault answered before any rule ran (no effect)."""
        if operation is None or operation not in MUTATING_OPERATIONS:
            return
        call = _Call(operation, msn=headers.get("merchant-serial-number"), status=status)
        call.idempotency_key = headers.get("idempotency-key")
        match = re.search(r"/payments/([^/]+)", path)
        call.reference = match.group(1) if match else None
        self._record(call, fault=fault)

    # ------------------------------------------------------------------ gateway checks

    def _gateway(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> SimError:
        return gateway_error(
            status, message, style=self.config.gateway_error_style, headers=headers
        )

    def authenticate(
        self, headers: Mapping[str, str], *, family: Family, msn_required: bool
    ) -> tuple[CredentialSet, str | None]:
        """Subscription key, then bearer token (401), then the MSN header (400, 403).

        Returns the credential set the token belongs to and the MSN (``None`` when optional and
        absent). The subscription key and the token must belong to the same merchant.
        """
        key = headers.get("ocp-apim-subscription-key")
        if not key:
            raise self._gateway(
                401,
                "Access denied due to missing subscription key. Make sure to include "
                "subscription key when making requests to an API.",
            )
        by_key = self._by_subscription_key.get(key)
        if by_key is None:
            raise self._gateway(
                401,
                "Access denied due to invalid subscription key. Make sure to provide a valid key "
                "for an active subscription.",
            )
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        # The word "Bearer" is required, otherwise 401 (REFERENCE.md §1).
        grant = self.state.access_tokens.get(token.strip()) if scheme == "Bearer" else None
        if grant is None or grant.credentials is not by_key:
            raise self._gateway(
                401, "Invalid or missing access token (Authorization: Bearer <token>)."
            )
        if self.clock.now() >= grant.expires_at:
            raise self._gateway(401, "The access token has expired.")
        credentials = grant.credentials
        if credentials.kind == "management":
            # Management keys reach the Management API only ("Types of partner keys").
            raise self._family_error(
                family,
                403,
                "Management keys cannot act on behalf of a sales unit.",
                "Ocp-Apim-Subscription-Key",
            )
        msn = headers.get("merchant-serial-number")
        if msn is None or msn == "":
            if msn_required or (credentials.kind == "partner" and family != "webhooks"):
                # Partner keys name the merchant in this header on every call (partner keys);
                # only a Webhooks registration may omit it to cover all the partner's merchants.
                raise self._family_error(
                    family,
                    400,
                    "The Merchant-Serial-Number header is required.",
                    "Merchant-Serial-Number",
                )
            return credentials, None
        if not MSN_RE.match(msn):
            raise self._family_error(
                family,
                400,
                "Merchant-Serial-Number must match ^[0-9]{4,6}$.",
                "Merchant-Serial-Number",
            )
        if not credentials.covers(msn) or msn not in self._units:
            raise self._family_error(
                family,
                403,
                f"The API keys are not valid for sales unit {msn}.",
                "Merchant-Serial-Number",
            )
        return credentials, msn

    def _family_error(self, family: Family, status: int, detail: str, name: str) -> SimError:
        if family == "qr":
            return qr_problem(status, detail, fields=[(name, detail)])
        if family == "exchange":
            return exchange_problem(status, detail, fields=[(name, detail)])
        if family == "webhooks":
            return webhooks_problem(
                status, detail, instance="/v1/webhooks", fields=[(name, detail)]
            )
        return epayment_problem(status, detail, fields=[(name, detail)])

    def _unit(self, msn: str) -> SalesUnit:
        return self._units[msn]

    def sales_units(self) -> list[SalesUnit]:
        """The sales units as they stand now (``/_sim/sales-units`` may have changed them)."""
        return list(self._units.values())

    def _rate_limit(self, bucket: tuple[str, ...], limit: int | None) -> None:
        """Sliding one-minute window on the simulator clock (REFERENCE.md §7.11).

        What counts, decided from the ePayment "Error handling" page: its ``Key`` column "specifies
        what we consider to be the unique identifier, and what we 'use to count'", and for
        create, capture, cancel and refund that key is ``reference`` + MSN, each operation in a
        row of its own ("you can make five capture calls per minute for one unique reference").
        The Idempotency-Key is not part of the key, so every call with that reference counts: a
        replay of a stored answer and a call the rules refuse (6080, 6150, ...) are calls like
        any other. The check therefore runs before the idempotency step, on a bucket of the
        operation alone, so captures never use up the refunds' budget. Calls the gateway turns
        away before it knows the key (401, a bad or foreign MSN) are not counted, and neither is
        a call this limit refuses: it never reached the API.
        """
        if limit is None:
            return
        now = self.clock.now()
        window = self.state.windows.get(bucket)
        if window is None:
            window = self.state.windows[bucket] = deque()
        cutoff = now - timedelta(minutes=1)
        while window and window[0] <= cutoff:
            window.popleft()
        if len(window) >= limit:
            retry_after = max(1, math.ceil((window[0] - cutoff).total_seconds()))
            raise self._gateway(
                429,
                f"Rate limit is exceeded. Try again in {retry_after} seconds.",
                {"Retry-After": str(retry_after)},
            )
        window.append(now)

    # ------------------------------------------------------------------ access token (§2)

    def issue_access_token(self, headers: Mapping[str, str]) -> Result:
        """``POST /accesstoken/get``: every field a string, as in the spec."""
        client_id = headers.get("client_id")
        secret = headers.get("client_secret")
        key = headers.get("ocp-apim-subscription-key")
        if not key:
            raise self._gateway(401, "Access denied due to missing subscription key.")
        credentials = self._by_subscription_key.get(key)
        if credentials is None:
            raise self._gateway(401, "Access denied due to invalid subscription key.")
        if not client_id or not secret:
            raise SimError(
                400,
                {
                    "error": "invalid_request",
                    "error_description": "client_id and client_secret headers are required",
                },
                media_type=JSON,
            )
        if client_id != credentials.client_id or not hmac.compare_digest(
            secret.encode(), credentials.client_secret.encode()
        ):
            raise SimError(
                401,
                {
                    "error": "unauthorized_client",
                    "error_description": "Invalid client_id or client_secret",
                },
                media_type=JSON,
            )
        now = self.clock.now()
        lifetime = self.config.access_token_lifetime_seconds
        expires = now + timedelta(seconds=lifetime)
        token = self._jwt(
            {
                "sub": client_id,
                "iat": int(now.timestamp()),
                "exp": int(expires.timestamp()),
                "jti": secrets.token_hex(8),
            }
        )
        self.state.access_tokens[token] = AccessToken(token, credentials, expires)
        body = {
            "token_type": "Bearer",
            "expires_in": str(lifetime),
            "ext_expires_in": str(lifetime),
            "expires_on": str(int(expires.timestamp())),
            "not_before": str(int(now.timestamp())),
            "resource": "00000002-0000-0000-c000-000000000000",
            "access_token": token,
        }
        return Result(200, body, media_type="application/json;charset=UTF-8")

    def _jwt(self, claims: dict[str, Any]) -> str:
        header = _b64url(orjson.dumps({"typ": "JWT", "alg": "HS256"}))
        payload = _b64url(orjson.dumps({"iss": "https://vipps-simulator/", **claims}))
        signature = hmac.new(
            self._signing_key, f"{header}.{payload}".encode(), hashlib.sha256
        ).digest()
        return f"{header}.{payload}.{_b64url(signature)}"

    # ------------------------------------------------------------------ QR merchant callback (§3)

    def put_qr(self, headers: Mapping[str, str], qr_id: str, raw: bytes) -> Result:
        """Upsert: the last call sets ``locationDescription``; the image never changes (§3.1)."""
        with self._call("PutMerchantCallbackQr") as call:
            _, msn = self.authenticate(headers, family="qr", msn_required=True)
            assert msn is not None
            call.msn, call.reference = msn, qr_id
            body = self._json_object(raw, lambda d: qr_problem(400, d, fields=[("body", d)]))
            description = body.get("locationDescription")
            if not isinstance(description, str) or not description:
                raise qr_problem(
                    400,
                    "The LocationDescription field is required.",
                    fields=[("locationDescription", "The LocationDescription field is required.")],
                )
            if len(description) > 36:
                reason = (
                    "The field LocationDescription must be a string with a maximum length of 36."
                )
                raise qr_problem(400, reason, fields=[("locationDescription", reason)])
            category = body.get("category")
            if category is not None:
                if not self.config.qr_category_supported:
                    raise qr_problem(
                        400,
                        "Could not find member 'category'.",
                        fields=[("category", "Unknown property.")],
                    )
                if category not in ("IN_STORE", "VENDING"):
                    raise qr_problem(
                        400,
                        "category must be IN_STORE or VENDING.",
                        fields=[("category", "Unknown value.")],
                    )
            existing = self.state.qrs.get((msn, qr_id))
            if existing is None:
                content_id = uuid.uuid5(_QR_NAMESPACE, f"{msn}/{qr_id}").hex
                self.state.qrs[(msn, qr_id)] = MerchantQr(
                    msn, qr_id, description, category, content_id
                )
                self.state.qr_by_content[content_id] = (msn, qr_id)
            else:
                existing.location_description = description
                existing.category = category
            call.status, call.effect = 200, True
            return Result(200)

    def _qr_listing(
        self, qr: MerchantQr, params: Mapping[str, str], base_url: str
    ) -> dict[str, Any]:
        lowered = {k.lower(): v for k, v in params.items()}
        fmt = lowered.get("qrimageformat", "SVG")
        if fmt not in ("PNG", "SVG"):
            raise qr_problem(
                400,
                "QrImageFormat must be PNG or SVG.",
                fields=[("QrImageFormat", "Must be PNG or SVG.")],
            )
        size_raw = lowered.get("qrimagesize")
        size = 800
        if size_raw is not None:
            if not size_raw.isdigit() or not 100 <= int(size_raw) <= 2000:
                raise qr_problem(
                    400,
                    "QrImageSize must be between 100 and 2000.",
                    fields=[("QrImageSize", "Must be 100 to 2000.")],
                )
            size = int(size_raw)
        url = f"{base_url}/qr/generate/{qr.content_id}.{fmt.lower()}"
        if fmt == "PNG":
            url += f"?size={size}"
        return {
            "merchantSerialNumber": qr.msn,
            "merchantQrId": qr.merchant_qr_id,
            "locationDescription": qr.location_description,
            "qrImageUrl": url,
            "qrContent": self.qr_content(qr.content_id),
        }

    @staticmethod
    def qr_content(content_id: str) -> str:
        """The text inside a callback QR. Only ``qr.vipps.no`` codes work in the app (§3.5)."""
        return f"https://qr.vipps.no/28/2/05/031/{content_id}"

    def get_qr(
        self, headers: Mapping[str, str], qr_id: str, params: Mapping[str, str], base_url: str
    ) -> Result:
        _, msn = self.authenticate(headers, family="qr", msn_required=True)
        qr = self.state.qrs.get((str(msn), qr_id))
        if qr is None:
            raise qr_problem(404, f"No merchant callback QR with id {qr_id}.")
        return Result(200, self._qr_listing(qr, params, base_url))

    def list_qrs(
        self, headers: Mapping[str, str], params: Mapping[str, str], base_url: str
    ) -> Result:
        _, msn = self.authenticate(headers, family="qr", msn_required=True)
        return Result(
            200,
            [
                self._qr_listing(qr, params, base_url)
                for (m, _), qr in self.state.qrs.items()
                if m == msn
            ],
        )

    def delete_qr(self, headers: Mapping[str, str], qr_id: str) -> Result:
        with self._call("DeleteMerchantCallbackQr") as call:
            _, msn = self.authenticate(headers, family="qr", msn_required=True)
            call.msn, call.reference = msn, qr_id
            qr = self.state.qrs.pop((str(msn), qr_id), None)
            if qr is None:
                raise qr_problem(404, f"No merchant callback QR with id {qr_id}.")
            self.state.qr_by_content.pop(qr.content_id, None)
            call.status, call.effect = 200, True
            return Result(200)

    def qr_image_content(self, content_id: str) -> str | None:
        return self.qr_content(content_id) if content_id in self.state.qr_by_content else None

    # ------------------------------------------------------------------ customer exchange (§5)

    def exchange_customer(self, headers: Mapping[str, str], raw: bytes) -> Result:
        credentials, msn = self.authenticate(headers, family="exchange", msn_required=False)
        body = self._json_object(raw, lambda d: exchange_problem(400, d, fields=[("body", d)]))
        customer = body.get("customer")
        if not isinstance(customer, dict):
            raise exchange_problem(
                400,
                "The request body contains one or more invalid parameters.",
                fields=[("customer", "Customer object is required.")],
            )
        requested = body.get("requestedData")
        if (
            not isinstance(requested, list)
            or not requested
            or any(item != "MSISDN" for item in requested)
        ):
            raise exchange_problem(
                400,
                "The request body contains one or more invalid parameters.",
                fields=[("requestedData", "Only MSISDN is supported.")],
            )
        if msn is not None:
            self._check_exchange_allowed(msn)
        token = customer.get("customerToken")
        grant = self.state.customer_tokens.get(token) if isinstance(token, str) else None
        allowed = (msn,) if msn else credentials.msns
        if grant is None or self.clock.now() >= grant.expires_at or grant.msn not in allowed:
            raise exchange_problem(
                400,
                "The request body contains one or more invalid parameters.",
                fields=[("customerToken", "The customer token is invalid or has expired.")],
            )
        self._check_exchange_allowed(grant.msn)
        return Result(
            200, {"msisdn": grant.phone_number, "timestamp": int(grant.issued_at.timestamp())}
        )

    def _check_exchange_allowed(self, msn: str) -> None:
        if not self._units[msn].customer_token_exchange_allowed:
            raise exchange_problem(
                403,
                f"Sales unit {msn} may not exchange customer tokens.",
                fields=[("Merchant-Serial-Number", "customer token exchange not enabled")],
            )

    # ------------------------------------------------------------------ ePayment (§7)

    def _idempotency_key(self, headers: Mapping[str, str], *, required: bool) -> str | None:
        key = headers.get("idempotency-key")
        if not key:
            if required:
                raise invalid("Idempotency-Key", "The Idempotency-Key header is required")
            return None
        if len(key) > MAX_IDEMPOTENCY_KEY:
            raise invalid("Idempotency-Key", "Idempotency-Key is at most 50 characters")
        return key

    def _idempotent(
        self,
        call: _Call,
        scope: tuple[str, ...],
        raw: bytes,
        conflict: Callable[[], SimError],
        run: Callable[[], Result],
    ) -> Result:
        """Replay, conflict or run-and-remember (REFERENCE.md §7.10).

        Not kept: 5xx results, and the transient refusals Vipps tells the caller to retry with
        the same key (423 / 6250 "cancel while the user is authorizing", 6280 on capture).
        """
        fingerprint = _fingerprint(raw)
        if call.idempotency_key is not None:
            stored = self.state.idempotency.get(scope)
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    raise conflict()
                call.replay, call.status = True, stored.result.status
                return stored.result
        transient = False
        try:
            result = run()
        except SimError as error:
            result = Result(error.status, error.body, error.media_type, error.headers)
            transient = error.transient
            call.effect = False
        if call.idempotency_key is not None and result.status < 500 and not transient:
            self.state.idempotency[scope] = _Stored(fingerprint, result)
        call.status = result.status
        return result

    def _payment(self, msn: str, reference: str) -> Payment:
        payment = self.state.payments.get((msn, reference))
        if payment is None:
            raise epayment_problem(404, f"Payment {reference} not found")
        self._refresh(payment)
        return payment

    def create_payment(self, headers: Mapping[str, str], raw: bytes, base_url: str) -> Result:
        with self._call("createPayment") as call:
            _, msn = self.authenticate(headers, family="epayment", msn_required=True)
            assert msn is not None
            call.msn = msn
            call.idempotency_key = self._idempotency_key(headers, required=True)
            peek = _peek_reference(raw)
            call.reference = peek
            if peek is not None:
                self._rate_limit(("createPayment", msn, peek), self.config.mutations_per_minute)
            assert call.idempotency_key is not None
            scope = (msn, "create", call.idempotency_key)

            def conflict() -> SimError:
                return business(
                    "4020", "Idempotency-Key already exists with another request body", status=409
                )

            def run() -> Result:
                body = self._json_object(raw, lambda d: invalid("body", d))
                request = parse_create(body, self._unit(msn))
                if (msn, request.reference) in self.state.payments:
                    # A new payment needs a new reference (REFERENCE.md §7.10): 409 / 4150.
                    raise business(
                        "4150", f"Reference {request.reference} already exists", status=409
                    )
                user_phone = self._customer_phone(
                    msn, request.customer_form, request.customer_value
                )
                return self._create(msn, request, user_phone, call.idempotency_key, base_url, call)

            return self._idempotent(call, scope, raw, conflict, run)

    def _customer_phone(self, msn: str, form: str | None, value: str | None) -> str | None:
        if form == "phoneNumber":
            return value
        if form == "customerToken":
            grant = self.state.customer_tokens.get(value or "")
            # A customerToken lives 15 minutes from the scan and belongs to the scanned MSN (§4).
            if grant is None or grant.msn != msn or self.clock.now() >= grant.expires_at:
                raise epayment_problem(
                    400,
                    "The customer token is invalid or has expired",
                    fields=[("customer.customerToken", "invalid or expired customer token")],
                )
            return grant.phone_number
        if form == "personalQr" and value is not None:
            digits = re.findall(r"\d{10,15}", value)
            return digits[-1] if digits else None
        return None

    def _create(
        self,
        msn: str,
        request: CreateRequest,
        user_phone: str | None,
        key: str | None,
        base_url: str,
        call: _Call,
    ) -> Result:
        now = self.clock.now()
        landing_token = secrets.token_urlsafe(24)
        redirect: str | None = None
        if request.user_flow in ("WEB_REDIRECT", "NATIVE_REDIRECT"):
            redirect = f"{base_url}/_sim/landing?token={landing_token}"
        elif request.user_flow == "QR":
            redirect = f"{base_url}/_sim/landing/qr.svg?token={landing_token}"
        payment = Payment(
            msn=msn,
            reference=request.reference,
            psp_reference=_psp_reference(),
            currency=request.currency,
            value=request.value,
            user_flow=request.user_flow,
            created_at=now,
            expires_at=now + timedelta(seconds=self.config.payment_expiry_seconds),
            create_idempotency_key=key,
            user_phone=user_phone,
            profile_scope=request.profile_scope,
            metadata=request.metadata,
            redirect_url=redirect,
            landing_token=landing_token,
        )
        self.state.payments[(msn, request.reference)] = payment
        heapq.heappush(self.state.expiry_heap, (payment.expires_at, msn, request.reference))
        # The CREATED event carries the payment's own pspReference (REFERENCE.md §7.2).
        self._add_event(payment, EventName.CREATED, payment.value, key, psp=payment.psp_reference)
        self._ensure_sweeper()
        call.effect = True
        body: dict[str, Any] = {"reference": request.reference}
        if redirect is not None:
            body["redirectUrl"] = redirect
        return Result(201, body)

    def get_payment(self, headers: Mapping[str, str], reference: str) -> Result:
        _, msn = self.authenticate(headers, family="epayment", msn_required=True)
        self._rate_limit(
            ("getPayment", headers.get("ocp-apim-subscription-key", ""), reference),
            self.config.reads_per_minute,
        )
        return Result(200, self._payment(str(msn), reference).get_response())

    def get_events(self, headers: Mapping[str, str], reference: str) -> Result:
        _, msn = self.authenticate(headers, family="epayment", msn_required=True)
        self._rate_limit(
            ("getPaymentEventLog", headers.get("ocp-apim-subscription-key", ""), reference),
            self.config.reads_per_minute,
        )
        payment = self._payment(str(msn), reference)
        return Result(200, [payment.event_body(event) for event in payment.events])

    def _modify(
        self,
        operation: str,
        headers: Mapping[str, str],
        reference: str,
        raw: bytes,
        *,
        key_required: bool,
        conflict: Callable[[], SimError],
        apply: Callable[[Payment, Any, str | None], Result],
    ) -> Result:
        with self._call(operation) as call:
            _, msn = self.authenticate(headers, family="epayment", msn_required=True)
            assert msn is not None
            call.msn, call.reference = msn, reference
            call.idempotency_key = self._idempotency_key(headers, required=key_required)
            self._rate_limit((operation, msn, reference), self.config.mutations_per_minute)
            scope = (msn, operation, reference, call.idempotency_key or "")

            def run() -> Result:
                body = self._json_body(raw, lambda d: invalid("body", d))
                payment = self._payment(msn, reference)
                before = len(payment.events)
                result = apply(payment, body, call.idempotency_key)
                call.effect = len(payment.events) > before
                return result

            return self._idempotent(call, scope, raw, conflict, run)

    def capture(self, headers: Mapping[str, str], reference: str, raw: bytes) -> Result:
        def apply(payment: Payment, body: Any, key: str | None) -> Result:
            value = parse_modification(body, payment.currency)
            if payment.state is not PaymentState.AUTHORIZED:
                raise business(
                    "6080", f"Payment is {payment.state.value}, not AUTHORIZED; cannot capture"
                )
            now = self.clock.now()
            period = timedelta(seconds=self.config.capture_period_seconds)
            if payment.authorized_at is not None and now >= payment.authorized_at + period:
                raise business("6100", "The capture period has expired for this payment")
            if payment.released_early:
                raise business("6260", "The reserved funds were released before the capture")
            if payment.transient_capture_failures > 0:
                payment.transient_capture_failures -= 1
                raise business(
                    "6280",
                    "The capture failed for a transient reason; retry with the same key",
                    transient=True,
                )
            remaining = payment.authorized - payment.captured - payment.cancelled
            if value > remaining:
                raise business(
                    "6090", f"Capture amount {value} exceeds the capturable amount {remaining}"
                )
            if value < remaining and not self._unit(payment.msn).partial_capture_allowed:
                raise business("6140", "Partial capture is not allowed for this sales unit")
            payment.captured += value
            payment.last_captured_at = now
            self._add_event(payment, EventName.CAPTURED, value, key)
            return Result(200, payment.modification_response(), media_type="application/json")

        return self._modify(
            "capturePayment",
            headers,
            reference,
            raw,
            key_required=True,
            conflict=lambda: business(
                "4010", "Idempotency-Key reused with another capture request", status=409
            ),
            apply=apply,
        )

    def refund(self, headers: Mapping[str, str], reference: str, raw: bytes) -> Result:
        def apply(payment: Payment, body: Any, key: str | None) -> Result:
            value = parse_modification(body, payment.currency)
            refundable = payment.captured - payment.refunded
            window = timedelta(seconds=self.config.refund_window_seconds)
            if (
                payment.last_captured_at is not None
                and self.clock.now() >= payment.last_captured_at + window
            ):
                # Refunds are possible within 365 days (REFERENCE.md §7.7); no error code for
                # a late refund is documented, so none is sent.
                raise invalid("modificationAmount", "The refund period for this payment has ended")
            if payment.state is not PaymentState.AUTHORIZED or value > refundable:
                raise business(
                    "6150",
                    f"Refund amount {value} exceeds the refundable amount {max(refundable, 0)}",
                )
            payment.refunded += value
            self._add_event(payment, EventName.REFUNDED, value, key)
            return Result(200, payment.modification_response())

        return self._modify(
            "refundPayment",
            headers,
            reference,
            raw,
            key_required=True,
            conflict=lambda: business(
                "4150", "Idempotency-Key reused with another refund request", status=409
            ),
            apply=apply,
        )

    def cancel(self, headers: Mapping[str, str], reference: str, raw: bytes) -> Result:
        def apply(payment: Payment, body: Any, key: str | None) -> Result:
            only = False
            if body is not None:
                if not isinstance(body, dict) or not isinstance(
                    body.get("cancelTransactionOnly", False), bool
                ):
                    raise invalid(
                        "cancelTransactionOnly", "cancelTransactionOnly must be a boolean"
                    )
                only = bool(body.get("cancelTransactionOnly", False))
            if payment.state is PaymentState.CREATED and payment.authorizing:
                # "It cannot cancel while the user is mid-authorization; retry later (error
                # 6250, or 423)" (REFERENCE.md §7.6): both, and not kept for the key.
                raise business(
                    "6250",
                    "The user is authorizing the payment; try the cancel again shortly",
                    status=423,
                    transient=True,
                )
            match payment.state:
                case PaymentState.CREATED:
                    # Before approval: TERMINATED, cancelledAmount = amount (REFERENCE.md §7.6).
                    payment.state = PaymentState.TERMINATED
                    payment.cancelled = payment.value
                    self._add_event(payment, EventName.TERMINATED, payment.value, key)
                case PaymentState.AUTHORIZED:
                    if only:
                        raise business(
                            "6060",
                            "Already authorized; cancelTransactionOnly refused the cancel",
                        )
                    remaining = payment.authorized - payment.captured - payment.cancelled
                    if payment.captured >= payment.authorized:
                        raise business(
                            "6040", "A fully captured payment cannot be cancelled; refund instead"
                        )
                    if remaining > 0:
                        # After approval the state stays AUTHORIZED; the remainder is released.
                        payment.cancelled += remaining
                        # idempotencyKey is absent on CANCELLED events (REFERENCE.md §7.9).
                        self._add_event(payment, EventName.CANCELLED, remaining, None)
                case PaymentState.TERMINATED:
                    pass
                case PaymentState.ABORTED | PaymentState.EXPIRED:
                    raise invalid(
                        "state", f"Payment is {payment.state.value} and cannot be cancelled"
                    )
            return Result(200, payment.modification_response())

        return self._modify(
            "cancelPayment",
            headers,
            reference,
            raw,
            key_required=False,
            conflict=lambda: epayment_problem(
                409, "Idempotency-Key reused with another cancel request"
            ),
            apply=apply,
        )

    def force_approve(self, headers: Mapping[str, str], reference: str, raw: bytes) -> Result:
        """``POST /epayment/v1/test/payments/{reference}/approve`` (test environment only, §7.8)."""
        with self._call("forceApprove") as call:
            _, msn = self.authenticate(headers, family="epayment", msn_required=True)
            assert msn is not None
            call.msn, call.reference = msn, reference
            body = self._json_object(raw, lambda d: invalid("body", d))
            payment = self._payment(msn, reference)
            phone: str | None
            if "token" in body:
                if body["token"] != payment.landing_token:
                    raise invalid("token", "token does not belong to this payment")
                phone = payment.user_phone or self.config.test_users[0].phone_number
            else:
                customer = body.get("customer")
                if not isinstance(customer, dict) or len(customer) != 1:
                    raise invalid(
                        "customer",
                        "customer (one of phoneNumber, customerToken) or token is required",
                    )
                if "customerToken" in customer:
                    phone = self._customer_phone(
                        msn, "customerToken", str(customer["customerToken"])
                    )
                else:
                    phone = customer.get("phoneNumber")
                if not isinstance(phone, str) or phone not in self._users:
                    raise invalid("customer.phoneNumber", "not a test user of this environment")
                if payment.user_phone is not None and payment.user_phone != phone:
                    raise invalid(
                        "customer.phoneNumber", "the payment was requested from another user"
                    )
            if payment.state is not PaymentState.CREATED:
                raise invalid(
                    "state",
                    f"Payment is {payment.state.value}; only CREATED payments can be approved",
                )
            self._authorize(payment, phone)
            call.status, call.effect = 200, True
            return Result(200)

    def _authorize(self, payment: Payment, phone: str | None) -> None:
        payment.state = PaymentState.AUTHORIZED
        payment.authorizing = False
        payment.authorized_at = self.clock.now()
        payment.authorized = payment.value
        payment.user_phone = phone
        if payment.profile_scope and phone:
            payment.sub = self.sub_for(payment.msn, phone)
        self._add_event(
            payment, EventName.AUTHORIZED, payment.value, payment.create_idempotency_key
        )

    def _add_event(
        self,
        payment: Payment,
        name: EventName,
        value: int,
        key: str | None,
        *,
        psp: str | None = None,
    ) -> PaymentEvent:
        """Append to the event log and hand the WebhookEvent to every subscribed registration."""
        event = PaymentEvent(name, value, psp or _psp_reference(), self.clock.now(), key)
        payment.events.append(event)
        for registration in self._subscribers(payment.msn, name.webhook_event):
            self.webhooks.enqueue(
                registration,
                name.webhook_event,
                payment.webhook_body(event),
                ordering=payment.reference,
            )
        return event

    def _subscribers(self, msn: str, event: str) -> list[WebhookRegistration]:
        found = [
            r
            for r in self.state.registrations.values()
            if event in r.events and (r.msn == msn or (r.msn is None and msn in r.msns))
        ]
        if event == CHECKED_IN_EVENT and len(found) > 1:
            # The sales-unit registration wins over a partner one (REFERENCE.md §4).
            own = [r for r in found if r.msn == msn]
            found = own[:1] or found[:1]
        return found

    # ------------------------------------------------------------------ Webhooks API (§6)

    def _webhook_url_refusal(self, url: str) -> str | None:
        """Why the Webhooks API would refuse ``url`` as a delivery target, or None.

        The spec's ``url`` rules (REFERENCE.md §6.1): HTTPS, world-reachable, one of the ports
        Vipps sends to (see ``SimulatorConfig.webhook_allowed_ports``). With the development
        switch ``allow_http_localhost_webhooks`` a URL on this machine is accepted as it is.
        """
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            return "The url must be an absolute HTTPS URL."
        host = parts.hostname
        if parts.scheme not in ("https", "http") or not host:
            return "The url must be an absolute HTTPS URL."
        loopback = _is_loopback(host)
        development = loopback or host in self.config.development_webhook_hosts
        if development and self.config.allow_http_localhost_webhooks:
            return None
        if parts.scheme != "https":
            return "The URL must use HTTPS."
        if loopback or _is_private_address(host):
            return f"The URL must be world-reachable; {host} is not."
        port = port or 443
        if port not in self.config.webhook_allowed_ports:
            allowed = ", ".join(str(p) for p in self.config.webhook_allowed_ports)
            return f"Port {port} is not one Vipps sends requests to (use {allowed})."
        return None

    def register_webhook(self, headers: Mapping[str, str], raw: bytes) -> Result:
        with self._call("registerWebhook") as call:
            credentials, msn = self.authenticate(headers, family="webhooks", msn_required=False)
            call.msn = msn

            def bad(detail: str, name: str) -> SimError:
                return webhooks_problem(
                    400, detail, instance="/v1/webhooks", fields=[(name, detail)]
                )

            body = self._json_object(raw, lambda d: bad(d, "body"))
            url = body.get("url")
            events = body.get("events")
            if not isinstance(url, str) or not url:
                raise bad("The url field is required.", "url")
            refusal = self._webhook_url_refusal(url)
            if refusal is not None:
                raise bad(refusal, "url")
            if (
                not isinstance(events, list)
                or not events
                or not all(isinstance(e, str) for e in events)
            ):
                raise bad("The events field is required.", "events")
            for event in events:
                if not _EVENT_NAME_RE.match(event):
                    raise bad(f"Unknown event type {event}.", "events")
            covered = (msn,) if msn else credentials.msns
            for event in set(events):
                for unit_msn in covered:
                    holders = [
                        r
                        for r in self.state.registrations.values()
                        if event in r.events
                        and r.client_id == credentials.client_id
                        and (r.msn == msn if msn else r.msn is None)
                        and unit_msn in r.msns
                    ]
                    # One user.checked-in.v1 registration per MSN; 25 for other events (§6.2).
                    limit = (
                        1 if event == CHECKED_IN_EVENT else self.config.max_registrations_per_event
                    )
                    if len(holders) >= limit:
                        raise bad(
                            f"At most {limit} webhooks may hold event {event}.",
                            "events",
                        )
            registration = WebhookRegistration(
                id=str(uuid.uuid4()),
                url=url,
                events=tuple(dict.fromkeys(events)),
                secret=base64.b64encode(secrets.token_bytes(64)).decode("ascii"),
                msn=msn,
                client_id=credentials.client_id,
                msns=covered,
            )
            self.state.registrations[registration.id] = registration
            call.reference, call.status, call.effect = registration.id, 201, True
            return Result(201, {"id": registration.id, "secret": registration.secret})

    def list_webhooks(self, headers: Mapping[str, str]) -> Result:
        credentials, msn = self.authenticate(headers, family="webhooks", msn_required=False)
        mine = [
            r.listing()
            for r in self.state.registrations.values()
            if r.client_id == credentials.client_id and r.msn == msn
        ]
        return Result(200, {"webhooks": mine})

    def delete_webhook(self, headers: Mapping[str, str], webhook_id: str) -> Result:
        with self._call("deleteWebhook") as call:
            credentials, msn = self.authenticate(headers, family="webhooks", msn_required=False)
            call.msn, call.reference = msn, webhook_id
            registration = self.state.registrations.get(webhook_id)
            if (
                registration is None
                or registration.client_id != credentials.client_id
                or registration.msn != msn
            ):
                # The spec documents only 204 and 400 for this operation.
                raise webhooks_problem(
                    400,
                    f"No webhook with id {webhook_id}.",
                    instance=f"/v1/webhooks/{webhook_id}",
                    fields=[("id", "Unknown webhook id.")],
                )
            del self.state.registrations[webhook_id]
            call.status, call.effect = 204, True
            return Result(204)

    # ------------------------------------------------------------------ Login / CIBA (§8)

    def openid_configuration(self, base_url: str) -> Result:
        access = f"{base_url}/access-management-1.0/access"
        body = {
            "issuer": f"{access}/",
            "authorization_endpoint": f"{access}/oauth2/auth",
            "token_endpoint": f"{access}/oauth2/token",
            "userinfo_endpoint": f"{base_url}/vipps-userinfo-api/userinfo",
            "jwks_uri": f"{access}/.well-known/jwks.json",
            "backchannel_authentication_endpoint": (
                f"{base_url}/vipps-login-ciba/api/backchannel/authentication"
            ),
            "backchannel_token_delivery_modes_supported": ["poll"],
            "backchannel_user_code_parameter_supported": False,
            "grant_types_supported": ["authorization_code", CIBA_GRANT],
            "response_types_supported": ["code"],
            "subject_types_supported": ["pairwise"],
            # The simulator signs id_tokens with HS256; the real service uses RS256.
            "id_token_signing_alg_values_supported": ["HS256"],
            "scopes_supported": ["openid", "name", "phoneNumber", "email", "address", "birthDate"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "claims_supported": [
                "sub",
                "name",
                "given_name",
                "family_name",
                "phone_number",
                "email",
                "email_verified",
                "birthdate",
            ],
        }
        return Result(200, body, headers={"Cache-Control": "public, max-age=3600"})

    def _login_client(
        self, headers: Mapping[str, str], form: Mapping[str, str]
    ) -> tuple[CredentialSet, str]:
        """Who calls a Login endpoint, and for which sales unit.

        Sales-unit keys authenticate with ``client_secret_basic`` (default) or
        ``client_secret_post`` (REFERENCE.md §8.1); the MSN is the one of the keys. Partner keys
        cannot: they send a platform access token as ``Bearer`` and the merchant's MSN in
        ``Merchant-Serial-Number`` (Login API, "Partner keys": "The token_endpoint_authentication
        methods, client_secret_basic and client_secret_post, do not work for partner key
        integrations"). Either way the sales unit must have Login enabled ("Why does Login fail
        for my sales unit?", Login API FAQ); until then the client is not valid for Login.
        """
        authorization = headers.get("authorization", "")
        header_msn = headers.get("merchant-serial-number") or None
        credentials: CredentialSet | None
        if authorization.startswith("Bearer "):
            grant = self.state.access_tokens.get(authorization[7:].strip())
            if grant is None or self.clock.now() >= grant.expires_at:
                raise oauth_error(401, "invalid_client", "Client authentication failed")
            credentials = grant.credentials
            if credentials.kind != "partner":
                raise oauth_error(
                    401,
                    "invalid_client",
                    "An access token authenticates partner keys only; use client_secret_basic",
                )
            if header_msn is None:
                raise oauth_error(
                    400,
                    "invalid_request",
                    "Merchant-Serial-Number is required with partner keys",
                )
            msn = header_msn
        else:
            client_id, secret = form.get("client_id"), form.get("client_secret")
            if authorization.startswith("Basic "):
                try:
                    decoded = base64.b64decode(authorization[6:], validate=True).decode()
                except (ValueError, UnicodeDecodeError):
                    decoded = ""
                client_id, _, secret = decoded.partition(":")
            credentials = self._by_client_id.get(client_id or "")
            if (
                credentials is None
                or not secret
                or not hmac.compare_digest(secret.encode(), credentials.client_secret.encode())
            ):
                raise oauth_error(401, "invalid_client", "Client authentication failed")
            if credentials.kind != "sales_unit":
                raise oauth_error(
                    401,
                    "invalid_client",
                    "client_secret_basic and client_secret_post do not work for partner keys",
                )
            msn = header_msn or credentials.msns[0]
        if not credentials.covers(msn) or msn not in self._units:
            raise oauth_error(
                400, "invalid_request", "Merchant-Serial-Number does not belong to this client"
            )
        if not self._units[msn].login_enabled:
            raise oauth_error(401, "invalid_client", f"Login is not enabled for sales unit {msn}")
        return credentials, msn

    def _limit_open_logins(self, phone: str) -> None:
        """429 with ``Retry-After`` when the user already has unanswered logins (see config)."""
        limit = self.config.ciba_open_logins_per_user
        if limit is None:
            return
        now = self.clock.now()
        open_ones = sorted(
            r.expires_at
            for r in self.state.ciba.values()
            if r.phone_number == phone and r.status == "pending" and now < r.expires_at
        )
        if len(open_ones) >= limit:
            retry_after = max(1, math.ceil((open_ones[0] - now).total_seconds()))
            raise SimError(
                429,
                {
                    "error": "too_many_requests",
                    "error_description": "Too many login requests towards this user at once",
                },
                media_type=JSON,
                headers={"Retry-After": str(retry_after), "Cache-Control": "no-store"},
            )

    def ciba_start(self, headers: Mapping[str, str], form: Mapping[str, str]) -> Result:
        with self._call("cibaAuthentication") as call:
            credentials, msn = self._login_client(headers, form)
            call.msn = msn
            scope = tuple((form.get("scope") or "").split())
            if "openid" not in scope:
                raise oauth_error(400, "invalid_scope", "scope must include openid")
            hint = form.get("login_hint") or ""
            if not hint.startswith("urn:msisdn:") or not MSISDN_RE.match(hint[11:]):
                raise oauth_error(400, "invalid_request", "login_hint must be urn:msisdn:<MSISDN>")
            phone = hint[11:]
            user = self._users.get(phone)
            # Beyond the CIBA standard's errors, the merchant-initiated login page lists
            # "error_code=invalid_user" (no account, inactive, or not eligible, e.g. under 15)
            # and "error_code=old_app" (the app is too old for this flow). Sent as the string
            # ``error_code`` next to the standard ``error``.
            if user is None or not user.login_eligible:
                error = oauth_error(400, "invalid_request", "No eligible user for login_hint")
                error.body["error_code"] = "invalid_user"
                raise error
            if not user.app_supports_login:
                error = oauth_error(
                    400, "invalid_request", "The user's app does not support this login"
                )
                error.body["error_code"] = "old_app"
                raise error
            self._limit_open_logins(phone)
            binding = form.get("binding_message")
            if binding is not None and not _BINDING_MESSAGE_RE.match(binding):
                raise oauth_error(
                    400, "invalid_binding_message", "binding_message must match ^[A-Z0-9\\-]{5,8}$"
                )
            expires_in = self.config.ciba_expires_in_seconds
            requested = form.get("requested_expiry")
            if requested is not None:
                if not requested.isdigit() or int(requested) <= 0:
                    raise oauth_error(
                        400, "invalid_request", "requested_expiry must be a positive integer"
                    )
                expires_in = int(requested)
            now = self.clock.now()
            request = CibaRequest(
                auth_req_id=secrets.token_urlsafe(20),
                client_id=credentials.client_id,
                msn=msn,
                phone_number=phone,
                scope=scope,
                binding_message=binding,
                created_at=now,
                expires_at=now + timedelta(seconds=expires_in),
                interval=self.config.ciba_interval_seconds,
            )
            self.state.ciba[request.auth_req_id] = request
            call.reference, call.status, call.effect = request.auth_req_id, 200, True
            return Result(
                200,
                {
                    "auth_req_id": request.auth_req_id,
                    "expires_in": expires_in,
                    "interval": request.interval,
                },
            )

    def token(self, headers: Mapping[str, str], form: Mapping[str, str]) -> Result:
        """CIBA polling: pending, slow_down, access_denied, expired_token, or the tokens (§8.3)."""
        credentials, msn = self._login_client(headers, form)
        if form.get("grant_type") != CIBA_GRANT:
            raise oauth_error(400, "unsupported_grant_type", f"grant_type must be {CIBA_GRANT}")
        request = self.state.ciba.get(form.get("auth_req_id") or "")
        if (
            request is None
            or request.client_id != credentials.client_id
            or request.msn != msn
            or request.status == "redeemed"
        ):
            raise oauth_error(400, "invalid_grant", "Unknown or already used auth_req_id")
        now = self.clock.now()
        if now >= request.expires_at:
            raise oauth_error(400, "expired_token", "The authentication request has expired")
        if request.status == "refused":
            raise oauth_error(400, "access_denied", "The user refused the login")
        if request.status == "pending":
            too_fast = request.last_poll is not None and now - request.last_poll < timedelta(
                seconds=request.interval
            )
            request.last_poll = now
            if too_fast:
                raise oauth_error(
                    400, "slow_down", f"Poll at most every {request.interval} seconds"
                )
            raise oauth_error(400, "authorization_pending", "The user has not answered yet")
        request.status = "redeemed"
        lifetime = self.config.login_access_token_lifetime_seconds
        access_token = secrets.token_urlsafe(32)
        self.state.login_grants[access_token] = LoginGrant(
            access_token,
            request.msn,
            request.phone_number,
            request.scope,
            now + timedelta(seconds=lifetime),
        )
        id_token = self._jwt(
            {
                "sub": self.sub_for(request.msn, request.phone_number),
                "aud": credentials.client_id,
                "iat": int(now.timestamp()),
                "exp": int(now.timestamp()) + lifetime,
                "auth_req_id": request.auth_req_id,
                # Partners validate the id_token by this claim, not by a client_id they do not
                # hold (Login API, "Partner keys": ID token validation).
                "msn": request.msn,
            }
        )
        body = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "id_token": id_token,
            "scope": " ".join(request.scope),
        }
        return Result(200, body, headers={"Cache-Control": "no-store"})

    def userinfo(self, headers: Mapping[str, str]) -> Result:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        grant = self.state.login_grants.get(token.strip()) if scheme == "Bearer" else None
        if grant is None or self.clock.now() >= grant.expires_at:
            error = oauth_error(
                401, "invalid_token", "The access token is missing, invalid or expired"
            )
            error.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            raise error
        user = self._users[grant.phone_number]
        claims: dict[str, Any] = {"sub": self.sub_for(grant.msn, user.phone_number)}
        if "name" in grant.scope:
            claims.update(name=user.name, given_name=user.given_name, family_name=user.family_name)
        if "phoneNumber" in grant.scope:
            claims["phone_number"] = user.phone_number
        if "email" in grant.scope:
            claims.update(email=user.email, email_verified=True)
        if "birthDate" in grant.scope:
            claims["birthdate"] = user.birth_date
        return Result(200, claims)

    @staticmethod
    def sub_for(msn: str, phone_number: str) -> str:
        """``sub`` is stable per sales unit and user (REFERENCE.md §8.3)."""
        return str(uuid.uuid5(_SUB_NAMESPACE, f"{msn}:{phone_number}"))

    # ------------------------------------------------------------------ customer controls (/_sim/)

    def user(self, phone_number: str | None) -> TestUser:
        if phone_number is None:
            return self.config.test_users[0]
        user = self._users.get(phone_number)
        if user is None:
            raise SimControlError(400, f"{phone_number} is not a test user")
        return user

    def scan(
        self,
        *,
        merchant_qr_id: str | None = None,
        msn: str | None = None,
        qr_content: str | None = None,
        phone_number: str | None = None,
    ) -> dict[str, Any]:
        """A user scans a callback QR: issue a 15-minute customer token, emit user.checked-in.v1."""
        qr: MerchantQr | None = None
        if qr_content is not None:
            located = self.state.qr_by_content.get(qr_content.rstrip("/").rsplit("/", 1)[-1])
            qr = self.state.qrs.get(located) if located else None
        else:
            candidates = [
                q
                for (m, i), q in self.state.qrs.items()
                if i == merchant_qr_id and (msn is None or m == msn)
            ]
            if len(candidates) > 1:
                raise SimControlError(409, "merchantQrId exists for several MSNs; pass msn")
            qr = candidates[0] if candidates else None
        if qr is None:
            # A deleted or unknown QR tells the user "not found" (REFERENCE.md §3.3).
            raise SimControlError(404, "QR code not found")
        user = self.user(phone_number)
        now = self.clock.now()
        token = base64.b64encode(secrets.token_bytes(33)).decode("ascii")
        grant = CustomerTokenGrant(
            token,
            qr.msn,
            qr.merchant_qr_id,
            user.phone_number,
            now,
            now + timedelta(seconds=self.config.customer_token_lifetime_seconds),
        )
        self.state.customer_tokens[token] = grant
        payload = {
            "customerToken": token,
            "merchantQrId": qr.merchant_qr_id,
            "msn": qr.msn,
            "initiatedAt": iso_7_digits(now),
        }
        deliveries = [
            self.webhooks.enqueue(r, CHECKED_IN_EVENT, payload, ordering=None).id
            for r in self._subscribers(qr.msn, CHECKED_IN_EVENT)
        ]
        return {
            **payload,
            "phoneNumber": user.phone_number,
            "expiresAt": iso_millis(grant.expires_at),
            "webhookRegistered": bool(deliveries),
            "deliveryIds": deliveries,
        }

    def _sim_payment(self, reference: str, msn: str | None) -> Payment:
        matches = [
            p
            for (m, r), p in self.state.payments.items()
            if r == reference and (msn is None or m == msn)
        ]
        if not matches:
            raise SimControlError(404, f"No payment {reference}")
        if len(matches) > 1:
            raise SimControlError(409, "reference exists for several MSNs; pass msn")
        self._refresh(matches[0])
        return matches[0]

    def user_approve(
        self, reference: str, msn: str | None = None, phone_number: str | None = None
    ) -> dict[str, Any]:
        with self._call("userApprove") as call:
            payment = self._sim_payment(reference, msn)
            call.msn, call.reference = payment.msn, reference
            if payment.state is not PaymentState.CREATED:
                raise SimControlError(409, f"Payment is {payment.state.value}")
            phone = phone_number or payment.user_phone or self.config.test_users[0].phone_number
            self._authorize(payment, self.user(phone).phone_number)
            call.status, call.effect = 200, True
            return payment.get_response()

    def user_decline(self, reference: str, msn: str | None = None) -> dict[str, Any]:
        with self._call("userDecline") as call:
            payment = self._sim_payment(reference, msn)
            call.msn, call.reference = payment.msn, reference
            if payment.state is not PaymentState.CREATED:
                raise SimControlError(409, f"Payment is {payment.state.value}")
            payment.state = PaymentState.ABORTED
            payment.authorizing = False
            self._add_event(
                payment, EventName.ABORTED, payment.value, payment.create_idempotency_key
            )
            call.status, call.effect = 200, True
            return payment.get_response()

    def expire_now(self, reference: str, msn: str | None = None) -> dict[str, Any]:
        with self._call("expirePayment") as call:
            payment = self._sim_payment(reference, msn)
            call.msn, call.reference = payment.msn, reference
            if payment.state is not PaymentState.CREATED:
                raise SimControlError(409, f"Payment is {payment.state.value}")
            payment.expires_at = self.clock.now()
            self._refresh(payment)
            call.status, call.effect = 200, True
            return payment.get_response()

    def user_authorizing(self, reference: str, msn: str | None = None) -> dict[str, Any]:
        """The user opened the request and is approving it (PIN, 3-D Secure): until they finish,
        a cancel answers 423 / 6250 (REFERENCE.md §7.6)."""
        payment = self._sim_payment(reference, msn)
        if payment.state is not PaymentState.CREATED:
            raise SimControlError(409, f"Payment is {payment.state.value}")
        payment.authorizing = True
        return payment.get_response()

    def release_funds(self, reference: str, msn: str | None = None) -> dict[str, Any]:
        """The issuer let the reservation go before capture: captures answer 6260 (§7.5)."""
        payment = self._sim_payment(reference, msn)
        if payment.state is not PaymentState.AUTHORIZED:
            raise SimControlError(409, f"Payment is {payment.state.value}")
        payment.released_early = True
        return payment.get_response()

    def fail_captures(self, reference: str, times: int, msn: str | None = None) -> dict[str, Any]:
        """The next ``times`` captures of the payment answer 6280, transient (§7.5)."""
        if times < 0:
            raise SimControlError(400, "times must not be negative")
        payment = self._sim_payment(reference, msn)
        payment.transient_capture_failures = times
        return {"reference": payment.reference, "transientCaptureFailures": times}

    def sales_unit_json(self, unit: SalesUnit) -> dict[str, Any]:
        return {
            "msn": unit.msn,
            "name": unit.name,
            "currency": unit.currency,
            "pushMessageAllowed": unit.push_message_allowed,
            "loginEnabled": unit.login_enabled,
            "customerTokenExchangeAllowed": unit.customer_token_exchange_allowed,
            "partialCaptureAllowed": unit.partial_capture_allowed,
        }

    _UNIT_FIELDS = {
        "pushMessageAllowed": "push_message_allowed",
        "loginEnabled": "login_enabled",
        "customerTokenExchangeAllowed": "customer_token_exchange_allowed",
        "partialCaptureAllowed": "partial_capture_allowed",
    }

    def update_sales_unit(self, msn: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """What Vipps MobilePay switches on or off for a sales unit on request (see SalesUnit)."""
        unit = self._units.get(msn)
        if unit is None:
            raise SimControlError(404, f"No sales unit {msn}")
        updates: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "currency":
                if value not in ("NOK", "DKK", "EUR"):
                    raise SimControlError(400, "currency must be NOK, DKK or EUR")
                updates["currency"] = value
            elif name in self._UNIT_FIELDS:
                if not isinstance(value, bool):
                    raise SimControlError(400, f"{name} must be true or false")
                updates[self._UNIT_FIELDS[name]] = value
            elif name != "msn":
                raise SimControlError(400, f"unknown sales unit setting {name}")
        self._units[msn] = replace(unit, **updates)
        return self.sales_unit_json(self._units[msn])

    def payment_by_token(self, token: str) -> Payment | None:
        for payment in self.state.payments.values():
            if payment.landing_token == token:
                return payment
        return None

    def ciba_answer(self, auth_req_id: str, *, consent: bool) -> dict[str, Any]:
        request = self.state.ciba.get(auth_req_id)
        if request is None:
            raise SimControlError(404, "Unknown auth_req_id")
        if request.status != "pending" or self.clock.now() >= request.expires_at:
            raise SimControlError(409, "The login is no longer pending")
        request.status = "consented" if consent else "refused"
        return self.ciba_json(request)

    def ciba_json(self, request: CibaRequest) -> dict[str, Any]:
        return {
            "authReqId": request.auth_req_id,
            "msn": request.msn,
            "phoneNumber": request.phone_number,
            "scope": " ".join(request.scope),
            "bindingMessage": request.binding_message,
            "status": "expired"
            if request.status == "pending" and self.clock.now() >= request.expires_at
            else request.status,
            "expiresAt": iso_millis(request.expires_at),
        }

    # ------------------------------------------------------------------ parsing helpers

    @staticmethod
    def _json_body(raw: bytes, error: Callable[[str], SimError]) -> Any:
        if not raw.strip():
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise error("The request body is not valid JSON") from None

    def _json_object(self, raw: bytes, error: Callable[[str], SimError]) -> dict[str, Any]:
        body = self._json_body(raw, error)
        if not isinstance(body, dict):
            raise error("The request body must be a JSON object")
        return body


MUTATING_OPERATIONS = frozenset(
    {
        "createPayment",
        "capturePayment",
        "cancelPayment",
        "refundPayment",
        "forceApprove",
        "PutMerchantCallbackQr",
        "DeleteMerchantCallbackQr",
        "registerWebhook",
        "deleteWebhook",
        "cibaAuthentication",
    }
)


def _peek_reference(raw: bytes) -> str | None:
    """The ``reference`` of a create body, for rate limiting before full validation."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    reference = body.get("reference") if isinstance(body, dict) else None
    return reference if isinstance(reference, str) and REFERENCE_RE.match(reference) else None


def _psp_reference() -> str:
    return str(_rng.randrange(10**17, 10**18))


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_private_address(host: str) -> bool:
    """An IP literal no one outside this network can reach (names are not resolved)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_private or address.is_link_local or address.is_unspecified
