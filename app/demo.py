"""``make demo``: the whole flow on the embedded default — SQLite and the Vipps simulator.

Starts the simulator and the service over real HTTP on this machine, registers a till and the
webhook, plays a few sales as a cash register and a customer would, and prints a timeline with
timings. Exits 0 only when every scenario ended as expected.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from app.devstack import BackgroundServer, free_port
from app.main import create_app
from app.migrations import upgrade
from app.settings import DEV_ADMIN_KEY, Settings
from app.simulator import SimulatorConfig, approved, create_simulator_app
from app.simulator.config import DEFAULT_SALES_UNITS

DEMO_DIR = Path("var/demo")
MSN = "123456"
console = Console(highlight=False, width=110)

RECEIPT: dict[str, Any] = {
    "orderLines": [
        {
            "name": "Ullsokker",
            "id": "sku-1001",
            "totalAmount": 19800,
            "totalAmountExcludingTax": 15840,
            "totalTaxAmount": 3960,
            "taxRate": 2500,
            "unitInfo": {"unitPrice": 9900, "quantity": "2", "quantityUnit": "PCS"},
        },
        {
            "name": "Termos",
            "id": "sku-2002",
            "totalAmount": 34900,
            "totalAmountExcludingTax": 27920,
            "totalTaxAmount": 6980,
            "taxRate": 2500,
            "unitInfo": {"unitPrice": 34900, "quantity": "1", "quantityUnit": "PCS"},
        },
    ],
    "bottomLine": {"currency": "NOK", "receiptNumber": "100001"},
}
AMOUNT = 54700
MEMBER_PHONE, NEW_MEMBER_PHONE = "4712345678", "4798765432"  # the simulator's test users


def _member_receipt() -> dict[str, Any]:
    """The same basket with 10 % member discount on every line (totals still add up)."""
    lines = []
    for line in RECEIPT["orderLines"]:
        total = round(line["totalAmount"] * 0.9)
        tax = round(total * 0.2)
        lines.append(
            {
                **line,
                "totalAmount": total,
                "totalAmountExcludingTax": total - tax,
                "totalTaxAmount": tax,
                "discount": line["totalAmount"] - total,
            }
        )
    return {"orderLines": lines, "bottomLine": {"currency": "NOK", "receiptNumber": "100002"}}


def _port(preferred: int) -> int:
    try:
        with __import__("socket").create_server(("127.0.0.1", preferred)):
            return preferred
    except OSError:
        return free_port()


@dataclass
class Timeline:
    started: float = field(default_factory=time.perf_counter)

    def say(self, actor: str, text: str) -> None:
        elapsed = (time.perf_counter() - self.started) * 1000
        colour = {"till": "cyan", "customer": "magenta", "service": "green", "vipps": "yellow"}
        console.print(
            f"  [dim]{elapsed:8.0f} ms[/dim]  [{colour.get(actor, 'white')}]{actor:<8}[/]  {text}"
        )


class Demo:
    def __init__(self, service_url: str, sim_url: str) -> None:
        self.service = httpx.Client(base_url=service_url, timeout=30)
        self.sim = httpx.Client(base_url=sim_url, timeout=30)
        self.admin = {"Authorization": f"Bearer {DEV_ADMIN_KEY}"}
        self.till: dict[str, Any] = {}
        self.failures: list[str] = []

    @property
    def pos(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.till['apiKey']}"}

    def setup(self) -> None:
        console.rule("[bold]Setup")
        line = Timeline()
        ensured = self.service.post(f"/api/v1/webhooks/{MSN}/ensure", headers=self.admin)
        ensured.raise_for_status()
        line.say("service", f"webhook registered for MSN {MSN} (secret stored encrypted)")
        response = self.service.post(
            "/api/v1/tills",
            json={"tillId": "kasse-1", "storeId": "oslo-sentrum", "locationDescription": "Kasse 1"},
            headers=self.admin,
        )
        response.raise_for_status()
        self.till = response.json()
        line.say(
            "service",
            f"till kasse-1 registered; merchant callback QR {self.till['merchantQrId']} created",
        )

    # ---- building blocks ----------------------------------------------------------------------

    def checkout(self, line: Timeline, **body: Any) -> dict[str, Any]:
        payload = {"amount": AMOUNT, "currency": "NOK", "receipt": RECEIPT, **body}
        response = self.service.post(
            f"/api/v1/tills/{self.till['tillId']}/checkouts", json=payload, headers=self.pos
        )
        response.raise_for_status()
        checkout: dict[str, Any] = response.json()
        line.say(
            "till", f"rings up {checkout['amount']['value'] / 100:.2f} NOK → {checkout['state']}"
        )
        return checkout

    def scan(self, line: Timeline) -> None:
        self.sim.post(f"/_sim/qr/{self.till['merchantQrId']}/scan", json={}).raise_for_status()
        line.say("customer", "scans the QR sticker with the app")

    def follow(
        self,
        line: Timeline,
        checkout: dict[str, Any],
        done: Callable[[dict[str, Any]], bool],
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """Long-poll like a till: print every change until ``done``."""
        deadline = time.monotonic() + timeout
        current = checkout
        while not done(current) and time.monotonic() < deadline:
            response = self.service.get(
                f"/api/v1/checkouts/{checkout['id']}",
                params={"wait": 5, "version": current["version"]},
                headers=self.pos,
            )
            response.raise_for_status()
            seen = response.json()
            if seen["version"] != current["version"]:
                sent_now = seen["paymentSent"] and not current["paymentSent"]
                detail = " — payment request is in the customer's app" if sent_now else ""
                line.say("service", f"{seen['state']}{detail}")
            current = seen
        return current

    def until_sent(self, line: Timeline, checkout: dict[str, Any]) -> dict[str, Any]:
        return self.follow(line, checkout, lambda c: c["paymentSent"] or c["final"])

    def until_final(self, line: Timeline, checkout: dict[str, Any]) -> dict[str, Any]:
        return self.follow(line, checkout, lambda c: c["final"])

    def customer_answers(
        self, line: Timeline, checkout: dict[str, Any], answer: str = "approve"
    ) -> dict[str, Any]:
        """The customer approves or declines in the app; follow the sale to its end."""
        self.sim.post(f"/_sim/payments/{checkout['reference']}/{answer}", json={})
        line.say("customer", f"{answer}s in the app")
        return self.until_final(line, checkout)

    def expect(self, name: str, checkout: dict[str, Any], state: str) -> None:
        if checkout["state"] == state:
            console.print(f"  [bold green]✓[/] {name}: {state}")
        else:
            console.print(f"  [bold red]✗[/] {name}: expected {state}, got {checkout['state']}")
            self.failures.append(name)

    # ---- scenarios ----------------------------------------------------------------------------

    def basket_then_scan(self) -> None:
        console.rule("[bold]1. Basket first, then the customer scans")
        line = Timeline()
        checkout = self.checkout(line)
        self.scan(line)
        checkout = self.until_sent(line, checkout)
        checkout = self.customer_answers(line, checkout)
        self.expect("basket then scan", checkout, "CAPTURED")

    def scan_then_basket(self) -> None:
        console.rule("[bold]2. The customer scans first, then the till rings up")
        line = Timeline()
        self.scan(line)
        time.sleep(0.3)
        line.say("service", "check-in waits for this till's next sale (token valid 15 min)")
        checkout = self.checkout(line)
        checkout = self.until_sent(line, checkout)
        checkout = self.customer_answers(line, checkout)
        self.expect("scan then basket", checkout, "CAPTURED")

    def declined(self) -> None:
        console.rule("[bold]3. The customer declines")
        line = Timeline()
        checkout = self.checkout(line)
        self.scan(line)
        checkout = self.until_sent(line, checkout)
        checkout = self.customer_answers(line, checkout, "decline")
        self.expect("declined", checkout, "REJECTED")

    def cancelled(self) -> None:
        console.rule("[bold]4. The cashier cancels while the customer hesitates")
        line = Timeline()
        checkout = self.checkout(line)
        self.scan(line)
        checkout = self.until_sent(line, checkout)
        line.say("till", "cancels the sale")
        response = self.service.post(f"/api/v1/checkouts/{checkout['id']}/cancel", headers=self.pos)
        response.raise_for_status()
        checkout = response.json()
        line.say("service", f"{checkout['state']} (cancel answered once final)")
        self.expect("cancelled", checkout, "CANCELLED")

    def refund(self) -> None:
        console.rule("[bold]5. A sale, then the customer returns the thermos")
        line = Timeline()
        checkout = self.checkout(line)
        self.scan(line)
        checkout = self.until_sent(line, checkout)
        checkout = self.customer_answers(line, checkout)
        line.say("till", "refunds 349.00 NOK (the thermos)")
        response = self.service.post(
            f"/api/v1/checkouts/{checkout['id']}/refund",
            json={"amount": 34900},
            headers={**self.pos, "Idempotency-Key": f"refund-{checkout['id']}-1"},
        )
        response.raise_for_status()
        checkout = response.json()
        line.say(
            "service", f"{checkout['state']}: refunded {checkout['refundedAmount'] / 100:.2f} NOK"
        )
        self.expect("partial refund", checkout, "PARTIALLY_REFUNDED")
        response = self.service.post(
            f"/api/v1/checkouts/{checkout['id']}/refund",
            json={},
            headers={**self.pos, "Idempotency-Key": f"refund-{checkout['id']}-2"},
        )
        response.raise_for_status()
        checkout = response.json()
        line.say(
            "service", f"{checkout['state']}: refunded {checkout['refundedAmount'] / 100:.2f} NOK"
        )
        self.expect("full refund", checkout, "REFUNDED")

    @staticmethod
    def say_refunded(line: Timeline, checkout: dict[str, Any]) -> None:
        refunded = checkout["refundedAmount"] / 100
        line.say("service", f"{checkout['state']}: refunded {refunded:.2f} NOK in total")

    def club_setup(self) -> None:
        console.rule("[bold]Customer club: the store identifies members and enrolls new ones")
        line = Timeline()
        store = {"clubPolicy": "enroll", "memberPriceHold": True, "memberPriceHoldSeconds": 3}
        self.service.put(
            "/api/v1/stores/oslo-sentrum", json=store, headers=self.admin
        ).raise_for_status()
        line.say("service", "store oslo-sentrum: club policy 'enroll', member prices before paying")
        self.service.post(
            "/api/v1/members",
            json={"phoneNumber": MEMBER_PHONE, "name": "Ola Nordmann"},
            headers=self.admin,
        ).raise_for_status()
        line.say("service", "Ola Nordmann is a member (phone stored encrypted, looked up by hash)")

    def member_sale(self) -> None:
        console.rule("[bold]6. A member scans; the till applies member prices")
        line = Timeline()
        checkout = self.checkout(line)
        self.sim.post(
            f"/_sim/qr/{self.till['merchantQrId']}/scan", json={"phoneNumber": MEMBER_PHONE}
        ).raise_for_status()
        line.say("customer", "Ola scans the QR")
        checkout = self.follow(line, checkout, lambda c: c["state"] == "AWAITING_POS_UPDATE")
        member_id = (checkout.get("member") or {}).get("id")
        member = self.service.get(f"/api/v1/members/{member_id}", headers=self.admin).json()
        line.say("till", f"shows: customer identified — member {member.get('name')}")
        receipt = _member_receipt()
        amount = sum(line_["totalAmount"] for line_ in receipt["orderLines"])
        response = self.service.post(
            f"/api/v1/checkouts/{checkout['id']}/member-price",
            json={"amount": amount, "receipt": receipt},
            headers={**self.pos, "Idempotency-Key": f"member-price-{checkout['id']}"},
        )
        response.raise_for_status()
        line.say("till", f"sends the member price {amount / 100:.2f} NOK (was {AMOUNT / 100:.2f})")
        checkout = self.until_sent(line, response.json())
        checkout = self.customer_answers(line, checkout)
        self.expect("member sale", checkout, "CAPTURED")
        if checkout["capturedAmount"] != amount:
            self.failures.append("member price not charged")

    def enrollment(self) -> None:
        console.rule("[bold]7. A non-member scans and joins the club in the app")
        line = Timeline()
        checkout = self.checkout(line)
        self.sim.post(
            f"/_sim/qr/{self.till['merchantQrId']}/scan", json={"phoneNumber": NEW_MEMBER_PHONE}
        ).raise_for_status()
        line.say("customer", "Kari scans the QR")
        checkout = self.follow(
            line, checkout, lambda c: (c.get("member") or {}).get("outcome") == "enrolling"
        )
        line.say("service", f"asks Kari to join: {(checkout.get('member') or {}).get('note')}")
        logins = self.sim.get("/_sim/logins").json()
        pending = [item for item in logins if item.get("state", "PENDING") == "PENDING"]
        auth_req_id = (pending or logins)[-1]["authReqId"]
        self.sim.post(f"/_sim/logins/{auth_req_id}/consent", json={}).raise_for_status()
        line.say("customer", "consents in the app")
        checkout = self.follow(line, checkout, lambda c: c["state"] == "AWAITING_POS_UPDATE")
        line.say("till", "new member: no member price this time (the hold lapses after 3 s)")
        checkout = self.follow(line, checkout, lambda c: c["paymentSent"], timeout=40)
        checkout = self.customer_answers(line, checkout)
        self.expect("enrollment", checkout, "CAPTURED")
        member_id = (checkout.get("member") or {}).get("id")
        if member_id:
            member = self.service.get(f"/api/v1/members/{member_id}", headers=self.admin).json()
            name, phone = member.get("name"), member.get("phoneNumber")
            line.say("service", f"member stored: {name}, phone {phone}")
        else:
            self.failures.append("enrollment stored no member")

    def run(self) -> int:
        self.setup()
        for scenario in (
            self.basket_then_scan,
            self.scan_then_basket,
            self.declined,
            self.cancelled,
            self.refund,
            self.club_setup,
            self.member_sale,
            self.enrollment,
        ):
            try:
                scenario()
            except httpx.HTTPError as exc:
                console.print(f"  [bold red]✗[/] {scenario.__name__}: {exc}")
                self.failures.append(scenario.__name__)
        return len(self.failures)


def run_demo(
    *, keep_running: bool = False, port: int | None = None, sim_port: int | None = None
) -> int:
    """The scenarios on SQLite + the simulator. ``port``/``sim_port``: where the service and
    the simulator listen (default 8000 and 8081, or free ports when those are taken)."""
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir(parents=True)
    database_url = f"sqlite+aiosqlite:///{DEMO_DIR / 'demo.db'}"
    service_port = port if port is not None else _port(8000)
    sim_port = sim_port if sim_port is not None else _port(8081)
    service_url = f"http://127.0.0.1:{service_port}"
    config = SimulatorConfig(
        strict=True,
        ciba_interval_seconds=1,
        # What the merchant asks Vipps MobilePay for before going live (docs/operations.md):
        # the demo's sales units are approved for PUSH_MESSAGE and have Login enabled.
        sales_units=tuple(approved(unit) for unit in DEFAULT_SALES_UNITS),
        # The demo's service listens on http://127.0.0.1; real Vipps (and the simulator by
        # default) registers only HTTPS webhook URLs on 80/443/8080. Development switch: on.
        allow_http_localhost_webhooks=True,
    )
    simulator = BackgroundServer(create_simulator_app(config), port=sim_port).start()
    settings = Settings.model_validate(
        {
            "database": {"url": database_url},
            "vipps": {
                "base_url": simulator.url,
                "client_id": "sim-client-id",
                "client_secret": "sim-client-secret",
                "subscription_key": "sim-subscription-key",
                "default_msn": MSN,
            },
            "webhooks": {"public_url": f"{service_url}/webhooks/vipps"},
            "workers": {"outbox_poll_interval_seconds": 0.1, "reconcile_interval_seconds": 0.5},
            "logging": {"level": "WARNING"},
        }
    )
    console.print(
        f"[bold]vipps-pos demo[/] — SQLite at {DEMO_DIR / 'demo.db'}, simulator at {simulator.url}"
    )
    upgrade(database_url)
    service = BackgroundServer(create_app(settings), port=service_port).start()
    try:
        demo = Demo(service.url, simulator.url)
        failures = demo.run()
        violations = httpx.get(f"{simulator.url}/_sim/violations").json()["violations"]
        console.rule("[bold]Result")
        if violations:
            console.print(f"  [bold red]✗[/] {len(violations)} request(s) broke the Vipps specs")
            failures += 1
        else:
            console.print("  [green]every request to Vipps matched the official OpenAPI specs[/]")
        if failures:
            console.print(f"  [bold red]{failures} scenario(s) failed[/]")
        else:
            console.print("  [bold green]all scenarios ended as expected[/]")
        _where_to_look(service.url, simulator.url)
        if keep_running:
            console.print("\n  Service and simulator keep running; Ctrl-C stops them.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0 if not failures else 1
    finally:
        service.stop()
        simulator.stop()


def _where_to_look(service_url: str, sim_url: str) -> None:
    console.rule("[bold]Where to look")
    console.print(f"  API docs (OpenAPI):      {service_url}/docs")
    console.print(f"  Simulator controls:      {sim_url}/_sim/docs")
    console.print("  POS integration guide:   docs/integration.md")
    console.print(
        "  One sale by hand with curl (with `vipps-pos demo --keep-running` running):\n"
        f"    [dim]S={service_url} SIM={sim_url} bash docs/walkthrough.sh[/dim]"
    )
