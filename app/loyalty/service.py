"""The customer-club step between the scan and the payment request (issue 5, REFERENCE.md §5, §8).

A store's policy decides what happens after a scan:

* ``off`` — no club step: the state machine requests the payment straight away.
* ``lookup`` — exchange the customer token for the phone number, look the member up, attach it.
* ``enroll`` — as ``lookup``; a non-member is also asked to join through a merchant-initiated
  (CIBA) login with the phone number as login hint; on consent the member is stored with its
  Vipps ``sub``.

Invariants:

* **The sale never waits on the club.** Exchange, lookup and login errors end the step with the
  reason in ``club_outcome``/``club_note``, and the payment is requested without membership.
* **The customer token outlives the step.** A token lives 15 minutes from the scan; the payment
  must go out at least ``payment_request_margin_seconds`` before it expires, and a member-price
  hold needs its own seconds after identification. The step is released (``IDENTIFY_TIMED_OUT``)
  at :func:`identify_deadline` — or after ``club.enroll_wait_seconds`` of waiting for the
  customer's answer, whichever is first — while the login carries on and its outcome is recorded
  on the checkout and the member when it comes. The reconciler releases a step whose process died
  (:func:`app.repository.checkouts_identifying_past`).
* **Vipps's polling rule is kept.** The token endpoint is polled no more often than the login's
  ``interval``, five seconds slower after each ``slow_down`` (REFERENCE.md §8.3).
* **The phone number is kept only where the policy needs it:** in memory during the step, and,
  encrypted, in the member row of someone who joined. It is never logged unmasked, and never
  stored on the checkout.
* **Writes follow the checkout rules:** each change is one load-decide-save of the checkout
  (:meth:`CheckoutService.change`), and the club fields are saved with the event they explain.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, assert_never

import structlog
from pydantic import SecretStr

from app import repository as repo
from app.domain.receipt import check_checkout, normalize_receipt
from app.domain.state_machine import CheckoutState, Event, EventKind
from app.domain.statuses import ClubPolicy
from app.loyalty.members import (
    DatabaseMemberDirectory,
    MemberDirectory,
    MemberDirectoryUnavailable,
    MemberRecord,
    NewMember,
)
from app.models import Store
from app.observability.pii import mask_phone
from app.persistence.records import CheckoutRecord, CommandRecord, SeenRequest
from app.service.checkouts import CheckoutService, request_hash
from app.service.context import ServiceContext
from app.service.errors import (
    Conflict,
    InvalidCheckout,
    NotFound,
)
from app.settings import ClubSettings
from app.vipps.errors import VippsError, VippsOutcomeUnknown, VippsUnavailable
from app.vipps.login import CibaEnded, CibaPending, msisdn_login_hint
from app.vipps.schemas import CibaTokens
from app.workers.outbox import Result

log = structlog.get_logger("app.loyalty")

# ``club_outcome`` values: stable, shown to tills as ``member.outcome``.
MEMBER = "member"
NOT_MEMBER = "not_member"
ENROLLING = "enrolling"
ENROLLED = "enrolled"
ENROLLMENT_REFUSED = "enrollment_refused"
ENROLLMENT_EXPIRED = "enrollment_expired"
ENROLLMENT_FAILED = "enrollment_failed"
EXCHANGE_FAILED = "exchange_failed"
LOOKUP_FAILED = "lookup_failed"
NO_CUSTOMER_TOKEN = "no_customer_token"  # noqa: S105 (an outcome name, not a secret)

# Shown on the till and in the app so the customer can tell the request is theirs (§8.2:
# ^[A-Z0-9-]{5,8}$). No 0/O, 1/I: it is read off a screen.
_BINDING_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_BINDING_LENGTH = 6
# RFC 8628 §3.5, adopted by CIBA: after ``slow_down`` poll five seconds less often.
_SLOW_DOWN_STEP = 5


def new_binding_message() -> str:
    return "".join(secrets.choice(_BINDING_ALPHABET) for _ in range(_BINDING_LENGTH))


def identify_deadline(
    checkout: CheckoutRecord, store: Store | None, ctx: ServiceContext, now: datetime
) -> datetime:
    """The last moment the club step may hold the sale: the payment request must still go out
    ``payment_request_margin_seconds`` before the customer token expires, after a member-price
    hold of the store's length if the store holds for member prices."""
    settings = ctx.settings.checkout
    expires = checkout.customer_token_expires_at or now + timedelta(
        seconds=settings.customer_token_lifetime_seconds
    )
    deadline = expires - timedelta(seconds=settings.payment_request_margin_seconds)
    if store is not None and store.member_price_hold:
        deadline -= timedelta(seconds=store.member_price_hold_seconds)
    return deadline


