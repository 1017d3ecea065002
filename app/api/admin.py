"""The operator API: tills and their QR codes, stores, webhook registrations, what is stuck."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response

from app.api.deps import ListDep, OperatorDep, ServicesDep, TillQr, TillRead
from app.api.routing import OPERATOR_PROBLEMS, VIPPS_PROBLEMS, TextCheckedRoute, problems
from app.api.schemas import (
    CheckoutOut,
    EnsureOut,
    InboxEventOut,
    NewTillOut,
    RegisterTillRequest,
    SavedVippsKeysOut,
    StoreOut,
    StoreRequest,
    TillOut,
    UpdateTillRequest,
    VippsKeySetOut,
    VippsKeysRequest,
    WebhookRegistrationOut,
)
from app.domain.state_machine import CheckoutState
from app.domain.statuses import InboxStatus
from app.errors import ApiProblem
from app.service.qr_sheet import render_pdf, render_svg, store_labels

router = APIRouter(prefix="/api/v1", tags=["operators"], route_class=TextCheckedRoute)
_OPERATOR = {
    **OPERATOR_PROBLEMS,
    403: "An admin key with the right role is required (`forbidden`).",
    429: "Too many requests with this key, or failed attempts from this address "
    "(`rate_limited`); wait `Retry-After` seconds.",
}
_TILL = {**_OPERATOR, 404: "No such till (`till_not_found`)."}
_VIPPS = {**_OPERATOR, **VIPPS_PROBLEMS}


@router.post(
    "/tills",
    status_code=201,
    response_model=NewTillOut,
    responses=problems({**_OPERATOR, 409: "A till with this id exists (`till_exists`)."}),
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


@router.get(
    "/tills", response_model=list[TillOut], responses=problems(_OPERATOR), summary="List tills"
)
async def list_tills(
    services: ServicesDep,
    _: OperatorDep,
    store_id: Annotated[str | None, Query(alias="storeId")] = None,
    status: Literal["ACTIVE", "INACTIVE"] | None = None,
) -> list[TillOut]:
    return [TillOut.of(t) for t in await services.tills.list(store_id=store_id, status=status)]


@router.get(
    "/tills/{till_id}",
    response_model=TillOut,
    responses=problems(
        {**_TILL, 403: "The key belongs to another till, or is no operator key (`forbidden`)."}
    ),
    summary="One till",
)
async def get_till(till_id: TillRead, services: ServicesDep) -> TillOut:
    return TillOut.of(await services.tills.get(till_id))


@router.patch(
    "/tills/{till_id}", response_model=TillOut, responses=problems(_TILL), summary="Update a till"
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
    responses=problems(_TILL),
    summary="Deactivate a till and delete its QR at Vipps",
)
async def deactivate_till(till_id: str, services: ServicesDep, admin: OperatorDep) -> TillOut:
    return TillOut.of(await services.tills.deactivate(till_id, actor=admin.actor))


@router.post(
    "/tills/{till_id}/api-key",
    response_model=NewTillOut,
    responses=problems(_TILL),
    summary="Issue a new API key for the till; the old one stops working at once",
)
async def rotate_till_key(till_id: str, services: ServicesDep, admin: OperatorDep) -> NewTillOut:
    new = await services.tills.rotate_api_key(till_id, actor=admin.actor)
    return NewTillOut(**TillOut.of(new.till).model_dump(), api_key=new.api_key)


@router.get(
    "/tills/{till_id}/qr",
    responses={
        200: {"content": {"image/svg+xml": {}, "image/png": {}}, "description": "The QR"},
        **problems(
            {
                **_TILL,
                403: "The key belongs to another till (`forbidden`).",
                **_VIPPS,
                422: "Invalid request (`validation_error`); our Vipps credentials do not "
                "cover the till's MSN (`msn_not_accessible`, `msn_not_covered`), or Vipps "
                "refused our API keys (`vipps_keys_refused`).",
            }
        ),
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


@router.get(
    "/stores/{store_id}/qr-sheet",
    responses={
        200: {
            "content": {"application/pdf": {}, "image/svg+xml": {}},
            "description": "A4 sheet(s) of the store's active tills' QR codes with cut marks. "
            "`X-Missing-Tills` lists tills whose QR Vipps could not give now (comma-separated).",
        },
        **problems(
            {
                **_OPERATOR,
                404: "The store has no active till (`not_found`).",
                503: "Vipps gave no QR of the store's tills (`vipps_unavailable`).",
            }
        ),
    },
    summary="Print-ready QR sheet of a store (the CLI's `qr sheet`)",
)
async def store_qr_sheet(
    store_id: str,
    services: ServicesDep,
    _: OperatorDep,
    format: Literal["pdf", "svg"] = "pdf",
) -> Response:
    sheet = await store_labels(services.tills, store_id)
    if not sheet.labels and not sheet.failures:
        raise ApiProblem(404, "not_found", f"store {store_id} has no active tills")
    if not sheet.labels:
        raise ApiProblem(
            503,
            "vipps_unavailable",
            "Vipps gave no QR of this store's tills: "
            + "; ".join(f"{till}: {reason}" for till, reason in sheet.failures),
        )
    render = render_pdf if format == "pdf" else render_svg
    headers = {
        "Content-Disposition": f'attachment; filename="{store_id}-qr.{format}"',
        "Cache-Control": "no-store",
    }
    if sheet.failures:
        headers["X-Missing-Tills"] = ",".join(till for till, _ in sheet.failures)
    return Response(
        render(sheet.labels, heading=sheet.store_name),
        media_type="application/pdf" if format == "pdf" else "image/svg+xml",
        headers=headers,
    )


@router.put(
    "/stores/{store_id}",
    response_model=StoreOut,
    responses=problems(_OPERATOR),
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
        display_language=body.display_language,
        actor=admin.actor,
    )
    return StoreOut.of(store)


@router.get(
    "/stores/{store_id}",
    response_model=StoreOut,
    responses=problems({**_OPERATOR, 404: "No such store (`store_not_found`)."}),
)
async def get_store(store_id: str, services: ServicesDep, _: OperatorDep) -> StoreOut:
    return StoreOut.of(await services.tills.get_store(store_id))


@router.post(
    "/webhooks/{msn}/ensure",
    response_model=EnsureOut,
    responses=problems(
        {
            **_OPERATOR,
            **_VIPPS,
            409: "Another registration at Vipps holds check-ins for this MSN "
            "(`checkin_webhook_taken`).",
        }
    ),
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
    responses=problems(_OPERATOR),
    summary="Our webhook registrations (secrets are never shown)",
)
async def list_webhooks(services: ServicesDep, _: OperatorDep) -> list[WebhookRegistrationOut]:
    return [WebhookRegistrationOut.of(r) for r in await services.webhooks.list()]


@router.get(
    "/vipps-keys",
    response_model=list[VippsKeySetOut],
    responses=problems(_OPERATOR),
    summary="The Vipps API keys we hold: configured or partner keys, and each sales unit's own",
)
async def list_vipps_keys(services: ServicesDep, _: OperatorDep) -> list[VippsKeySetOut]:
    return [VippsKeySetOut(**vars(info)) for info in await services.keys.list()]


@router.put(
    "/vipps-keys/{msn}",
    response_model=SavedVippsKeysOut,
    responses=problems(
        {
            **_OPERATOR,
            409: "The sales unit has keys already (`vipps_keys_exist`).",
            422: "Invalid request (`validation_error`), or Vipps refused the keys for this MSN "
            "(`vipps_keys_rejected`).",
            503: "Vipps could not be reached to try the keys (`vipps_unavailable`).",
        }
    ),
    summary="Add or rotate a sales unit's own API keys (stored encrypted; tried at Vipps first)",
)
async def put_vipps_keys(
    msn: Annotated[str, Path(pattern=r"^[0-9]{4,6}$")],
    body: VippsKeysRequest,
    services: ServicesDep,
    admin: OperatorDep,
) -> SavedVippsKeysOut:
    saved = await services.keys.save(
        msn,
        client_id=body.client_id,
        client_secret=body.client_secret,
        subscription_key=body.subscription_key,
        mode="put",
        verify=body.verify,
        actor=admin.actor,
    )
    return SavedVippsKeysOut(**vars(saved.info), created=saved.created, verified=saved.verified)


@router.delete(
    "/vipps-keys/{msn}",
    status_code=204,
    responses=problems(
        {
            **_OPERATOR,
            404: "No stored keys for this sales unit (`vipps_keys_not_found`).",
            409: "Active tills depend on these keys (`vipps_keys_in_use`).",
        }
    ),
    summary="Forget a sales unit's own keys (refused while active tills depend on them)",
)
async def delete_vipps_keys(
    msn: Annotated[str, Path(pattern=r"^[0-9]{4,6}$")], services: ServicesDep, admin: OperatorDep
) -> Response:
    await services.keys.remove(msn, actor=admin.actor)
    return Response(status_code=204)


@router.get(
    "/checkouts",
    response_model=list[CheckoutOut],
    responses=problems(_OPERATOR),
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
    responses=problems({**_OPERATOR, **_VIPPS, 404: "No such checkout (`checkout_not_found`)."}),
    summary="Ask Vipps now and repair the checkout's state",
)
async def resync_checkout(checkout_id: str, services: ServicesDep, _: OperatorDep) -> CheckoutOut:
    return CheckoutOut.of(await services.checkouts.resync(checkout_id))


@router.get(
    "/inbox",
    response_model=list[InboxEventOut],
    responses=problems(_OPERATOR),
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
