"""The ``vipps-pos`` command line: serve, migrate, demo (and the operator commands)."""

from __future__ import annotations

import typer

from app.cli.core import register_core
from app.cli.operators import register_operators

cli = typer.Typer(
    name="vipps-pos",
    help="In-store payments with Vipps MobilePay merchant callback QR.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
register_core(cli)
register_operators(cli)


def main() -> None:
    cli()