def _vipps_reason(error: VippsError) -> str:
    """Why a Vipps call failed, for ``club_note``: status, code and title, never the body."""
    parts = [f"HTTP {error.status}" if error.status else type(error).__name__]
    if error.error_code:
        parts.append(error.error_code)
    if error.title:
        parts.append(error.title)
    return ": ".join(parts)[:300]


def _login_refusal(error: VippsError) -> str:
    """Why Vipps would not start the enrollment login, in words for the till and the operator.

    The merchant-initiated login guide documents, besides the CIBA standard's errors: 429 "Too
    many login requests started towards the same user at the same time" (respect Retry-After),
    ``error_code=old_app`` and ``error_code=invalid_user``; and a sales unit without Login set up
    gets ``invalid_client`` (Login API FAQ). None of them is worth holding the sale for.
    """
    code = (error.error_code or "").lower()
    if error.status == 429:
        seconds = _retry_after(error)
        wait = f"; Vipps asks to wait {round(seconds)} s" if seconds else ""
        return f"another login to this customer is still open{wait}"
    if code == "old_app":
        return "the customer's app is too old for login; they can update it"
    if code == "invalid_user":
        return "the customer cannot use Vipps login (no active account, or not eligible)"
    if error.oauth_error == "invalid_client" or code == "invalid_client":
        return "Login is not enabled for this sales unit, or its keys are not valid for Login"
    return _vipps_reason(error)


def _retry_after(error: VippsError) -> float | None:
    value = getattr(error, "retry_after", None)
    return float(value) if isinstance(value, int | float) and value > 0 else None


class MembersManagedElsewhere(Conflict):
    code = "members_managed_elsewhere"

    def __init__(self) -> None:
        super().__init__("members live in the chain's loyalty system; manage them there")


class MemberNotFound(NotFound):
    code = "member_not_found"

    def __init__(self, member_id: str) -> None:
        super().__init__(f"member {member_id} not found")


@dataclass(frozen=True)
class _Enrollment:
    """An open login, followed in the background by :meth:`ClubService._follow`."""

    checkout_id: str
    store_id: str
    msn: str
    msisdn: str
    auth_req_id: str
    interval: int
    expires_at: datetime
    release_at: datetime  # when the sale stops waiting for the customer's answer

    def __repr__(self) -> str:
        return f"_Enrollment(checkout_id={self.checkout_id!r}, phone={mask_phone(self.msisdn)!r})"


