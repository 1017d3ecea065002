"""Building the services outside the web app: what the operator CLI runs on.

The app's lifespan (:mod:`app.main`) builds the same pieces plus the workers and the cross-replica
listener. The CLI needs neither: it does one operator action against the database and Vipps and
exits; work it queues (outbox rows) is picked up by the running service's workers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from app.crypto import SecretBox
from app.db import create_engine, create_session_factory
from app.notifications import ChangeHub
from app.observability.metrics import Metrics
from app.persistence import open_store
from app.service import Services
from app.service.context import ServiceContext
from app.service.keys import VippsKeys
from app.settings import Settings
from app.vipps.client import RetryPolicy, SystemInfo, VippsClient
from app.vipps.credentials import CredentialsProvider
from app.vipps.tokens import AccessTokenProvider
from app.vipps.transport import AiohttpTransport


def vipps_clients(
    settings: Settings, http: httpx.AsyncClient, metrics: Metrics, keys: CredentialsProvider
) -> tuple[VippsClient, VippsClient]:
    """(client for requests and reads, client without retries for the outbox).

    Both take each sales unit's keys from ``keys`` and share one token cache (one token per key
    set). The outbox owns its retry schedule so that every attempt of a money-moving call is
    recorded and counted against Vipps's 5-per-minute limit of its operation.
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
        "credentials": keys,
        "system": system,
        "on_call": on_call,
        "tokens": tokens,
    }
    interactive = VippsClient(http, retry=RetryPolicy(max_retries=vipps.max_retries), **common)
    outbox = VippsClient(http, retry=RetryPolicy(max_retries=0), **common)
    return interactive, outbox


def vipps_http_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The one shared HTTP client to Vipps, with the configured timeouts; never follows
    redirects (a redirected Vipps call is a misconfiguration, not something to chase)."""
    timeout = httpx.Timeout(
        connect=settings.vipps.connect_timeout_seconds,
        read=settings.vipps.read_timeout_seconds,
        write=settings.vipps.read_timeout_seconds,
        pool=settings.vipps.connect_timeout_seconds,
    )
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    return httpx.AsyncClient(
        timeout=timeout,
        # httpx's API over aiohttp's connection pool: a third of the CPU per call (see
        # app.vipps.transport). Tests hand in their own (the simulator in-process).
        transport=transport or AiohttpTransport(limits),
        follow_redirects=False,
    )


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    vipps_transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[Services]:
    """Services on their own engine and Vipps client, closed on exit. No workers run here."""
    engine = create_engine(settings.database)
    metrics = Metrics()
    http = vipps_http_client(settings, vipps_transport)
    hub = ChangeHub()
    store = await open_store(settings.database, engine, origin=hub.origin)
    try:
        sessions = create_session_factory(engine)
        secrets = SecretBox(settings.security.encryption_key)
        keys = VippsKeys(settings, sessions, secrets)
        vipps, _ = vipps_clients(settings, http, metrics, keys)
        ctx = ServiceContext(
            settings=settings,
            sessions=sessions,
            store=store,
            vipps=vipps,
            secrets=secrets,
            hub=hub,
            metrics=metrics,
        )
        yield Services.build(ctx, keys)
    finally:
        await store.close()
        await http.aclose()
        await engine.dispose()
