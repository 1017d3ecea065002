"""The operator API: tills and their QR codes, stores, webhook registrations, what is stuck."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response

from app.api.deps import ListDep, OperatorDep, ServicesDep, TillQr, TillRead
from app.api.schemas import (
    CheckoutOut,
    EnsureOut,
    InboxEventOut,
    NewTillOut,
    RegisterTillRequest,
    StoreOut,
    StoreRequest,
    TillOut,
    UpdateTillRequest,
    WebhookRegistrationOut,
)
from app.domain.state_machine import CheckoutState
from app.errors import PROBLEM_JSON

InboxStatus = Literal["PENDING", "PROCESSED", "UNMATCHED", "FAILED"]  # models.InboxEvent.status
router = APIRouter(prefix="/api/v1", tags=["operators"])
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"content": {PROBLEM_JSON: {}}, "description": "Missing, unknown or revoked credential."},
    403: {
        "content": {PROBLEM_JSON: {}},
        "description": "An admin key with the right role is required (`forbidden`).",
    },
    429: {"content": {PROBLEM_JSON: {}}, "description": "Too many requests (`rate_limited`)."},
    404: {"content": {PROBLEM_JSON: {}}, "description": "Not found."},
    409: {"content": {PROBLEM_JSON: {}}, "description": "Conflict (e.g. `till_exists`)."},
}


@router.post(
    "/tills",
    status_code=201,
    response_model=NewTillOut,
    responses=_PROBLEMS,
    summary="Register a till: creates its merchant callback QR at Vipps; returns its API key once",
)
async def register_till(
    body: RegisterTillRequest, services: ServicesDep, admin: OperatorDep
) -> NewTillOut:
    new = await services.tills.register(
        body.till_id,
        store_id=body.store_id,
        location_description=body.location_description,
        msn=body.msn,
        actor=admin.actor,
    )
    return NewTillOut(**TillOut.of(new.till).model_dump(), api_key=new.api_key)


@router.get("/tills", response_model=list[TillOut], responses=_PROBLEMS, summary="List tills")
async def list_tills(
    services: ServicesDep,
    _: OperatorDep,
    store_id: Annotated[str | None, Query(alias="storeId")] = None,
    status: Literal["ACTIVE", "INACTIVE"] | None = None,
) -> list[TillOut]:
    return [TillOut.of(t) for t in await services.tills.list(store_id=store_id, status=status)]


@router.get("/tills/{till_id}", response_model=TillOut, responses=_PROBLEMS, summary="One till")
async def get_till(till_id: TillRead, services: ServicesDep) -> TillOut:
    return TillOut.of(await services.tills.get(till_id))


@router.patch(
    "/tills/{till_id}", response_model=TillOut, responses=_PROBLEMS, summary="Update a till"
)
async def update_till(
    till_id: str, body: UpdateTillRequest, services: ServicesDep, admin: OperatorDep
) -> TillOut:
    till = await services.tills.update(
        till_id, location_description=body.location_description, actor=admin.actor
    )
    return TillOut.of(till)


@router.post(
    "/tills/{till_id}/deactivate",
    response_model=TillOut,
    responses=_PROBLEMS,
    summary="Deactivate a till and delete its QR at Vipps",
)
async def deactivate_till(till_id: str, services: ServicesDep, admin: OperatorDep) -> TillOut:
    return TillOut.of(await services.tills.deactivate(till_id, actor=admin.actor))


@router.post(
    "/tills/{till_id}/api-key",
    response_model=NewTillOut,
    responses=_PROBLEMS,
    summary="Issue a new API key for the till; the old one stops working at once",
)
async def rotate_till_key(till_id: str, services: ServicesDep, admin: OperatorDep) -> NewTillOut:
    new = await services.tills.rotate_api_key(till_id, actor=admin.actor)
    return NewTillOut(**TillOut.of(new.till).model_dump(), api_key=new.api_key)


@router.get(
    "/tills/{till_id}/qr",
    responses={
        200: {"content": {"image/svg+xml": {}, "image/png": {}}, "description": "The QR"},
        **_PROBLEMS,
    },
    summary="The till's QR image, ready to print or show (SVG or PNG)",
)
async def till_qr(
    till_id: TillQr,
    services: ServicesDep,
    format: Literal["svg", "png"] = "svg",
    scale: Annotated[int, Query(ge=1, le=40)] = 10,
) -> Response:
    image = await services.tills.qr_image(till_id, format, scale=scale)
    media = "image/svg+xml" if format == "svg" else "image/png"
    # Private: the image is behind a key, so shared caches must not keep it.
    return Response(image, media_type=media, headers={"Cache-Control": "private, max-age=300"})


@router.put(
    "/stores/{store_id}",
    response_model=StoreOut,
    responses=_PROBLEMS,
    summary="Create or update a store and its customer-club policy",
)
async def put_store(
    store_id: str, body: StoreRequest, services: ServicesDep, admin: OperatorDep
) -> StoreOut:
    store = await services.tills.upsert_store(
        store_id,
        name=body.name,
        club_policy=body.club_policy,
        member_price_hold=body.member_price_hold,
        member_price_hold_seconds=body.member_price_hold_seconds,
        actor=admin.actor,
    )
    return StoreOut.of(store)


@router.get("/stores/{store_id}", response_model=StoreOut, responses=_PROBLEMS)
async def get_store(store_id: str, services: ServicesDep, _: OperatorDep) -> StoreOut:
    return StoreOut.of(await services.tills.get_store(store_id))


@router.post(
    "/webhooks/{msn}/ensure",
    response_model=EnsureOut,
    responses=_PROBLEMS,
    summary="Make sure the MSN has exactly one registration with every event we use",
)
async def ensure_webhook(
    msn: Annotated[str, Path(pattern=r"^[0-9]{4,6}$")], services: ServicesDep, admin: OperatorDep
) -> EnsureOut:
    report = await services.webhooks.ensure(msn, actor=admin.actor)
    return EnsureOut(
        msn=report.msn,
        registration_id=report.registration_id,
        created=report.created,
        removed=list(report.removed),
        foreign=list(report.foreign),
    )


@router.get(
    "/webhooks",
    response_model=list[WebhookRegistrationOut],
    responses=_PROBLEMS,
    summary="Our webhook registrations (secrets are never shown)",
)
async def list_webhooks(services: ServicesDep, _: OperatorDep) -> list[WebhookRegistrationOut]:
    return [WebhookRegistrationOut.of(r) for r in await services.webhooks.list()]


@router.get(
    "/checkouts",
    response_model=list[CheckoutOut],
    responses=_PROBLEMS,
    summary="List checkouts — e.g. what is stuck: ?state=PAYMENT_REQUESTED&olderThanSeconds=60",
)
async def list_checkouts(
    services: ServicesDep,
    _: ListDep,
    till_id: Annotated[str | None, Query(alias="tillId")] = None,
    # Only known states: a free string reached Postgres, and one with a NUL byte was a 500
    # (found by schemathesis).
    state: Annotated[list[CheckoutState] | None, Query()] = None,
    # Bounded: a larger value overflowed the date arithmetic into a 500 (found by schemathesis).
    older_than_seconds: Annotated[
        int | None, Query(alias="olderThanSeconds", ge=0, le=10 * 366 * 24 * 3600)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CheckoutOut]:
    older = timedelta(seconds=older_than_seconds) if older_than_seconds is not None else None
    rows = await services.checkouts.list(
        till_id=till_id,
        states=None if state is None else [s.value for s in state],
        older_than=older,
        limit=limit,
    )
    return [CheckoutOut.of(r) for r in rows]


@router.post(
    "/checkouts/{checkout_id}/resync",
    response_model=CheckoutOut,
    responses=_PROBLEMS,
    summary="Ask Vipps now and repair the checkout's state",
)
async def resync_checkout(checkout_id: str, services: ServicesDep, _: OperatorDep) -> CheckoutOut:
    return CheckoutOut.of(await services.checkouts.resync(checkout_id))


@router.get(
    "/inbox",
    response_model=list[InboxEventOut],
    responses=_PROBLEMS,
    summary="Received webhooks — e.g. ?status=UNMATCHED or FAILED (bodies are not shown)",
)
async def list_inbox(
    services: ServicesDep,
    _: OperatorDep,
    # Only known statuses: a free string with a NUL byte was a 500 (found by schemathesis).
    status: Annotated[list[InboxStatus] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[InboxEventOut]:
    rows = await services.intake.list(
        statuses=None if status is None else list(status), limit=limit
    )
    return [
        InboxEventOut(
            id=r.id,
            msn=r.msn,
            event_type=r.event_type,
            reference=r.reference,
            status=r.status,
            outcome=r.outcome,
            attempts=r.attempts,
            last_error=r.last_error,
            checkout_id=r.checkout_id,
            received_at=r.received_at,
            processed_at=r.processed_at,
        )
        for r in rows
    ]
