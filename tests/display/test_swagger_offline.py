"""Swagger UI at /docs works on a till network without internet: every file it needs comes from
the service itself, and "Authorize" (the bearer scheme) is there for "Try it out"."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
from playwright.async_api import Browser, Route

from app.devstack import BackgroundServer
from app.main import create_app
from app.simulator import SimulatorConfig, create_simulator_app
from tests.support.stack import service_settings


async def test_swagger_ui_renders_from_the_service_alone(sqlite_url: str, browser: Browser) -> None:
    sim = create_simulator_app(SimulatorConfig(strict=True))
    app = create_app(service_settings(sqlite_url), vipps_transport=httpx.ASGITransport(app=sim))
    server = BackgroundServer(app).start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            page_html = (await client.get("/docs")).text
            assets = re.findall(r'(?:src|href)="([^"]+)"', page_html)
            assert assets, page_html
            for asset in assets:
                assert asset.startswith("/docs/static/"), asset  # nothing from elsewhere
                assert (await client.get(asset)).status_code == 200, asset
            document = (await client.get("/openapi.json")).json()
            assert document["openapi"].startswith("3.1")

        outside: list[str] = []

        async def only_this_service(route: Route) -> None:
            if urlsplit(route.request.url).netloc != f"{server.host}:{server.port}":
                outside.append(route.request.url)
                await route.abort()
            else:
                await route.continue_()

        page = await browser.new_page()
        await page.route("**/*", only_this_service)
        await page.goto(f"{server.url}/docs")
        await page.wait_for_selector(".opblock", timeout=20_000)
        operations = await page.locator(".opblock").count()
        assert operations == sum(len(ops) for ops in document["paths"].values())
        assert await page.locator("button.authorize").count() == 1
        assert await page.locator(".errors-wrapper").count() == 0  # the document parsed cleanly
        assert outside == []
        await page.close()
    finally:
        server.stop()
