"""The simulator's ASGI app: the Vipps MobilePay APIs at their real paths, and ``/_sim/`` controls.

Routers stay thin: read the raw request, call one :class:`~app.simulator.engine.Simulator`
method, render its :class:`~app.simulator.models.Result`. Errors travel as
:class:`~app.simulator.problems.SimError` and are rendered by one handler, in the exact shape of
the API family that raised them. Bodies are parsed by the engine (not by FastAPI), so a malformed
request gets Vipps's error format instead of FastAPI's 422.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp

from app.simulator import qrimage
from app.simulator.config import SimulatorConfig
from app.simulator.engine import SimControlError, Simulator
from app.simulator.faults import FaultLayer, FaultSpecError
from app.simulator.models import Result
from app.simulator.problems import SimError

SIM = "/_sim"


class SimulatorApp(FastAPI):
    """FastAPI with the fault layer outside every Starlette middleware.

    Outermost so that a simulated connection drop is not turned into a 500 by Starlette's
    ``ServerErrorMiddleware``.
    """

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()
        simulator: Simulator = self.state.simulator
        return FaultLayer(inner, simulator)


def render(result: Result) -> Response:
    headers = dict(result.headers)
    if result.body is None:
        return Response(status_code=result.status, headers=headers)
    return Response(
        orjson.dumps(result.body),
        status_code=result.status,
        headers=headers,
        media_type=result.media_type,
    )


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _base_url(simulator: Simulator, request: Request) -> str:
    return simulator.config.public_base_url or str(request.base_url).rstrip("/")


async def _control_body(request: Request) -> dict[str, Any]:
    """Optional JSON object body of a ``/_sim/`` call, merged over the query string."""
    params: dict[str, Any] = dict(request.query_params)
    raw = await request.body()
    if raw.strip():
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/x-www-form-urlencoded"):
            params.update(parse_qsl(raw.decode()))
        else:
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise SimControlError(400, "the body must be a JSON object") from None
            if not isinstance(parsed, dict):
                raise SimControlError(400, "the body must be a JSON object")
            params.update(parsed)
    return params


def _form(raw: bytes) -> Mapping[str, str]:
    return dict(parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True))


def create_simulator_app(config: SimulatorConfig | None = None) -> FastAPI:
    """A fresh simulator with its own in-memory state, reachable as ``app.state.simulator``."""
    simulator = Simulator(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await simulator.aclose()

    app = SimulatorApp(
        title="Vipps MobilePay simulator",
        docs_url=f"{SIM}/docs",
        openapi_url=f"{SIM}/openapi.json",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.simulator = simulator

    @app.exception_handler(SimError)
    async def sim_error(_: Request, error: SimError) -> Response:
        return Response(
            error.render(),
            status_code=error.status,
            headers=error.headers,
            media_type=error.media_type,
        )

    _vipps_routes(app, simulator)
    _control_routes(app, simulator)
    return app


def _vipps_routes(app: FastAPI, sim: Simulator) -> None:
    # ---- Access token (REFERENCE.md §2)
    @app.post("/accesstoken/get", tags=["vipps"])
    async def access_token(request: Request) -> Response:
        return render(sim.issue_access_token(request.headers))

    # ---- QR merchant callback (§3) and customer exchange (§5)
    @app.get("/qr/v1/merchant-callback", tags=["vipps"])
    async def list_qrs(request: Request) -> Response:
        return render(sim.list_qrs(request.headers, request.query_params, _base_url(sim, request)))

    @app.put("/qr/v1/merchant-callback/{merchant_qr_id}", tags=["vipps"])
    async def put_qr(merchant_qr_id: str, request: Request) -> Response:
        return render(sim.put_qr(request.headers, merchant_qr_id, await request.body()))

    @app.get("/qr/v1/merchant-callback/{merchant_qr_id}", tags=["vipps"])
    async def get_qr(merchant_qr_id: str, request: Request) -> Response:
        return render(
            sim.get_qr(
                request.headers, merchant_qr_id, request.query_params, _base_url(sim, request)
            )
        )

    @app.delete("/qr/v1/merchant-callback/{merchant_qr_id}", tags=["vipps"])
    async def delete_qr(merchant_qr_id: str, request: Request) -> Response:
        return render(sim.delete_qr(request.headers, merchant_qr_id))

    @app.post("/qr/v1/exchange/customer", tags=["vipps"])
    async def exchange_customer(request: Request) -> Response:
        return render(sim.exchange_customer(request.headers, await request.body()))

    @app.get("/qr/generate/{name}", tags=["vipps"])
    async def qr_image(name: str, size: int = 800) -> Response:
        """The image behind ``qrImageUrl``: public, no authentication (REFERENCE.md §3.2)."""
        content_id, _, ext = name.partition(".")
        content = sim.qr_image_content(content_id)
        if content is None or ext not in ("png", "svg") or not 100 <= size <= 2000:
            return Response(status_code=404)
        media = "image/png" if ext == "png" else "image/svg+xml"
        return Response(qrimage.render(content, ext, size), media_type=media)

    # ---- ePayment (§7)
    @app.post("/epayment/v1/payments", tags=["vipps"])
    async def create_payment(request: Request) -> Response:
        return render(
            sim.create_payment(request.headers, await request.body(), _base_url(sim, request))
        )

    @app.get("/epayment/v1/payments/{reference}", tags=["vipps"])
    async def get_payment(reference: str, request: Request) -> Response:
        return render(sim.get_payment(request.headers, reference))

    @app.get("/epayment/v1/payments/{reference}/events", tags=["vipps"])
    async def get_events(reference: str, request: Request) -> Response:
        return render(sim.get_events(request.headers, reference))

    @app.post("/epayment/v1/payments/{reference}/capture", tags=["vipps"])
    async def capture(reference: str, request: Request) -> Response:
        return render(sim.capture(request.headers, reference, await request.body()))

    @app.post("/epayment/v1/payments/{reference}/cancel", tags=["vipps"])
    async def cancel(reference: str, request: Request) -> Response:
        return render(sim.cancel(request.headers, reference, await request.body()))

    @app.post("/epayment/v1/payments/{reference}/refund", tags=["vipps"])
    async def refund(reference: str, request: Request) -> Response:
        return render(sim.refund(request.headers, reference, await request.body()))

    @app.post("/epayment/v1/test/payments/{reference}/approve", tags=["vipps"])
    async def force_approve(reference: str, request: Request) -> Response:
        return render(sim.force_approve(request.headers, reference, await request.body()))

    # ---- Webhooks API (§6)
    @app.post("/webhooks/v1/webhooks", tags=["vipps"])
    async def register_webhook(request: Request) -> Response:
        return render(sim.register_webhook(request.headers, await request.body()))

    @app.get("/webhooks/v1/webhooks", tags=["vipps"])
    async def list_webhooks(request: Request) -> Response:
        return render(sim.list_webhooks(request.headers))

    @app.delete("/webhooks/v1/webhooks/{webhook_id}", tags=["vipps"])
    async def delete_webhook(webhook_id: str, request: Request) -> Response:
        return render(sim.delete_webhook(request.headers, webhook_id))

    # ---- Login: discovery, CIBA, token, userinfo (§8)
    @app.get("/access-management-1.0/access/.well-known/openid-configuration", tags=["vipps"])
    async def openid_configuration(request: Request) -> Response:
        return render(sim.openid_configuration(_base_url(sim, request)))

    @app.post("/vipps-login-ciba/api/backchannel/authentication", tags=["vipps"])
    async def ciba_start(request: Request) -> Response:
        return render(sim.ciba_start(request.headers, _form(await request.body())))

    @app.post("/access-management-1.0/access/oauth2/token", tags=["vipps"])
    async def token(request: Request) -> Response:
        return render(sim.token(request.headers, _form(await request.body())))

    @app.get("/vipps-userinfo-api/userinfo", tags=["vipps"])
    async def userinfo(request: Request) -> Response:
        return render(sim.userinfo(request.headers))


def _control_routes(app: FastAPI, sim: Simulator) -> None:
    """The customer's phone, the test operator's knobs, and the inspection endpoints."""

    @app.get(f"{SIM}", tags=["sim"])
    async def index() -> Response:
        routes = sorted(
            f"{','.join(sorted(getattr(r, 'methods', set()) or []))} {getattr(r, 'path', '')}"
            for r in app.routes
            if getattr(r, "path", "").startswith(SIM)
        )
        return _json({"simulator": "Vipps MobilePay", "controls": routes})

    @app.get(f"{SIM}/test-users", tags=["sim"])
    async def test_users() -> Response:
        return _json(
            [
                {"phoneNumber": u.phone_number, "name": u.name, "email": u.email}
                for u in sim.config.test_users
            ]
        )

    # ---- scans
    @app.post(f"{SIM}/qr/{{merchant_qr_id}}/scan", tags=["sim"])
    async def scan_qr(merchant_qr_id: str, request: Request) -> Response:
        body = await _control_body(request)
        return _json(
            sim.scan(
                merchant_qr_id=merchant_qr_id,
                msn=body.get("msn"),
                phone_number=body.get("phoneNumber"),
            )
        )

    @app.post(f"{SIM}/scan", tags=["sim"])
    async def scan_content(request: Request) -> Response:
        body = await _control_body(request)
        content = body.get("qrContent")
        if not isinstance(content, str):
            raise SimControlError(400, "qrContent is required")
        return _json(sim.scan(qr_content=content, phone_number=body.get("phoneNumber")))

    # ---- payments
    @app.get(f"{SIM}/payments", tags=["sim"])
    async def payments() -> Response:
        sim.expire_due()
        return _json(
            [
                {
                    "msn": p.msn,
                    "reference": p.reference,
                    "state": p.state.value,
                    "amount": p.value,
                    "currency": p.currency,
                    "userFlow": p.user_flow,
                    "phoneNumber": p.user_phone,
                }
                for p in sim.state.payments.values()
            ]
        )

    @app.get(f"{SIM}/payments/{{reference}}", tags=["sim"])
    async def payment(reference: str, msn: str | None = None) -> Response:
        found = sim._sim_payment(reference, msn)
        return _json(
            {
                **found.get_response(),
                "msn": found.msn,
                "events": [found.event_body(e) for e in found.events],
            }
        )

    @app.post(f"{SIM}/payments/{{reference}}/approve", tags=["sim"])
    async def approve(reference: str, request: Request) -> Response:
        body = await _control_body(request)
        return _json(sim.user_approve(reference, body.get("msn"), body.get("phoneNumber")))

    @app.post(f"{SIM}/payments/{{reference}}/decline", tags=["sim"])
    async def decline(reference: str, request: Request) -> Response:
        body = await _control_body(request)
        return _json(sim.user_decline(reference, body.get("msn")))

    @app.post(f"{SIM}/payments/{{reference}}/expire", tags=["sim"])
    async def expire(reference: str, request: Request) -> Response:
        body = await _control_body(request)
        return _json(sim.expire_now(reference, body.get("msn")))

    @app.post(f"{SIM}/payments/{{reference}}/authorizing", tags=["sim"])
    async def authorizing(reference: str, request: Request) -> Response:
        """The customer is approving right now; a cancel meanwhile answers 423 / 6250."""
        body = await _control_body(request)
        return _json(sim.user_authorizing(reference, body.get("msn")))

    @app.post(f"{SIM}/payments/{{reference}}/release-funds", tags=["sim"])
    async def release_funds(reference: str, request: Request) -> Response:
        """The issuer released the reservation early; captures answer 6260."""
        body = await _control_body(request)
        return _json(sim.release_funds(reference, body.get("msn")))

    @app.post(f"{SIM}/payments/{{reference}}/fail-captures", tags=["sim"])
    async def fail_captures(reference: str, request: Request) -> Response:
        """The next ``times`` (default 1) captures answer 6280, a transient failure."""
        body = await _control_body(request)
        try:
            times = int(body.get("times", 1))
        except (TypeError, ValueError):
            raise SimControlError(400, "times must be an integer") from None
        return _json(sim.fail_captures(reference, times, body.get("msn")))

    @app.get(f"{SIM}/landing", tags=["sim"])
    async def landing(token: str) -> Response:
        """The landing page of redirect flows: the user's approve/decline buttons."""
        found = sim.payment_by_token(token)
        if found is None:
            return Response("Unknown payment", status_code=404, media_type="text/plain")
        ref = html.escape(found.reference)
        page = (
            "<!doctype html><title>Vipps MobilePay simulator</title>"
            f"<h1>Pay {found.value / 100:.2f} "
            f"{found.currency}</h1><p>Reference {ref}, state {found.state.value}</p>"
            f'<form method="post" action="{SIM}/payments/{ref}/approve?msn={found.msn}">'
            "<button>Approve</button></form>"
            f'<form method="post" action="{SIM}/payments/{ref}/decline?msn={found.msn}">'
            "<button>Decline</button></form>"
        )
        return Response(page, media_type="text/html")

    @app.get(f"{SIM}/landing/qr.svg", tags=["sim"])
    async def landing_qr(token: str, request: Request) -> Response:
        if sim.payment_by_token(token) is None:
            return Response(status_code=404)
        url = f"{_base_url(sim, request)}{SIM}/landing?token={token}"
        return Response(qrimage.render(url, "svg"), media_type="image/svg+xml")

    # ---- sales units: what Vipps MobilePay has switched on for each MSN
    @app.get(f"{SIM}/sales-units", tags=["sim"])
    async def sales_units() -> Response:
        return _json([sim.sales_unit_json(u) for u in sim.sales_units()])

    @app.post(f"{SIM}/sales-units/{{msn}}", tags=["sim"])
    async def update_sales_unit(msn: str, request: Request) -> Response:
        """``{"pushMessageAllowed": true, "loginEnabled": true, ...}``: as after a request to
        Vipps MobilePay (push approval, Login activation, token exchange, market)."""
        body = await _control_body(request)
        return _json(sim.update_sales_unit(msn, body))

    # ---- logins (CIBA)
    @app.get(f"{SIM}/logins", tags=["sim"])
    async def logins() -> Response:
        return _json([sim.ciba_json(r) for r in sim.state.ciba.values()])

    @app.post(f"{SIM}/logins/{{auth_req_id}}/consent", tags=["sim"])
    async def consent(auth_req_id: str) -> Response:
        return _json(sim.ciba_answer(auth_req_id, consent=True))

    @app.post(f"{SIM}/logins/{{auth_req_id}}/refuse", tags=["sim"])
    async def refuse(auth_req_id: str) -> Response:
        return _json(sim.ciba_answer(auth_req_id, consent=False))

    # ---- time and state
    @app.get(f"{SIM}/clock", tags=["sim"])
    async def clock() -> Response:
        return _json({"now": sim.clock.now().isoformat()})

    @app.post(f"{SIM}/clock/advance", tags=["sim"])
    async def advance(request: Request) -> Response:
        body = await _control_body(request)
        try:
            seconds = float(body.get("seconds", 0))
            now = sim.advance_clock(seconds)
        except (TypeError, ValueError) as exc:
            raise SimControlError(400, f"seconds: {exc}") from None
        return _json({"now": now.isoformat()})

    @app.post(f"{SIM}/reset", tags=["sim"])
    async def reset(request: Request) -> Response:
        body = await _control_body(request)
        sim.reset(keep_access_tokens=bool(body.get("keepAccessTokens", True)))
        return _json({"reset": True})

    # ---- faults
    @app.get(f"{SIM}/faults", tags=["sim"])
    async def faults() -> Response:
        return _json(
            {
                "rules": [rule.as_json() for rule in sim.faults.rules],
                "operations": list(_operations()),
            }
        )

    @app.post(f"{SIM}/faults", tags=["sim"])
    async def add_fault(request: Request) -> Response:
        body = await _control_body(request)
        try:
            rule = sim.faults.add(body)
        except (FaultSpecError, TypeError, ValueError) as exc:
            raise SimControlError(400, str(exc)) from None
        return _json(rule.as_json(), status=201)

    @app.delete(f"{SIM}/faults", tags=["sim"])
    async def clear_faults() -> Response:
        sim.faults.clear()
        return Response(status_code=204)

    @app.delete(f"{SIM}/faults/{{rule_id}}", tags=["sim"])
    async def delete_fault(rule_id: str) -> Response:
        if not sim.faults.remove(rule_id):
            raise SimControlError(404, f"no fault rule {rule_id}")
        return Response(status_code=204)

    @app.post(f"{SIM}/faults/seed", tags=["sim"])
    async def seed_faults(request: Request) -> Response:
        body = await _control_body(request)
        seed = body.get("seed")
        sim.faults.seed(int(seed) if seed is not None else None)
        return _json({"seed": seed})

    # ---- webhooks
    @app.get(f"{SIM}/webhooks", tags=["sim"])
    async def registrations() -> Response:
        """Every registration, secrets included (the real API shows a secret only once)."""
        return _json(
            {
                "paused": sim.webhooks.paused,
                "registrations": [
                    {**r.listing(), "secret": r.secret, "msn": r.msn, "clientId": r.client_id}
                    for r in sim.state.registrations.values()
                ],
            }
        )

    @app.post(f"{SIM}/webhooks/pause", tags=["sim"])
    async def pause() -> Response:
        sim.webhooks.pause()
        return _json({"paused": True})

    @app.post(f"{SIM}/webhooks/resume", tags=["sim"])
    async def resume() -> Response:
        sim.webhooks.resume()
        return _json({"paused": False})

    @app.get(f"{SIM}/deliveries", tags=["sim"])
    async def deliveries(
        event: str | None = None, reference: str | None = None, status: str | None = None
    ) -> Response:
        return _json(
            [
                d.as_json()
                for d in sim.webhooks.log
                if (event is None or d.event == event)
                and (reference is None or d.reference == reference)
                and (status is None or d.status == status)
            ]
        )

    @app.post(f"{SIM}/deliveries/drain", tags=["sim"])
    async def drain(request: Request) -> Response:
        body = await _control_body(request)
        done = await sim.webhooks.drain(float(body.get("timeout", 5.0)))
        return _json({"drained": done, "pending": sim.webhooks.pending()})

    # ---- inspection
    @app.get(f"{SIM}/ledger", tags=["sim"])
    async def ledger(operation: str | None = None, reference: str | None = None) -> Response:
        return _json(
            [
                e.as_json()
                for e in sim.state.ledger
                if (operation is None or e.operation == operation)
                and (reference is None or e.reference == reference)
            ]
        )

    @app.get(f"{SIM}/violations", tags=["sim"])
    async def violations() -> Response:
        return _json({"strict": sim.strict, "violations": sim.violations})

    @app.delete(f"{SIM}/violations", tags=["sim"])
    async def clear_violations() -> Response:
        sim.violations.clear()
        return Response(status_code=204)

    @app.post(f"{SIM}/strict", tags=["sim"])
    async def strict(request: Request) -> Response:
        body = await _control_body(request)
        sim.strict = bool(body.get("enabled", True))
        return _json({"strict": sim.strict})


def _operations() -> tuple[str, ...]:
    from app.simulator.faults import OPERATIONS

    return OPERATIONS