class ClubService:
    """Runs the club step for the outbox's ``EXCHANGE_TOKEN`` command, follows enrollment logins,
    and takes the till's member-price update.

    Open logins are followed by tasks of this process; :meth:`aclose` stops them. A login whose
    process stopped is abandoned: the reconciler releases its sale, and the customer's consent is
    not recorded (they can be asked again on their next visit).
    """

    def __init__(
        self,
        ctx: ServiceContext,
        checkouts: CheckoutService,
        directory: MemberDirectory,
        *,
        config: ClubSettings | None = None,
    ) -> None:
        self.ctx = ctx
        self.checkouts = checkouts
        self.directory = directory
        self.config = config or ctx.settings.club
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # ---- identification (outbox command EXCHANGE_TOKEN) ---------------------------------------

    async def identify(self, command: CommandRecord, checkout: CheckoutRecord) -> Result:
        """Exchange the token, look the customer up, maybe start an enrollment login.

        Always ends the command (``DONE``): failures are recorded on the checkout and the sale
        goes on. The outbox retries only when this raises (database trouble); a retry is safe
        because a login already started for the checkout is not started again.
        """
        if checkout.state is not CheckoutState.IDENTIFYING:
            return Result("DONE", detail={"skipped": checkout.state.value})
        async with self.ctx.sessions() as session:
            store = await repo.get_store(session, checkout.store_id)
        policy = _policy(store)
        now = self.ctx.clock()
        if policy is ClubPolicy.OFF:
            await self._finish(checkout.id, None, "customer club switched off")
            return Result("DONE")
        token_expired = (
            checkout.customer_token_expires_at is not None
            and checkout.customer_token_expires_at <= now
        )
        if not checkout.customer_token_enc or token_expired:
            await self._finish(checkout.id, NO_CUSTOMER_TOKEN, "no valid customer token")
            return Result("DONE")
        token = SecretStr(self.ctx.secrets.decrypt(checkout.customer_token_enc))
        try:
            exchanged = await self.ctx.vipps.exchange_customer_token(checkout.msn, token)
        except VippsError as exc:
            note = f"phone number exchange failed ({_vipps_reason(exc)})"
            await self._finish(checkout.id, EXCHANGE_FAILED, note)
            return Result("DONE")
        msisdn = exchanged.msisdn.get_secret_value()
        try:
            member = await self.directory.find_by_phone(msisdn)
        except MemberDirectoryUnavailable as exc:
            await self._finish(checkout.id, LOOKUP_FAILED, f"member lookup failed ({exc})")
            return Result("DONE")
        if member is not None:
            await self._finish(checkout.id, MEMBER, _member_note(member), member_id=member.id)
            return Result("DONE")
        if policy is ClubPolicy.LOOKUP:
            await self._finish(checkout.id, NOT_MEMBER, "not a member")
            return Result("DONE")
        await self._start_enrollment(checkout, store, msisdn, now)
        return Result("DONE")

    async def _start_enrollment(
        self, checkout: CheckoutRecord, store: Store | None, msisdn: str, now: datetime
    ) -> None:
        if checkout.id in self._tasks:
            return  # this process is already following the login
        if checkout.ciba_auth_req_id:
            # An earlier attempt started a login and its process is gone. Pushing the customer
            # a second time would be confusing; pay now and let that login lapse.
            await self._finish(
                checkout.id, ENROLLMENT_FAILED, "enrollment interrupted; paying without it"
            )
            return
        binding = new_binding_message()
        try:
            started = await self.ctx.vipps.ciba_start(
                checkout.msn,
                msisdn_login_hint(msisdn),
                self.config.login_scope,
                binding_message=binding,
                requested_expiry=self.config.login_requested_expiry_seconds,
            )
        except VippsError as exc:
            note = f"enrollment login could not start ({_login_refusal(exc)})"
            log.info(
                "club.enrollment.not_started",
                checkout_id=checkout.id,
                status=exc.status,
                error_code=exc.error_code,
            )
            await self._finish(checkout.id, ENROLLMENT_FAILED, note)
            return
        except ValueError:
            note = "enrollment login could not start (phone number not usable as login hint)"
            await self._finish(checkout.id, ENROLLMENT_FAILED, note)
            return
        release_at = min(
            identify_deadline(checkout, store, self.ctx, now),
            now + timedelta(seconds=self.config.enroll_wait_seconds),
        )
        enrollment = _Enrollment(
            checkout_id=checkout.id,
            store_id=checkout.store_id,
            msn=checkout.msn,
            msisdn=msisdn,
            auth_req_id=started.auth_req_id,
            interval=max(1, started.interval),
            expires_at=now + timedelta(seconds=started.expires_in),
            release_at=release_at,
        )

        def enrolling(current: CheckoutRecord) -> None:
            current.ciba_auth_req_id = started.auth_req_id
            current.club_outcome = ENROLLING
            current.club_note = f"asked to join the club in the app; code {binding}"

        if (
            await self.checkouts.change(
                checkout.id, None, actor="club", edit=enrolling, missing_ok=True
            )
            is None
        ):
            return
        log.info(
            "club.enrollment.started",
            checkout_id=checkout.id,
            phone=mask_phone(msisdn),
            interval=enrollment.interval,
            expires_in=started.expires_in,
            release_in=round((release_at - now).total_seconds(), 1),
        )
        task = asyncio.create_task(self._follow(enrollment), name=f"club-enroll-{checkout.id}")
        self._tasks[checkout.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(checkout.id, None))

    # ---- following a login --------------------------------------------------------------------

    async def _follow(self, enrollment: _Enrollment) -> None:
        """Poll the login until it ends; release the sale at ``release_at`` if still open."""
        try:
            outcome, note, member = await self._await_answer(enrollment)
            await self._finish(
                enrollment.checkout_id,
                outcome,
                note,
                member_id=member.id if member else None,
                after_payment_note=True,
            )
            log.info(
                "club.enrollment.finished", checkout_id=enrollment.checkout_id, outcome=outcome
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            # The sale is released by the reconciler at the token deadline at the latest.
            log.exception("club.enrollment.error", checkout_id=enrollment.checkout_id)

    async def _await_answer(self, enrollment: _Enrollment) -> tuple[str, str, MemberRecord | None]:
        loop = asyncio.get_running_loop()
        interval = enrollment.interval
        next_poll = loop.time() + interval
        released = False
        while True:
            now = self.ctx.clock()
            if not released and now >= enrollment.release_at:
                await self._release(enrollment)
                released = True
            if now >= enrollment.expires_at + timedelta(seconds=2 * interval):
                # Vipps has not said "expired" although the login's time is over.
                return ENROLLMENT_EXPIRED, "the customer did not answer in time", None
            wake = next_poll - loop.time()
            if not released:
                wake = min(wake, (enrollment.release_at - now).total_seconds())
            if wake > 0:
                await asyncio.sleep(wake)
                if loop.time() < next_poll:
                    continue  # woke for the release, not for a poll
            next_poll = loop.time() + interval
            try:
                answer = await self.ctx.vipps.ciba_poll_token(
                    enrollment.msn, enrollment.auth_req_id
                )
            except (VippsUnavailable, VippsOutcomeUnknown) as exc:
                log.warning(
                    "club.enrollment.poll_failed",
                    checkout_id=enrollment.checkout_id,
                    error=type(exc).__name__,
                )
                continue
            except VippsError as exc:
                return ENROLLMENT_FAILED, f"enrollment login failed ({_vipps_reason(exc)})", None
            match answer:
                case CibaPending(slow_down=slow_down):
                    if slow_down:
                        interval += _SLOW_DOWN_STEP
                        next_poll = loop.time() + interval
                case CibaEnded(reason="access_denied"):
                    return ENROLLMENT_REFUSED, "the customer declined to join", None
                case CibaEnded():
                    return ENROLLMENT_EXPIRED, "the customer did not answer in time", None
                case CibaTokens():
                    return await self._enroll(enrollment, answer)
                case _:
                    assert_never(answer)

    async def _enroll(
        self, enrollment: _Enrollment, tokens: CibaTokens
    ) -> tuple[str, str, MemberRecord | None]:
        try:
            profile = await self.ctx.vipps.userinfo(tokens.access_token)
        except VippsError as exc:
            return ENROLLMENT_FAILED, f"profile could not be read ({_vipps_reason(exc)})", None
        try:
            member = await self.directory.enroll(
                NewMember(
                    # The number the customer was asked on, not a claim from the profile.
                    msisdn=enrollment.msisdn,
                    vipps_sub=profile.sub,
                    name=profile.name,
                    email=profile.email,
                    store_id=enrollment.store_id,
                )
            )
        except MemberDirectoryUnavailable as exc:
            return ENROLLMENT_FAILED, f"member could not be stored ({exc})", None
        return ENROLLED, "joined the club", member

    async def _release(self, enrollment: _Enrollment) -> None:
        """The customer has not answered in time: request the payment without membership."""

        def note(checkout: CheckoutRecord) -> None:
            checkout.club_note = "no answer to the enrollment yet; payment sent without membership"

        await self.checkouts.change(
            enrollment.checkout_id,
            Event(EventKind.IDENTIFY_TIMED_OUT, reason="enrollment still open"),
            actor="club",
            edit=note,
            missing_ok=True,
        )
        log.info("club.enrollment.released_sale", checkout_id=enrollment.checkout_id)

    # ---- recording ----------------------------------------------------------------------------

    async def _finish(
        self,
        checkout_id: str,
        outcome: str | None,
        note: str,
        *,
        member_id: str | None = None,
        after_payment_note: bool = False,
    ) -> None:
        """Record the step's outcome and end it (``IDENTIFY_FINISHED``) in one save.

        When the sale has already moved on (released, cancelled) the event is ignored by the
        state machine and only the outcome is recorded — on the checkout, visible to the till.
        """

        def record(checkout: CheckoutRecord) -> None:
            moved_on = checkout.state is not CheckoutState.IDENTIFYING
            text = note
            if after_payment_note and moved_on and outcome == ENROLLED:
                text = "joined the club after the payment was requested"
            checkout.club_outcome = outcome
            checkout.club_note = text[:500]
            if member_id is not None:
                checkout.member_id = member_id

        await self.checkouts.change(
            checkout_id,
            Event(EventKind.IDENTIFY_FINISHED, reason=note),
            actor="club",
            edit=record,
            missing_ok=True,
        )
        log.info("club.identified", checkout_id=checkout_id, outcome=outcome)

    # ---- member price (POS) -------------------------------------------------------------------

    async def update_member_price(
        self,
        scope: str | None,
        checkout_id: str,
        amount: int,
        receipt: dict[str, Any] | None,
        *,
        idempotency_key: str | None,
        actor: str,
    ) -> CheckoutRecord:
        """Change amount and receipt once, while the checkout waits for it
        (``AWAITING_POS_UPDATE``); the payment request then goes out with the new values.

        Validated like a new checkout (errors name the field). Without a receipt the checkout's
        receipt is kept, so it must still add up to the new amount. Replaying the same
        ``Idempotency-Key`` and body answers with the checkout as it is now.
        """
        key_scope = f"checkout:{checkout_id}:member-price"
        request = None
        if idempotency_key:
            digest = request_hash({"amount": amount, "receipt": receipt})
            request = SeenRequest(key_scope, idempotency_key, digest)

        def member_price(checkout: CheckoutRecord) -> None:
            if checkout.state is not CheckoutState.AWAITING_POS_UPDATE:
                # The state machine refuses and says why (update_not_expected,
                # update_window_closed, checkout_final); nothing is saved.
                return
            new_receipt = receipt if receipt is not None else (checkout.receipt or None)
            check = check_checkout(
                amount, checkout.currency, new_receipt, description=checkout.description
            )
            if not check.ok:
                raise InvalidCheckout(list(check.errors))
            # Set before deciding: the create-payment body is frozen from these then.
            checkout.amount_value = amount
            checkout.receipt = (
                normalize_receipt(new_receipt, currency=checkout.currency, pos_id=checkout.till_id)
                if new_receipt
                else {}
            )
            checkout.warnings = [w.__dict__ for w in check.warnings]

        applied = await self.checkouts.change(
            checkout_id,
            Event(EventKind.POS_UPDATED, amount=amount, reason="member price"),
            actor=actor,
            edit=member_price,
            scope=scope,
            request=request,
        )
        assert applied is not None
        log.info("club.member_price", checkout_id=checkout_id, amount=amount)
        return applied.checkout

    # ---- operators ----------------------------------------------------------------------------

    def _own_directory(self) -> DatabaseMemberDirectory:
        if not isinstance(self.directory, DatabaseMemberDirectory):
            raise MembersManagedElsewhere()
        return self.directory

    async def add_member(
        self, msisdn: str, *, name: str | None, store_id: str | None
    ) -> tuple[MemberRecord, bool]:
        return await self._own_directory().add(msisdn, name=name, store_id=store_id)

    async def get_member(self, member_id: str) -> MemberView:
        row = await self._own_directory().get(member_id)
        if row is None:
            raise MemberNotFound(member_id)
        return MemberView(
            id=row.id,
            name=row.name,
            masked_phone=mask_phone(self.ctx.secrets.decrypt(row.phone_enc)),
            vipps_sub=row.vipps_sub,
            store_id=row.store_id,
            enrolled_at=row.enrolled_at,
        )

    async def remove_member(self, member_id: str) -> None:
        if not await self._own_directory().remove(member_id):
            raise MemberNotFound(member_id)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop following open logins (shutdown); their sales are released by the reconciler."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.directory.aclose()


@dataclass(frozen=True)
class MemberView:
    id: str
    name: str | None
    masked_phone: str
    vipps_sub: str | None
    store_id: str | None
    enrolled_at: datetime


def _policy(store: Store | None) -> ClubPolicy:
    return ClubPolicy(store.club_policy) if store is not None else ClubPolicy.OFF


def _member_note(member: MemberRecord) -> str:
    return f"member {member.name}" if member.name else f"member {member.id}"
