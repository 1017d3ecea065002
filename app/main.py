"""Application factory: ``create_app(settings)`` builds everything in the lifespan.

The lifespan owns the database engine, the one shared ``httpx.AsyncClient`` to Vipps, the token
cache, the change hub and the workers (outbox, inbox, reconciler). Tests build their own app with
their own settings; nothing is global.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import structlog
from fastapi import FastAPI

from app.api.middleware import CorrelationMiddleware
from app.api.openapi import install_openapi, operation_id, package_version
from app.crypto import SecretBox
from app.db import create_engine, create_session_factory
from app.errors import install_problem_handlers
from app.loyalty.members import build_directory
from app.loyalty.service import ClubService
from app.notifications import ChangeHub
from app.observability.logging import configure_logging
from app.observability.metrics import Metrics
from app.persistence import open_store
from app.service import Services
from app.service.bootstrap import vipps_clients, vipps_http_client
from app.service.context import ServiceContext
from app.service.keys import VippsKeys
from app.settings import Environment, Settings
from app.throttle import Throttle
from app.workers.inbox import InboxWorker
from app.workers.outbox import OutboxWorker
from app.workers.reconciler import Reconciler

log = structlog.get_logger("app.main")


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
        http = vipps_http_client(settings, vipps_transport)
        sessions = create_session_factory(engine)
        secrets = SecretBox(settings.security.encryption_key)
        # Each sales unit's keys (or the partner keys), read by every Vipps call.
        keys = VippsKeys(settings, sessions, secrets)
        vipps, outbox_vipps = vipps_clients(settings, http, metrics, keys)
        hub = ChangeHub()
        store = await open_store(settings.database, engine, origin=hub.origin)
        ctx = ServiceContext(
            settings=settings,
            sessions=sessions,
            store=store,
            vipps=vipps,
            secrets=secrets,
            hub=hub,
            metrics=metrics,
        )
        services = Services.build(ctx, keys)
        club = ClubService(
            ctx,
            services.checkouts,
            build_directory(settings.club, ctx.sessions, ctx.secrets),
        )
        app.state.services = services
        app.state.statements = store.counter
        metrics.watch_database(store.counter)
        app.state.club = club
        app.state.settings = settings
        app.state.metrics = metrics
        throttle = Throttle.from_settings(settings.security)
        app.state.throttle = throttle
        await hub.start_listening(settings.database.url)
        await throttle.start(settings.database.url)
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        outbox = OutboxWorker(ctx, services.checkouts, outbox_vipps, club=club)
        workers = (
            outbox,
            InboxWorker(ctx, services.intake),
            Reconciler(ctx, services.checkouts, vipps),
        )
        app.state.workers = workers
        if settings.workers.enabled:
            # Several outbox loops share one worker (its rate-limit memory); claims are
            # SKIP LOCKED and commands of one checkout still run in order.
            loops: list[OutboxWorker | InboxWorker | Reconciler] = [
                *([outbox] * settings.workers.outbox_concurrency),
                *workers[1:],
            ]
            tasks = [
                asyncio.create_task(w.run(stop), name=f"{type(w).__name__}-{n}")
                for n, w in enumerate(loops)
            ]
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
            # Everything that may still hand commands to the outbox stops first.
            await services.intake.aclose()
            await club.aclose()
            await outbox.aclose()
            await throttle.stop()
            await hub.stop()
            await store.close()
            await http.aclose()
            await engine.dispose()
            log.info("service.stopped")

    public_docs = settings.api_docs == "public"
    app = FastAPI(
        title="vipps-pos",
        version=package_version(),
        summary="In-store payments with Vipps MobilePay merchant callback QR.",
        description=(
            "Cash registers drive payments over `/api/v1`; Vipps MobilePay calls "
            "`/webhooks/vipps/{msn}`. Errors are RFC 7807 problem+json with a stable `code`."
        ),
        lifespan=lifespan,
        # Swagger UI is served by install_openapi from the package's files (no CDN), and only
        # when the docs are public: with "admin", app/api/health.py serves /openapi.json behind
        # an admin key (the browser pages cannot send one).
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if public_docs else None,
        generate_unique_id_function=operation_id,
    )
    install_problem_handlers(app)
    install_openapi(app, serve_docs=public_docs)

    # Request id, audit endpoint name and HTTP metrics (a plain ASGI middleware: see its module).
    app.add_middleware(CorrelationMiddleware)

    from app.api import admin, club, display, health, pos, reports, webhooks

    app.include_router(health.router)
    app.include_router(health.metrics_router(settings.metrics_access))
    if settings.api_docs == "admin":
        app.include_router(health.api_description_router(app))
    app.include_router(display.router)
    app.include_router(webhooks.router)
    app.include_router(pos.router)
    app.include_router(admin.router)
    app.include_router(club.router)
    app.include_router(reports.router)
    return app


def app_from_environment() -> FastAPI:
    """The app of one ``vipps-pos serve --workers N`` process: settings from the environment."""
    return create_app(Settings())
