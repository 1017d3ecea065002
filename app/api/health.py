"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep
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


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request, services: ServicesDep) -> Response:
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
