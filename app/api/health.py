"""Liveness, readiness, metrics and (when it is behind a key) the API description."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from app.api.deps import MonitorDep, PrincipalDep, ServicesDep
from app.errors import ApiProblem
from app.observability.metrics import QueueStats
from app.service.health import readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database reachable and migrations at head")
async def readyz(services: ServicesDep) -> JSONResponse:
    report = await readiness(services.ctx)
    return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)


async def _metrics(request: Request, services: ServicesDep) -> Response:
    stats = await services.checkouts.queue_stats()
    services.ctx.metrics.set_queue_stats(
        QueueStats(
            inbox_depth=stats["inbox"][0],
            inbox_oldest_age_seconds=stats["inbox"][1] or None,
            outbox_depth=stats["outbox"][0],
            outbox_oldest_age_seconds=stats["outbox"][1] or None,
        )
    )
    body, content_type = services.ctx.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)


def metrics_router(access: Literal["public", "admin", "off"]) -> APIRouter:
    """``/metrics`` for everyone, behind an admin key with the operator or monitor role
    (Prometheus: ``authorization: {credentials: <key>}``), or not at all."""
    metrics = APIRouter(tags=["health"])
    if access == "off":
        return metrics

    async def protected(request: Request, services: ServicesDep, _: MonitorDep) -> Response:
        return await _metrics(request, services)

    endpoint = _metrics if access == "public" else protected
    metrics.add_api_route(
        "/metrics", endpoint, methods=["GET"], summary="Prometheus metrics", include_in_schema=False
    )
    return metrics


def api_description_router(app: FastAPI) -> APIRouter:
    """``/openapi.json`` behind an admin key (any role), for when it is not public."""
    described = APIRouter(include_in_schema=False)

    @described.get("/openapi.json")
    async def openapi(principal: PrincipalDep) -> JSONResponse:
        if not principal.is_admin:
            raise ApiProblem(403, "forbidden", "an admin key is required")
        return JSONResponse(app.openapi())

    return described
