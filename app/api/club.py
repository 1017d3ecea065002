"""Customer club endpoints: the till's member-price update, and members for operators.

The till learns that its customer was identified from the checkout itself (long-poll
``GET /api/v1/checkouts/{id}?wait=N`` or the till's SSE feed): state ``AWAITING_POS_UPDATE`` with
``member.outcome == "member"`` (or ``"enrolled"``) means "apply member prices now, once, before
``member.priceHoldUntil``".
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import Field

from app.api.deps import OperatorDep, SellDep, own_till
from app.api.routing import TextCheckedRoute, problems
from app.api.schemas import Amount, ApiModel, ApiRequest, CheckoutOut, ReceiptIn
from app.loyalty.service import ClubService, MemberView

router = APIRouter(prefix="/api/v1", tags=["customer club"], route_class=TextCheckedRoute)

_AUTH = {
    401: "Missing, unknown or revoked credential (`unauthorized`).",
    403: "The key belongs to another till, or an operator credential is required (`forbidden`).",
    422: "Invalid amount or receipt; `errors` names each field (`validation_error`).",
}
_MEMBER = {**_AUTH, 404: "No such member (`member_not_found`)."}


def get_club(request: Request) -> ClubService:
    club: ClubService = request.app.state.club
    return club


ClubDep = Annotated[ClubService, Depends(get_club)]


class MemberPriceRequest(ApiRequest):
    amount: Amount = Field(description="New total in minor units (the member price).")
    receipt: ReceiptIn = Field(
        default=None,
        description="The receipt with member prices. Omitted: the checkout's receipt is kept "
        "and must still add up to the new amount.",
    )


class NewMemberRequest(ApiRequest):
    phone_number: str = Field(
        pattern=r"^[0-9]{10,15}$",
        description="MSISDN: country code and number, digits only.",
        examples=["4712345678"],
    )
    name: str | None = Field(default=None, max_length=200)
    store_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")


class MemberOut(ApiModel):
    id: str
    name: str | None
    phone_number: str = Field(description="Masked: only the last two digits are shown.")
    vipps_sub: str | None
    store_id: str | None
    enrolled_at: datetime

    @classmethod
    def of(cls, member: MemberView) -> MemberOut:
        return cls(
            id=member.id,
            name=member.name,
            phone_number=member.masked_phone,
            vipps_sub=member.vipps_sub,
            store_id=member.store_id,
            enrolled_at=member.enrolled_at,
        )


@router.post(
    "/checkouts/{checkout_id}/member-price",
    response_model=CheckoutOut,
    responses=problems(
        {
            **_AUTH,
            404: "No such checkout (`checkout_not_found`).",
            409: "`update_not_expected` (not identified yet), `update_window_closed` (the payment "
            "request was sent: one update only, before the deadline), `checkout_final`, "
            "`idempotency_key_reused`.",
            429: "Too many requests from this till (`rate_limited`).",
        }
    ),
    summary="Apply member prices once, before the payment request goes out",
)
async def update_member_price(
    checkout_id: str,
    body: MemberPriceRequest,
    principal: SellDep,
    club: ClubDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> CheckoutOut:
    checkout = await club.update_member_price(
        own_till(principal),
        checkout_id,
        body.amount,
        body.receipt,
        idempotency_key=idempotency_key,
        actor=principal.actor,
    )
    return CheckoutOut.of(checkout)


@router.post(
    "/members",
    status_code=201,
    response_model=MemberOut,
    responses=problems(
        {**_AUTH, 409: "Members live in the chain's loyalty system (`members_managed_elsewhere`)."}
    ),
    summary="Register a member by phone number (members kept by this service only)",
)
async def add_member(
    body: NewMemberRequest, club: ClubDep, _: OperatorDep, response: Response
) -> MemberOut:
    record, created = await club.add_member(
        body.phone_number, name=body.name, store_id=body.store_id
    )
    if not created:
        response.status_code = 200  # already a member: nothing new was stored
    return MemberOut.of(await club.get_member(record.id))


@router.get("/members/{member_id}", response_model=MemberOut, responses=problems(_MEMBER))
async def get_member(member_id: str, club: ClubDep, _: OperatorDep) -> MemberOut:
    return MemberOut.of(await club.get_member(member_id))


@router.delete(
    "/members/{member_id}",
    status_code=204,
    responses=problems(
        {
            **_MEMBER,
            409: "Members live in the chain's loyalty system (`members_managed_elsewhere`).",
        }
    ),
    summary="Remove a member (the customer left the club)",
)
async def remove_member(member_id: str, club: ClubDep, _: OperatorDep) -> Response:
    await club.remove_member(member_id)
    return Response(status_code=204)
