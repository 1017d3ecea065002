"""/healthz answers while the process lives; /readyz needs the database at the migrations' head."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.main import create_app
from tests.support.stack import service_settings


async def _get(database_url: str, path: str) -> httpx.Response:
    app = create_app(service_settings(database_url, workers={"enabled": False}))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        return await client.get(path)


async def test_ready_when_migrated(database_url: str) -> None:
    response = await _get(database_url, "/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert (await _get(database_url, "/healthz")).json() == {"status": "ok"}


async def test_not_ready_without_migrations(tmp_path: Path) -> None:
    response = await _get(f"sqlite+aiosqlite:///{tmp_path}/empty.db", "/readyz")
    assert response.status_code == 503
    assert response.json()["status"] in {"unavailable", "migrations_pending"}
