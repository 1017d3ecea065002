"""The customer display speaks the customer's language: the store's setting, else the browser's,
with amounts written the way the locale writes money. In headless Chromium, one till per case."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, expect

from app.api.display import negotiate_language
from app.devstack import BackgroundServer
from app.simulator import approved
from app.simulator.config import DEFAULT_SALES_UNITS, CredentialSet, SalesUnit
from tests.display.test_display_browser import STEP_TIMEOUT_MS, Till, shows
from tests.support.live import ADMIN_KEY, ServiceProcess, live_simulator, live_simulator_config

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MSN = {"NOK": "123456", "DKK": "654321", "EUR": "135790"}


@pytest.fixture
def simulator() -> Iterator[BackgroundServer]:
    """The default sales units (NOK, DKK) and a Finnish one selling in EUR."""
    units = (*DEFAULT_SALES_UNITS, SalesUnit(MSN["EUR"], "EUR", "Simulated store Turku"))
    # Partner keys reach all three sales units (the service is told so in ``service``).
    partner = CredentialSet(
        "sim-partner-client-id",
        "sim-partner-client-secret",
        ("sim-partner-subscription-key",),
        msns=tuple(MSN.values()),
        kind="partner",
    )
    config = live_simulator_config(
        credential_sets=(partner,), sales_units=tuple(approved(unit) for unit in units)
    )
    with live_simulator(config) as server:
        yield server


@pytest.fixture
def service(pg_url: str, simulator: BackgroundServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    partner_keys = {
        "VIPPS_POS_VIPPS__PARTNER_KEYS": "true",
        "VIPPS_POS_VIPPS__CLIENT_ID": "sim-partner-client-id",
        "VIPPS_POS_VIPPS__CLIENT_SECRET": "sim-partner-client-secret",
        "VIPPS_POS_VIPPS__SUBSCRIPTION_KEY": "sim-partner-subscription-key",
    }
    process = ServiceProcess(
        pg_url, simulator.url, tmp_path / "logs", name="display", extra_env=partner_keys
    ).start()
    try:
        yield process
    finally:
        process.stop()


@dataclass(frozen=True)
class Case:
    name: str
    store_language: str | None  # None: follow the browser
    browser_locale: str
    currency: str
    lang: str  # what the page must speak
    scan: str
    approve: str
    amount: str  # 349.00 in the checkout's currency, as the locale writes it
    purchase: str


CASES = [
    Case("nb", "nb", "en-GB", "NOK", "nb", "Skann for å betale", "Godkjenn i appen",
         "349,00 kr", "Ditt kjøp"),
    Case("da", "da", "en-GB", "DKK", "da", "Scan for at betale", "Godkend i appen",
         "349,00 kr.", "Dit køb"),
    Case("fi", "fi", "nb-NO", "EUR", "fi", "Maksa skannaamalla", "Hyväksy sovelluksessa",
         "349,00 €", "Ostoksesi"),
    Case("en", "en", "fi-FI", "NOK", "en", "Scan to pay", "Approve in the app",
         "NOK 349.00", "Your purchase"),
    Case("auto-da", None, "da-DK", "DKK", "da", "Scan for at betale", "Godkend i appen",
         "349,00 kr.", "Dit køb"),
    Case("auto-nn", None, "nn-NO", "NOK", "nb", "Skann for å betale", "Godkjenn i appen",
         "349,00 kr", "Ditt kjøp"),
]  # fmt: skip


def test_accept_language_negotiation() -> None:
    assert negotiate_language("da-DK,da;q=0.9,en;q=0.8") == "da"
    assert negotiate_language("sv-SE,fi;q=0.5,en;q=0.4") == "fi"
    assert negotiate_language("nn-NO") == "nb"
    assert negotiate_language("no") == "nb"
    assert negotiate_language("en;q=0.2,nb;q=0.9") == "nb"
    assert negotiate_language("de-DE,fr;q=0.8") == "en"
    assert negotiate_language("fi;q=0,da") == "da"
    assert negotiate_language(None) == "en"


async def test_each_language_in_chromium(
    browser: Browser,
    service: ServiceProcess,
    simulator: BackgroundServer,
    http: httpx.AsyncClient,
) -> None:
    for msn in MSN.values():
        ensured = await http.post(f"{service.url}/api/v1/webhooks/{msn}/ensure", headers=ADMIN)
        assert ensured.status_code == 200, ensured.text
    for case in CASES:
        store = f"store-{case.name}"
        settings = {"name": store, "displayLanguage": case.store_language or "auto"}
        put = await http.put(f"{service.url}/api/v1/stores/{store}", json=settings, headers=ADMIN)
        assert put.status_code == 200, put.text
        assert put.json()["displayLanguage"] == case.store_language
        registered = await http.post(
            f"{service.url}/api/v1/tills",
            json={
                "tillId": f"till-{case.name}",
                "storeId": store,
                "locationDescription": "K 1",
                "msn": MSN[case.currency],
            },
            headers=ADMIN,
        )
        assert registered.status_code == 201, registered.text
        till = Till(http, service, simulator.url, registered.json())
        issued = await http.post(
            f"{service.url}/api/v1/tills/{till.id}/display-token", headers=till.pos
        )
        assert issued.status_code == 201, issued.text

        context = await browser.new_context(locale=case.browser_locale)
        page = await context.new_page()
        await page.goto(service.url + issued.json()["displayUrl"])
        await expect(page.locator("html")).to_have_attribute(
            "lang", case.lang, timeout=STEP_TIMEOUT_MS
        )
        await shows(page, "idle", case.scan)
        sale = await till.ring_up(
            34900,
            currency=case.currency,
            receipt={
                "orderLines": [
                    {
                        "name": "Brunost",
                        "id": "1",
                        "totalAmount": 34900,
                        "totalAmountExcludingTax": 27920,
                        "totalTaxAmount": 6980,
                        "taxRate": 2500,
                    }
                ],
                "bottomLine": {"currency": case.currency},
            },
        )
        await shows(page, "scan", case.scan)
        await expect(page.locator("#amount")).to_have_text(case.amount)
        await expect(page.locator("#lines li").first).to_contain_text(case.amount)
        await expect(page.locator("#purchase")).to_have_text(case.purchase)
        await till.scan()
        await shows(page, "approve", case.approve)
        assert (await till.checkout(sale["id"]))["amount"]["currency"] == case.currency
        await context.close()
