"""``python -m app.simulator --port 8081 [--host 127.0.0.1]``: the simulator over HTTP."""

from __future__ import annotations

import argparse

import uvicorn

from app.simulator.app import create_simulator_app
from app.simulator.config import SimulatorConfig, approved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--public-base-url", default=None, help="origin used in qrImageUrl/redirectUrl"
    )
    parser.add_argument("--payment-expiry", type=int, default=600, help="seconds until EXPIRED")
    parser.add_argument("--ciba-interval", type=int, default=5, help="CIBA polling interval (s)")
    parser.add_argument(
        "--no-rate-limits", action="store_true", help="switch the per-reference limits off"
    )
    parser.add_argument("--strict", action="store_true", help="validate requests against the specs")
    parser.add_argument(
        "--allow-http-localhost",
        action="store_true",
        help="development switch: accept http:// webhook URLs on this machine (Vipps: https only)",
    )
    parser.add_argument(
        "--dev-webhook-host",
        action="append",
        default=[],
        metavar="NAME",
        help="with --allow-http-localhost: a host name to treat as this machine (repeatable)",
    )
    parser.add_argument(
        "--approved",
        action="store_true",
        help="sales units with PUSH_MESSAGE approved and Login enabled (default: as a fresh "
        "test sales unit, neither)",
    )
    parser.add_argument("--fault-seed", type=int, default=None)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    config = SimulatorConfig(
        public_base_url=args.public_base_url,
        payment_expiry_seconds=args.payment_expiry,
        ciba_interval_seconds=args.ciba_interval,
        strict=args.strict,
        fault_seed=args.fault_seed,
        allow_http_localhost_webhooks=args.allow_http_localhost,
        development_webhook_hosts=tuple(args.dev_webhook_host),
    )
    if args.approved:
        config.sales_units = tuple(approved(unit) for unit in config.sales_units)
    if args.no_rate_limits:
        config.mutations_per_minute = None
        config.reads_per_minute = None
    uvicorn.run(
        create_simulator_app(config), host=args.host, port=args.port, log_level=args.log_level
    )


if __name__ == "__main__":
    main()
