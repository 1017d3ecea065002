"""A POS vendor's first day: generate a client from /openapi.json with openapi-python-client and
run one sale through it, over real HTTP, against the service process and the simulator.

The generator is strict here (``--fail-on-warning``): an untyped body, a missing schema or an
ambiguous operation id would make it warn, and the test fail.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.support.live import ADMIN_KEY, ServiceProcess

pytestmark = pytest.mark.e2e

PACKAGE = "vipps_pos_client"


@pytest.fixture
def generated(service: ServiceProcess, tmp_path: Path) -> Iterator[ModuleType]:
    document = tmp_path / "openapi.json"
    document.write_bytes(httpx.get(f"{service.url}/openapi.json", timeout=10).content)
    config = tmp_path / "generator.yml"
    config.write_text(
        f"project_name_override: {PACKAGE}\npackage_name_override: {PACKAGE}\npost_hooks: []\n"
    )
    generator = Path(sys.executable).with_name("openapi-python-client")
    result = subprocess.run(  # noqa: S603 (the generator from our own virtualenv)
        [
            str(generator),
            "generate",
            "--path",
            str(document),
            "--config",
            str(config),
            "--meta",
            "none",
            "--output-path",
            str(tmp_path / "client" / PACKAGE),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout, result.stdout
    sys.path.insert(0, str(tmp_path / "client"))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path / "client"))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_one_sale_through_a_generated_client(
    generated: ModuleType, service: ServiceProcess, sim: httpx.AsyncClient
) -> None:
    client = _module("client")
    with (
        client.AuthenticatedClient(base_url=service.url, token=ADMIN_KEY, timeout=30) as admin,
        httpx.Client(base_url=str(sim.base_url), timeout=30) as customer,
    ):
        _sell(service, admin, customer)


def _sell(service: ServiceProcess, admin: Any, customer: httpx.Client) -> None:
    models = _module("models")
    client = _module("client")

    ensured = _module("api.operators.ensure_webhook").sync(msn="123456", client=admin)
    assert isinstance(ensured, models.EnsureOut), ensured
    till = _module("api.operators.register_till").sync(
        client=admin,
        body=models.RegisterTillRequest(
            till_id="gen-1", store_id="gen-store", location_description="Kasse 1"
        ),
    )
    assert isinstance(till, models.NewTillOut), till
    assert till.qr_status == "SYNCED"

    with client.AuthenticatedClient(base_url=service.url, token=till.api_key, timeout=40) as pos:
        _sale_at_till(models, pos, till, customer)


def _sale_at_till(models: Any, pos: Any, till: Any, customer: httpx.Client) -> None:
    line = models.OrderLine(
        name="Brunost",
        id="4002",
        total_amount=12900,
        total_amount_excluding_tax=11518,
        total_tax_amount=1382,
        tax_rate=1200,
        unit_info=models.UnitInfo(unit_price=12900, quantity="1"),
    )
    created = _module("api.pos.create_checkout").sync_detailed(
        "gen-1",
        client=pos,
        body=models.CreateCheckoutRequest(
            amount=12900,
            description="Kjøp Kasse 1",
            receipt=models.Receipt(
                order_lines=[line], bottom_line=models.BottomLine(receipt_number="R-1")
            ),
        ),
        idempotency_key="gen-sale-1",
    )
    assert created.status_code == 201, created.content
    checkout = created.parsed
    assert isinstance(checkout, models.CheckoutOut)
    assert checkout.state == "AWAITING_SCAN"
    assert checkout.receipt.order_lines[0].name == "Brunost"

    # A refused request parses as the documented Problem.
    refused = _module("api.pos.create_checkout").sync(
        "gen-1", client=pos, body=models.CreateCheckoutRequest(amount=12900)
    )
    assert isinstance(refused, models.Problem)
    assert refused.code == "active_checkout_exists"

    # The customer scans and approves (the simulator's controls).
    assert customer.post(f"/_sim/qr/{till.merchant_qr_id}/scan", json={}).status_code == 200
    get_checkout = _module("api.pos.get_checkout")
    deadline = time.monotonic() + 30
    while not checkout.payment_sent:
        assert time.monotonic() < deadline, checkout
        checkout = get_checkout.sync(checkout.id, client=pos, wait=5, version=checkout.version)
    approved = customer.post(f"/_sim/payments/{checkout.reference}/approve", json={})
    assert approved.status_code == 200, approved.text
    while not checkout.final:
        assert time.monotonic() < deadline, checkout
        checkout = get_checkout.sync(checkout.id, client=pos, wait=5, version=checkout.version)
    assert checkout.state == "CAPTURED"
    assert checkout.captured_amount == 12900

    refunded = _module("api.pos.refund_checkout").sync(
        checkout.id,
        client=pos,
        body=models.AmountRequest(amount=2900),
        idempotency_key="gen-sale-1-refund",
    )
    assert isinstance(refunded, models.CheckoutOut), refunded
    assert refunded.refunded_amount == 2900
    assert refunded.state == "PARTIALLY_REFUNDED"
