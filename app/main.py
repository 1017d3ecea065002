"""Application factory: ``create_app(settings)`` builds everything in the lifespan.

The lifespan owns the database engine, the one shared ``httpx.AsyncClient`` to Vipps, the token
cache, the change hub and the workers (outbox, inbox, reconciler). Tests build their own app with
their own settings; nothing is global.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog
from fastapi import FastAPI, Request, Response

from app.crypto import SecretBox
from app.db import create_engine, create_session_factory
from app.errors import install_problem_handlers
from app.notifications import ChangeHub
from app.observability.logging import bind_request_id, clear_correlation, configure_logging
from app.observability.metrics import Metrics
from app.service import Services
from app.service.context import ServiceContext
from app.settings import Environment, Settings
from app.vipps.client import RetryPolicy, SystemInfo, VippsClient
from app.vipps.tokens import AccessTokenProvider
from app.workers.inbox import InboxWorker
from app.workers.outbox import OutboxWorker
from app.workers.reconciler import Reconciler

log = structlog.get_logger("app.main")


def _vipps_clients(
    settings: Settings, http: httpx.AsyncClient, metrics: Metrics
) -> tuple[VippsClient, VippsClient]:
    """(client for requests and reads, client without retries for the outbox).

    Both share one token cache. The outbox owns its retry schedule so that every attempt of a
    money-moving call is recorded and counted against Vipps's 5-per-minute limit.
    """
    vipps = settings.vipps
    system = SystemInfo(
        name=vipps.system_name,
        version=vipps.system_version,
        plugin_name=vipps.plugin_name,
        plugin_version=vipps.plugin_version,
    )

    def on_call(operation: str, status: int | None, seconds: float, code: str | None) -> None:
        metrics.observe_vipps_call(
            operation=operation, seconds=seconds, status=status, error_code=code
        )

    tokens = AccessTokenProvider(
        http, vipps.base_url, system_headers=system.headers(), on_call=on_call
    )
    common: dict[str, Any] = {
        "base_url": vipps.base_url,
        "client_id": vipps.client_id,
        "client_secret": vipps.client_secret,
        "subscription_key": vipps.subscription_key,
        "system": system,
        "on_call": on_call,
        "tokens": tokens,
    }
    interactive = VippsClient(http, retry=RetryPolicy(max_retries=vipps.max_retries), **common)
    outbox = VippsClient(http, retry=RetryPolicy(max_retries=0), **common)
    return interactive, outbox


def create_app(
    settings: Settings | None = None,
    *,
    vipps_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    settings = settings or Settings()
    settings.check_startable()
    json_logs = (
        settings.logging.json_logs
        if settings.logging.json_logs is not None
        else settings.environment is Environment.PRODUCTION
    )
    configure_logging(settings.logging.level, json_logs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database)
        metrics = Metrics()
        timeout = httpx.Timeout(
            connect=settings.vipps.connect_timeout_seconds,
            read=settings.vipps.read_timeout_seconds,
            write=settings.vipps.read_timeout_seconds,
            pool=settings.vipps.connect_timeout_seconds,
        )
        http = httpx.AsyncClient(
            timeout=timeout,
            transport=vipps_transport,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False,
        )
        vipps, outbox_vipps = _vipps_clients(settings, http, metrics)
        hub = ChangeHub()
        ctx = ServiceContext(
            settings=settings,
            sessions=create_session_factory(engine),
            vipps=vipps,
            secrets=SecretBox(settings.security.encryption_key),
            hub=hub,
            metrics=metrics,
        )
        services = Services.build(ctx)
        app.state.services = services
        app.state.settings = settings
        app.state.metrics = metrics
        await hub.start_listening(settings.database.url)
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        workers = (
            OutboxWorker(ctx, services.checkouts, outbox_vipps),
            InboxWorker(ctx, services.intake),
            Reconciler(ctx, services.checkouts, vipps),
        )
        app.state.workers = workers
        if settings.workers.enabled:
            tasks = [asyncio.create_task(w.run(stop), name=type(w).__name__) for w in workers]
        if settings.webhooks.ensure_on_startup:
            msns = {settings.vipps.default_msn} | {t.msn for t in await services.tills.list()}
            for msn in sorted(msns):
                try:
                    await services.webhooks.ensure(msn)
                except Exception as exc:  # the service still serves; operators see the log
                    log.error("webhooks.ensure_failed", msn=msn, error=str(exc)[:300])
        log.info("service.started", environment=settings.environment.value)
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await hub.stop()
            await http.aclose()
            await engine.dispose()
            log.info("service.stopped")

    app = FastAPI(
        title="vipps-pos",
        version="1.0.0",
        summary="In-store payments with Vipps MobilePay merchant callback QR.",
        description=(
            "Cash registers drive payments over `/api/v1`; Vipps MobilePay calls "
            "`/webhooks/vipps/{msn}`. Errors are RFC 7807 problem+json with a stable `code`."
        ),
        lifespan=lifespan,
    )
    install_problem_handlers(app)

    @app.middleware("http")
    async def correlation(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request_id = bind_request_id(request.headers.get("x-request-id"))
        started = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            clear_correlation()
        response.headers["x-request-id"] = request_id
        route = request.scope.get("route")
        metrics: Metrics | None = getattr(request.app.state, "metrics", None)
        if metrics is not None and route is not None:
            metrics.observe_http_request(
                method=request.method,
                route=getattr(route, "path", "_unmatched"),
                status=response.status_code,
                seconds=time.perf_counter() - started,
            )
        return response

    from app.api import admin, health, pos, webhooks

    app.include_router(health.router)
    app.include_router(webhooks.router)
    app.include_router(pos.router)
    app.include_router(admin.router)
    return app
