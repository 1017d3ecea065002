"""Display-page fixtures: Debian's chromium driven by Playwright (never a downloaded browser).

In CI (``CI=true``) a missing chromium fails the run: `.ci/run` installs it, so its absence is a
broken pipeline, not a reason to skip. Locally the browser tests skip without it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from app.devstack import BackgroundServer
from tests.support.live import ServiceProcess, live_simulator

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def chromium_executable() -> str | None:
    configured = os.environ.get("VIPPS_POS_TEST_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None
    )


@pytest.fixture
def chromium_path() -> str:
    path = chromium_executable()
    if path is None:
        message = "chromium is not installed (apt-get install chromium; .ci/run does this)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def simulator() -> Iterator[BackgroundServer]:
    with live_simulator() as server:
        yield server


@pytest.fixture
def service(pg_url: str, simulator: BackgroundServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(pg_url, simulator.url, tmp_path / "logs", name="display").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client
