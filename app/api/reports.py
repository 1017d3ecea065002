"""Operator reports: end-of-day reconciliation, QR drift, audit-trail verification."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Query, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import Field

from app.api.deps import OperatorDep, ServicesDep
from app.api.routing import OPERATOR_PROBLEMS, VIPPS_PROBLEMS, TextCheckedRoute, problems
from app.api.schemas import ApiModel, ApiRequest
from app.service.drift import DriftService
from app.service.reports import DEFAULT_TIMEZONE, EndOfDayReports, verify_audit_trail

router = APIRouter(prefix="/api/v1", tags=["operators"], route_class=TextCheckedRoute)
_OPERATOR = OPERATOR_PROBLEMS
_VIPPS = {**OPERATOR_PROBLEMS, **VIPPS_PROBLEMS}


class DriftRepairRequest(ApiRequest):
    msn: str | None = Field(default=None, pattern=r"^[0-9]{4,6}$")
    include_extra: bool = Field(
        default=False,
        description="Also delete QRs at Vipps that no till of ours has (they may belong to "
        "another system on the same sales unit).",
    )


class AuditBreakOut(ApiModel):
    chain: str
    seq: int
    entry_id: int
    problem: str


class AuditVerifyOut(ApiModel):
    intact: bool
    entries: int
    chains: int
    breaks: list[AuditBreakOut]


@router.get(
    "/reports/end-of-day",
    responses={
        200: {"content": {"application/json": {}, "text/csv": {}}, "description": "The report"},
        **problems(_OPERATOR),
    },
    summary="End-of-day reconciliation per till and store, with flagged mismatches",
)
async def end_of_day(
    services: ServicesDep,
    _: OperatorDep,
    # Bounded: 0001-01-01 in a zone east of UTC overflowed into a 500 (found by schemathesis).
    day: Annotated[
        date,
        Query(
            alias="date",
            description="Calendar day, YYYY-MM-DD",
            ge=date(1970, 1, 1),
            le=date(9999, 12, 30),
        ),
    ],
    store_id: Annotated[str | None, Query(alias="storeId")] = None,
    format: Literal["json", "csv"] = "json",
    tz: Annotated[str, Query(description="IANA time zone of the day")] = DEFAULT_TIMEZONE,
) -> Response:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # found by schemathesis: was a 500
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "tz"),
                    "msg": "not an IANA time zone, e.g. Europe/Oslo",
                    "input": tz,
                }
            ]
        ) from exc
    report = await EndOfDayReports(services.ctx).end_of_day(day, store_id=store_id, timezone=tz)
    if format == "csv":
        name = f"end-of-day-{day.isoformat()}{'-' + store_id if store_id else ''}.csv"
        return Response(
            report.as_csv(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return JSONResponse(report.as_json())


@router.get(
    "/drift",
    responses=problems(_VIPPS),
    summary="Differences between our tills and Vipps's merchant callback QRs",
)
async def drift(
    services: ServicesDep,
    _: OperatorDep,
    msn: Annotated[str | None, Query(pattern=r"^[0-9]{4,6}$")] = None,
) -> dict[str, Any]:
    report = await DriftService(services.ctx, services.tills).check(msn)
    return report.as_json()


@router.post(
    "/drift/repair",
    responses=problems(_VIPPS),
    summary="Repair drift: create missing QRs, fix descriptions, delete inactive tills' QRs",
)
async def repair_drift(
    services: ServicesDep, _: OperatorDep, body: DriftRepairRequest | None = None
) -> dict[str, Any]:
    request = body or DriftRepairRequest()
    report = await DriftService(services.ctx, services.tills).check(
        request.msn, repair=True, include_extra=request.include_extra
    )
    return report.as_json()


@router.get(
    "/audit/verify",
    response_model=AuditVerifyOut,
    responses=problems(_OPERATOR),
    summary="Verify every hash chain of the audit trail; lists each break",
)
async def verify_audit(services: ServicesDep, _: OperatorDep) -> AuditVerifyOut:
    result = await verify_audit_trail(services.ctx)
    return AuditVerifyOut(
        intact=result.intact,
        entries=result.entries,
        chains=result.chains,
        breaks=[
            AuditBreakOut(chain=b.chain, seq=b.seq, entry_id=b.entry_id, problem=b.problem)
            for b in result.breaks
        ],
    )
