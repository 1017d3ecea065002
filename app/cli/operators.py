"""Operator commands: tills, QR sheets, webhooks, checkouts, end-of-day report, audit, drift.

Each command opens the services on the configured database and Vipps (settings from the
environment, as ``serve`` reads them), does one thing and exits; work it queues for Vipps is done
by the running service's workers. ``--json`` prints one JSON document on stdout for scripts;
otherwise a table. Logs go to stderr, so stdout stays parseable. Exit status: 0 done, 1 the
action failed or found a problem (broken audit chain, drift left), 2 bad configuration.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from sqlalchemy.engine import make_url

from app.api.schemas import CheckoutOut, TillOut, WebhookRegistrationOut
from app.cli.core import _settings
from app.domain.state_machine import CheckoutState
from app.observability.logging import configure_logging
from app.service import Services
from app.service.admin_keys import AdminKeyInfo
from app.service.bootstrap import open_services
from app.service.drift import DriftReport, DriftService
from app.service.errors import ServiceError, TillExists
from app.service.health import readiness
from app.service.key_rotation import KeyRotation
from app.service.qr_sheet import SheetLabels, render_pdf, render_svg, store_labels
from app.service.reports import (
    DEFAULT_TIMEZONE,
    EndOfDayReports,
    checkout_audit_trail,
    verify_audit_trail,
)
from app.service.tills import till_field_errors
from app.service.webhooks import EnsureReport
from app.settings import Settings
from app.vipps.errors import VippsAuthError, VippsError

T = TypeVar("T")
JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document (for scripts).")


def _console() -> Console:
    return Console(soft_wrap=False, width=200 if not sys.stdout.isatty() else None)


def fail(message: str, status: int = 1) -> NoReturn:
    """One line on stderr, never a traceback; exit ``status`` (1 failed, 2 bad input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(status)


def _database_problem(settings: Settings) -> str | None:
    """Why the configured database cannot serve a command, before anything opens it."""
    url = make_url(settings.database.url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database).resolve()
        if not path.exists():
            return (
                f"no database at {path} (VIPPS_POS_DATABASE__URL); create it with "
                "`vipps-pos migrate`, or run this where the service's settings apply"
            )
    return None


def _run(work: Callable[[Services], Awaitable[T]]) -> T:
    """Run ``work`` on freshly opened services. Every failure is one line on stderr."""
    settings = _settings()
    # The failure itself is the one line `fail` prints; retries and warnings would bury it.
    configure_logging("ERROR", json_logs=False, stream=sys.stderr)
    problem = _database_problem(settings)
    if problem:
        fail(problem, 2)

    async def main() -> T:
        async with open_services(settings) as services:
            ready = await readiness(services.ctx)
            if ready["database"] != "ok":
                fail(
                    f"cannot reach the database ({ready.get('error')}); check "
                    "VIPPS_POS_DATABASE__URL",
                    2,
                )
            if ready["status"] != "ready":
                fail(
                    f"the database is at migration {ready['migration'] or 'none'}, the code "
                    f"needs {ready['head']}: run `vipps-pos migrate`",
                    2,
                )
            return await work(services)

    try:
        return asyncio.run(main())
    except ServiceError as exc:
        fail(f"{exc.code}: {exc.detail}")
    except VippsAuthError as exc:
        fail(
            f"Vipps refused our credentials (HTTP {exc.status}): check VIPPS_POS_VIPPS__CLIENT_ID, "
            "__CLIENT_SECRET and __SUBSCRIPTION_KEY"
        )
    except VippsError as exc:
        fail(f"Vipps: {exc}")
    except (typer.Exit, typer.BadParameter, KeyboardInterrupt):
        raise
    except Exception as exc:  # an operator gets one line; the log has the rest
        logging.getLogger("app.cli").debug("command failed", exc_info=True)
        fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'failed'}")


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _cell(value: Any) -> str:
    """A table cell for people: no Python reprs."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items() if v not in (None, [], {}))
    if isinstance(value, list):
        return "; ".join(_cell(v) for v in value)
    return str(value)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    _console().print(table)


def money(value: int | None, currency: str) -> str:
    """Minor units as money: ``12900, "NOK"`` → ``129.00 NOK`` (all our currencies have 2
    decimals)."""
    if value is None:
        return ""
    sign = "-" if value < 0 else ""
    return f"{sign}{abs(value) // 100}.{abs(value) % 100:02d} {currency}"


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural_form or singular + 's')}"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``5m``, ``2h``, ``1d``."""
    match = _DURATION.match(text)
    if match is None:
        raise typer.BadParameter(f"not a duration: {text!r} (e.g. 30s, 5m, 2h)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


# ---- tills ------------------------------------------------------------------------------------

tills_app = typer.Typer(help="Register, list, change and deactivate tills.", no_args_is_help=True)


def _till_json(till: Any, api_key: str | None = None) -> dict[str, Any]:
    data = TillOut.of(till).model_dump(mode="json", by_alias=True)
    if api_key is not None:
        data["apiKey"] = api_key
    return data


def _till_rows(tills: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            t["tillId"],
            t["storeId"],
            t["msn"],
            t["locationDescription"],
            t["status"],
            t["qrStatus"],
            t.get("apiKey", t["apiKeyId"]),
        ]
        for t in tills
    ]


_TILL_COLUMNS = ["till", "store", "MSN", "location", "status", "QR", "API key (id)"]


@tills_app.command(
    "add", epilog="Example: vipps-pos tills add kasse-1 --store oslo-1 --location 'Kasse 1'"
)
def tills_add(
    till_id: str = typer.Argument(..., help="Till id (letters, digits, - and _)."),
    store: str = typer.Option(..., "--store", help="Store id (created if new)."),
    location: str = typer.Option(
        ..., "--location", help="Shown to the customer in the app (at most 36 characters)."
    ),
    msn: str | None = typer.Option(None, help="Sales unit (default: the configured MSN)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Register a till and create its QR at Vipps. Prints the till's API key once.

    Checked before anything is written: the fields, our Vipps credentials and access to the MSN.
    If Vipps then fails to create the QR, the till and its key are kept and printed, and
    `vipps-pos tills sync-qr TILL` finishes the job."""
    errors = till_field_errors(
        till_id=till_id, store_id=store, location_description=location, msn=msn
    )
    if errors:
        fail("; ".join(f"--{_OPTION.get(e.field, e.field)}: {e.message}" for e in errors), 2)

    async def work(services: Services) -> tuple[dict[str, Any], str | None]:
        await services.tills.check_vipps_access(msn)
        new = await services.tills.register(
            till_id, store_id=store, location_description=location, msn=msn
        )
        return _till_json(new.till, new.api_key), new.qr_error

    data, qr_error = _run(work)
    if as_json:
        _print_json(data)
    else:
        _table(
            "Till registered — keep the API key, it is not shown again",
            _TILL_COLUMNS,
            _till_rows([data]),
        )
    if qr_error:
        fail(
            f"till {till_id} is saved (its API key is above) but Vipps did not create its QR: "
            f"{qr_error}. Finish with `vipps-pos tills sync-qr {till_id}`"
        )


_OPTION = {"tillId": "till-id", "storeId": "store", "locationDescription": "location", "msn": "msn"}


@tills_app.command("sync-qr", epilog="Example: vipps-pos tills sync-qr kasse-1")
def tills_sync_qr(till_id: str = typer.Argument(...), as_json: bool = JSON_OPTION) -> None:
    """Create or update the till's QR at Vipps (after `tills add` could not); exit status 1 if
    Vipps still refuses."""

    async def work(services: Services) -> tuple[dict[str, Any], str | None]:
        till, error = await services.tills.sync_qr_reporting(till_id)
        return _till_json(till), error

    data, error = _run(work)
    if as_json:
        _print_json(data)
    else:
        _table("QR synced" if not error else "QR not synced", _TILL_COLUMNS, _till_rows([data]))
    if error:
        fail(f"till {till_id}: {error}")


@tills_app.command("rotate-key", epilog="Example: vipps-pos tills rotate-key kasse-1")
def tills_rotate_key(till_id: str = typer.Argument(...), as_json: bool = JSON_OPTION) -> None:
    """Issue a new API key for the till and print it once. The old key stops working at once
    (and every display link of the till with it)."""

    async def work(services: Services) -> dict[str, Any]:
        new = await services.tills.rotate_api_key(till_id)
        return _till_json(new.till, new.api_key)

    data = _run(work)
    if as_json:
        _print_json(data)
    else:
        _table(
            "New API key — the old one no longer works; keep this, it is not shown again",
            _TILL_COLUMNS,
            _till_rows([data]),
        )


@tills_app.command("list", epilog="Example: vipps-pos tills list --store oslo-1 --json")
def tills_list(
    store: str | None = typer.Option(None, "--store", help="Only this store."),
    status: str | None = typer.Option(None, help="ACTIVE or INACTIVE."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List tills."""

    async def work(services: Services) -> list[dict[str, Any]]:
        return [_till_json(t) for t in await services.tills.list(store_id=store, status=status)]

    data = _run(work)
    if as_json:
        _print_json(data)
    else:
        _table(plural(len(data), "till"), _TILL_COLUMNS, _till_rows(data))


@tills_app.command("show", epilog="Example: vipps-pos tills show kasse-1")
def tills_show(till_id: str = typer.Argument(...), as_json: bool = JSON_OPTION) -> None:
    """One till, with its merchant QR id and QR sync status."""

    async def work(services: Services) -> dict[str, Any]:
        till = await services.tills.get(till_id)
        data = _till_json(till)
        data["qrContent"] = till.qr_content
        return data

    data = _run(work)
    if as_json:
        _print_json(data)
    else:
        _table(till_id, ["field", "value"], [[k, v] for k, v in data.items()])


@tills_app.command("update", epilog="Example: vipps-pos tills update kasse-1 --location 'Kasse 2'")
def tills_update(
    till_id: str = typer.Argument(...),
    location: str = typer.Option(..., "--location", help="New location description."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Change a till's location description (updated at Vipps too)."""
    errors = till_field_errors(location_description=location)
    if errors:
        fail("; ".join(f"--location: {e.message}" for e in errors), 2)

    async def work(services: Services) -> dict[str, Any]:
        return _till_json(await services.tills.update(till_id, location_description=location))

    data = _run(work)
    if as_json:
        _print_json(data)
    else:
        _table("Till updated", _TILL_COLUMNS, _till_rows([data]))


@tills_app.command("deactivate", epilog="Example: vipps-pos tills deactivate kasse-1")
def tills_deactivate(till_id: str = typer.Argument(...), as_json: bool = JSON_OPTION) -> None:
    """Deactivate a till and delete its QR at Vipps (a scan then says "not found")."""

    async def work(services: Services) -> dict[str, Any]:
        return _till_json(await services.tills.deactivate(till_id))

    data = _run(work)
    if as_json:
        _print_json(data)
    else:
        _table("Till deactivated", _TILL_COLUMNS, _till_rows([data]))


@tills_app.command(
    "import",
    epilog="Example: vipps-pos tills import tills.csv --json > keys.json\n\n"
    "CSV header: tillId,storeId,locationDescription[,msn]",
)
def tills_import(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV file.")],
    as_json: bool = JSON_OPTION,
) -> None:
    """Register many tills from a CSV file. Existing tills are skipped, so a re-run after an
    interruption registers only the rest. Prints each new till's API key once."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"tillId", "storeId", "locationDescription"} - set(rows[0] if rows else {})
    if missing:
        typer.echo(f"error: CSV lacks columns {sorted(missing)}", err=True)
        raise typer.Exit(2)

    async def work(services: Services) -> list[dict[str, Any]]:
        for unit in sorted({(row.get("msn") or "").strip() or None for row in rows}, key=str):
            await services.tills.check_vipps_access(unit)  # before the first till is written
        results: list[dict[str, Any]] = []
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=Console(stderr=True),
            disable=as_json and not sys.stderr.isatty(),
        )
        with progress:
            task = progress.add_task("registering tills", total=len(rows))
            for row in rows:
                till_id = row["tillId"].strip()
                try:
                    new = await services.tills.register(
                        till_id,
                        store_id=row["storeId"].strip(),
                        location_description=row["locationDescription"].strip(),
                        msn=(row.get("msn") or "").strip() or None,
                    )
                    registered = {"result": "registered", **_till_json(new.till, new.api_key)}
                    if new.qr_error:
                        registered["error"] = f"QR not created: {new.qr_error} (tills sync-qr)"
                    results.append(registered)
                except TillExists:
                    results.append({"result": "exists", "tillId": till_id})
                except ServiceError as exc:
                    results.append({"result": "failed", "tillId": till_id, "error": exc.detail})
                progress.advance(task)
        return results

    results = _run(work)
    if as_json:
        _print_json(results)
    else:
        _table(
            f"{sum(r['result'] == 'registered' for r in results)} of {len(results)} registered",
            ["till", "result", "QR", "API key", "error"],
            [
                [r["tillId"], r["result"], r.get("qrStatus"), r.get("apiKey"), r.get("error")]
                for r in results
            ],
        )
    failed = [r for r in results if r["result"] == "failed" or r.get("error")]
    for r in failed:
        typer.echo(f"error: till {r['tillId']}: {r['error']}", err=True)
    if failed:
        raise typer.Exit(1)


# ---- QR sheets --------------------------------------------------------------------------------

qr_app = typer.Typer(help="Print-ready QR sheets.", no_args_is_help=True)


@qr_app.command(
    "sheet",
    epilog="Example: vipps-pos qr sheet --store oslo-1 --format pdf -o oslo-1-qr.pdf",
)
def qr_sheet(
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    store: str = typer.Option(..., "--store", help="Store id."),
    sheet_format: str = typer.Option("pdf", "--format", help="pdf or svg."),
    as_json: bool = JSON_OPTION,
) -> None:
    """A4 sheet(s) of the store's active tills' QR codes, labelled with location, store and
    till id, rendered from the QR content Vipps gave each till. A till whose QR Vipps cannot
    give is named on stderr, the others are printed, and the exit status is 1."""
    if sheet_format not in ("pdf", "svg"):
        raise typer.BadParameter("--format must be pdf or svg")

    async def work(services: Services) -> SheetLabels:
        return await store_labels(services.tills, store)

    sheet = _run(work)
    store_name, labels, failures = sheet.store_name, sheet.labels, sheet.failures
    for till_id, reason in failures:
        typer.echo(f"error: till {till_id}: {reason}", err=True)
    if not labels:
        fail(
            f"store {store} has no active tills"
            if not failures
            else f"no QR of store {store} could be rendered"
        )
    render = render_pdf if sheet_format == "pdf" else render_svg
    output.write_bytes(render(labels, heading=store_name))
    summary = {
        "store": store,
        "format": sheet_format,
        "file": str(output),
        "tills": len(labels),
        "failed": [{"tillId": t, "error": e} for t, e in failures],
    }
    if as_json:
        _print_json(summary)
    else:
        typer.echo(f"wrote {plural(len(labels), 'QR code')} to {output}")
    if failures:
        raise typer.Exit(1)


# ---- webhooks ---------------------------------------------------------------------------------

webhooks_app = typer.Typer(help="Webhook registrations at Vipps.", no_args_is_help=True)


async def _msns(services: Services, msn: str | None) -> list[str]:
    if msn:
        return [msn]
    tills = await services.tills.list()
    return sorted({services.ctx.settings.vipps.default_msn} | {t.msn for t in tills})


def _ensure_json(report: EnsureReport) -> dict[str, Any]:
    return {
        "msn": report.msn,
        "registrationId": report.registration_id,
        "created": report.created,
        "removed": list(report.removed),
        "orphaned": list(report.orphaned),
        "duplicates": list(report.duplicates),
        "foreign": list(report.foreign),
        "retired": list(report.retired),
        "purged": list(report.purged),
    }


def _ensure_table(title: str, reports: list[dict[str, Any]]) -> None:
    _table(
        title,
        ["MSN", "registration", "created", "removed", "foreign (left alone)", "retired"],
        [
            [
                r["msn"],
                r["registrationId"],
                r["created"],
                ", ".join(r["removed"]),
                ", ".join(r["foreign"]),
                ", ".join(r["retired"]),
            ]
            for r in reports
        ],
    )


@webhooks_app.command("ensure", epilog="Example: vipps-pos webhooks ensure --msn 123456")
def webhooks_ensure(
    msn: str | None = typer.Option(None, help="Only this MSN (default: every MSN in use)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Make sure each MSN has exactly one registration at our URL with every event we use;
    deletes orphaned and duplicate ones, reports registrations for other URLs."""

    async def work(services: Services) -> list[dict[str, Any]]:
        return [
            _ensure_json(await services.webhooks.ensure(unit))
            for unit in await _msns(services, msn)
        ]

    reports = _run(work)
    if as_json:
        _print_json(reports)
    else:
        _ensure_table("Webhook registrations ensured", reports)


@webhooks_app.command("list", epilog="Example: vipps-pos webhooks list --json")
def webhooks_list(
    msn: str | None = typer.Option(None, help="Only this MSN (default: every MSN in use)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Our registrations next to Vipps's list: which are live, retired, orphaned or foreign.
    Secrets are never shown."""

    async def work(services: Services) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for unit in await _msns(services, msn):
            ours = {r.id: r for r in await services.webhooks.list(unit)}
            at_vipps = {h.id: h for h in await services.webhooks.list_at_vipps(unit)}
            url = services.intake.registered_url(unit)
            for rid in sorted(set(ours) | set(at_vipps)):
                stored, hook = ours.get(rid), at_vipps.get(rid)
                row: dict[str, Any] = (
                    WebhookRegistrationOut.of(stored).model_dump(mode="json", by_alias=True)
                    if stored
                    else {"id": rid, "msn": unit, "url": hook.url if hook else None}
                )
                row["atVipps"] = hook is not None
                row["secretHeld"] = stored is not None
                if hook is not None:
                    row["events"] = list(hook.events)
                    if hook.url != url:
                        row["status"] = "FOREIGN"
                    elif stored is None:
                        row["status"] = "ORPHANED"
                rows.append(row)
        return rows

    rows = _run(work)
    if as_json:
        _print_json(rows)
    else:
        _table(
            "Webhook registrations",
            ["MSN", "id", "status", "at Vipps", "secret held", "events", "url"],
            [
                [
                    r["msn"],
                    r["id"],
                    r.get("status"),
                    r["atVipps"],
                    r["secretHeld"],
                    len(r.get("events") or []),
                    r.get("url"),
                ]
                for r in rows
            ],
        )


@webhooks_app.command("rotate", epilog="Example: vipps-pos webhooks rotate --msn 123456")
def webhooks_rotate(
    msn: str = typer.Option(..., help="The MSN whose registration gets a new secret."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Register anew with a new secret and delete the old registration; both secrets verify
    during the overlap, and the old one for an hour after, so no delivery is rejected."""

    async def work(services: Services) -> dict[str, Any]:
        return _ensure_json(await services.webhooks.rotate(msn))

    report = _run(work)
    if as_json:
        _print_json(report)
    else:
        _ensure_table("Webhook secret rotated", [report])


# ---- Vipps API keys per sales unit ------------------------------------------------------------

keys_app = typer.Typer(
    help="Each sales unit's own Vipps API keys (stored encrypted; never printed).",
    no_args_is_help=True,
)
_MSN_ARGUMENT = typer.Argument(..., help="The sales unit (MSN) the keys belong to.")
# Secrets come from a hidden prompt or the environment: arguments would show in `ps` and in the
# shell's history.
_CLIENT_ID = typer.Option(
    ..., "--client-id", envvar="VIPPS_POS_KEYS_CLIENT_ID", prompt=True, hide_input=True
)
_CLIENT_SECRET = typer.Option(
    ..., "--client-secret", envvar="VIPPS_POS_KEYS_CLIENT_SECRET", prompt=True, hide_input=True
)
_SUBSCRIPTION_KEY = typer.Option(
    ...,
    "--subscription-key",
    envvar="VIPPS_POS_KEYS_SUBSCRIPTION_KEY",
    prompt=True,
    hide_input=True,
)
_VERIFY = typer.Option(
    True, "--verify/--no-verify", help="Try the keys at Vipps for this MSN before storing them."
)


def _key_json(info: Any) -> dict[str, Any]:
    return {
        "msn": info.msn,
        "source": info.source,
        "fingerprint": info.fingerprint,
        "createdAt": info.created_at.isoformat() if info.created_at else None,
        "rotatedAt": info.rotated_at.isoformat() if info.rotated_at else None,
    }


def _save_keys(
    mode: Literal["add", "rotate"],
    msn: str,
    client_id: str,
    client_secret: str,
    subscription_key: str,
    verify: bool,
    as_json: bool,
) -> None:
    if not re.fullmatch(r"[0-9]{4,6}", msn):
        raise typer.BadParameter("an MSN is 4-6 digits", param_hint="MSN")

    async def work(services: Services) -> dict[str, Any]:
        saved = await services.keys.save(
            msn,
            client_id=SecretStr(client_id),
            client_secret=SecretStr(client_secret),
            subscription_key=SecretStr(subscription_key),
            mode=mode,
            verify=verify,
            actor="cli",
        )
        return {**_key_json(saved.info), "created": saved.created, "verified": saved.verified}

    result = _run(work)
    if as_json:
        _print_json(result)
    else:
        done = "added" if result["created"] else "rotated"
        checked = "tried at Vipps" if result["verified"] else "not tried at Vipps"
        typer.echo(f"keys for {msn} {done} ({checked}); fingerprint {result['fingerprint']}")


@keys_app.command(
    "add",
    epilog="Example: VIPPS_POS_KEYS_CLIENT_SECRET=... vipps-pos keys add 123456 (prompts for "
    "what is not in the environment)",
)
def keys_add(
    msn: str = _MSN_ARGUMENT,
    client_id: str = _CLIENT_ID,
    client_secret: str = _CLIENT_SECRET,
    subscription_key: str = _SUBSCRIPTION_KEY,
    verify: bool = _VERIFY,
    as_json: bool = JSON_OPTION,
) -> None:
    """Store a sales unit's own keys, after trying them at Vipps. Refused if it has keys."""
    _save_keys("add", msn, client_id, client_secret, subscription_key, verify, as_json)


@keys_app.command("rotate", epilog="Example: vipps-pos keys rotate 123456")
def keys_rotate(
    msn: str = _MSN_ARGUMENT,
    client_id: str = _CLIENT_ID,
    client_secret: str = _CLIENT_SECRET,
    subscription_key: str = _SUBSCRIPTION_KEY,
    verify: bool = _VERIFY,
    as_json: bool = JSON_OPTION,
) -> None:
    """Replace a sales unit's keys with new ones from the portal; the old ones can then be
    revoked there (running replicas pick the new keys up within 30 seconds)."""
    _save_keys("rotate", msn, client_id, client_secret, subscription_key, verify, as_json)


@keys_app.command("list", epilog="Example: vipps-pos keys list --json")
def keys_list(as_json: bool = JSON_OPTION) -> None:
    """The key sets we hold (configured or partner keys, and each sales unit's own) with their
    fingerprints; the keys themselves are never shown."""

    async def work(services: Services) -> list[dict[str, Any]]:
        return [_key_json(info) for info in await services.keys.list()]

    rows = _run(work)
    if as_json:
        _print_json(rows)
    else:
        _table(
            "Vipps API keys",
            ["MSN", "source", "fingerprint", "added", "rotated"],
            [
                [
                    r["msn"] or "every MSN",
                    r["source"],
                    r["fingerprint"],
                    r["createdAt"],
                    r["rotatedAt"],
                ]
                for r in rows
            ],
        )


@keys_app.command("remove", epilog="Example: vipps-pos keys remove 123456")
def keys_remove(msn: str = _MSN_ARGUMENT, as_json: bool = JSON_OPTION) -> None:
    """Forget a sales unit's own keys; refused while its active tills have no other keys."""

    async def work(services: Services) -> None:
        await services.keys.remove(msn, actor="cli")

    _run(work)
    if as_json:
        _print_json({"msn": msn, "removed": True})
    else:
        typer.echo(f"keys for {msn} removed")


# ---- checkouts --------------------------------------------------------------------------------

checkouts_app = typer.Typer(help="Find and repair checkouts.", no_args_is_help=True)


def _checkout_json(checkout: Any) -> dict[str, Any]:
    return CheckoutOut.of(checkout).model_dump(mode="json", by_alias=True)


@checkouts_app.command(
    "list",
    epilog="Example (what is stuck): vipps-pos checkouts list --state PAYMENT_REQUESTED "
    "--state CANCELLING --older-than 5m",
)
def checkouts_list(
    till: str | None = typer.Option(None, "--till", help="Only this till."),
    state: Annotated[
        list[str] | None, typer.Option("--state", help="Only these states (repeatable).")
    ] = None,
    older_than: str | None = typer.Option(
        None, "--older-than", help="Unchanged for at least this long: 90s, 5m, 2h."
    ),
    limit: int = typer.Option(100, min=1, max=10000),
    as_json: bool = JSON_OPTION,
) -> None:
    """List checkouts, newest first."""
    age = parse_duration(older_than) if older_than else None
    known = [s.value for s in CheckoutState]
    unknown = [s for s in state or [] if s.upper() not in known]
    if unknown:
        fail(f"--state: unknown state {', '.join(unknown)}; one of {', '.join(known)}", 2)
    state = [s.upper() for s in state] if state else None

    async def work(services: Services) -> list[dict[str, Any]]:
        rows = await services.checkouts.list(
            till_id=till, states=state or None, older_than=age, limit=limit
        )
        return [_checkout_json(c) for c in rows]

    rows = _run(work)
    if as_json:
        _print_json(rows)
    else:
        _table(
            plural(len(rows), "checkout"),
            ["id", "till", "state", "amount", "captured", "refunded", "reference", "updated"],
            [
                [
                    c["id"],
                    c["tillId"],
                    c["state"],
                    money(c["amount"]["value"], c["amount"]["currency"]),
                    money(c["capturedAmount"], c["amount"]["currency"]),
                    money(c["refundedAmount"], c["amount"]["currency"]),
                    c["reference"],
                    c["updatedAt"],
                ]
                for c in rows
            ],
        )


def _audit_json(entry: Any) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at": entry.at.isoformat(),
        "actor": entry.actor,
        "action": entry.action,
        "amount": entry.amount_value,
        "detail": entry.detail,
    }


@checkouts_app.command("show", epilog="Example: vipps-pos checkouts show 3f0c…")
def checkouts_show(checkout_id: str = typer.Argument(...), as_json: bool = JSON_OPTION) -> None:
    """One checkout with its audit trail: till requests, Vipps events and worker results."""

    async def work(services: Services) -> dict[str, Any]:
        checkout = await services.checkouts.get(None, checkout_id)
        trail = await checkout_audit_trail(services.ctx, checkout_id)
        return {**_checkout_json(checkout), "audit": [_audit_json(e) for e in trail]}

    data = _run(work)
    if as_json:
        _print_json(data)
        return
    trail = data.pop("audit")
    _table(checkout_id, ["field", "value"], checkout_fields(data))
    currency = data["amount"]["currency"]
    _table(
        "audit trail",
        ["#", "at", "actor", "action", "amount", "detail"],
        [
            [
                e["seq"],
                e["at"],
                e["actor"],
                e["action"],
                money(e["amount"], currency),
                audit_detail(e["detail"]),
            ]
            for e in trail
        ],
    )


_MONEY_FIELDS = (
    "originalAmount",
    "authorizedAmount",
    "capturedAmount",
    "refundedAmount",
    "cancelledAmount",
)


def checkout_fields(data: dict[str, Any]) -> list[list[str]]:
    """A checkout as (field, value) rows for people: money as money, the receipt as lines."""
    currency = data["amount"]["currency"]
    rows: list[list[str]] = []
    for key, value in data.items():
        if key == "amount":
            text = money(value["value"], currency)
        elif key in _MONEY_FIELDS:
            text = money(value, currency)
        elif key == "receipt":
            text = receipt_text(value, currency)
        elif key == "warnings":
            text = "; ".join(f"{w['field']}: {w['code']}" for w in value or [])
        else:
            text = _cell(value)
        rows.append([key, text])
    return rows


def receipt_text(receipt: dict[str, Any] | None, currency: str) -> str:
    if not receipt:
        return ""
    lines = [
        f"{line.get('name')} {money(line.get('totalAmount'), currency)}"
        + (" (return)" if line.get("isReturn") else "")
        for line in receipt.get("orderLines") or []
    ]
    number = (receipt.get("bottomLine") or {}).get("receiptNumber")
    return "; ".join(lines) + (f" — receipt {number}" if number else "")


def audit_detail(detail: Any) -> str:
    """An audit entry's detail in words. A state-machine ``IGNORED`` outcome is a repeated or
    late message that changed nothing — normal, not a failure."""
    if not isinstance(detail, dict):
        return _cell(detail)
    outcome = detail.get("outcome")
    if outcome is not None and "from" in detail and "to" in detail:
        if outcome == "IGNORED":
            return f"no change, still {detail['to']} (a repeated or late message)"
        if outcome == "ANOMALY":
            return f"{detail['from']} → {detail['to']}, flagged for an operator"
        if detail["from"] == detail["to"]:
            return f"{detail['to']} (amounts updated)"
        return f"{detail['from']} → {detail['to']}"
    return _cell(detail)


@checkouts_app.command("resync", epilog="Example: vipps-pos checkouts resync 3f0c…")
def checkouts_resync(checkout_id: str = typer.Argument(...), as_json: bool = JSON_OPTION) -> None:
    """Ask Vipps now and repair the checkout's state from its answer."""

    async def work(services: Services) -> dict[str, Any]:
        return _checkout_json(await services.checkouts.resync(checkout_id))

    data = _run(work)
    if as_json:
        _print_json(data)
    else:
        _table(
            "Resynced",
            ["id", "state", "captured", "refunded"],
            [
                [
                    data["id"],
                    data["state"],
                    money(data["capturedAmount"], data["amount"]["currency"]),
                    money(data["refundedAmount"], data["amount"]["currency"]),
                ]
            ],
        )


# ---- report, audit, drift ---------------------------------------------------------------------


def report(
    day: str | None = typer.Option(
        None, "--date", help="Calendar day YYYY-MM-DD (default: today in --tz)."
    ),
    store: str | None = typer.Option(None, "--store", help="Only this store."),
    report_format: str = typer.Option("table", "--format", help="table, csv or json."),
    timezone: str = typer.Option(DEFAULT_TIMEZONE, "--tz", help="Time zone of the day."),
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to a file.")] = None,
    as_json: bool = JSON_OPTION,
) -> None:
    """End-of-day reconciliation: receipts against captures, refunds and cancellations per
    till and store, with flagged mismatches."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"--tz: unknown time zone {timezone!r}; use an IANA name such as Europe/Oslo", 2)
    try:
        when = date.fromisoformat(day) if day else datetime.now(zone).date()
    except ValueError:
        fail(f"--date: {day!r} is not a day; use YYYY-MM-DD", 2)
    chosen = "json" if as_json else report_format
    if chosen not in ("table", "csv", "json"):
        fail("--format: one of table, csv or json", 2)

    async def work(services: Services) -> Any:
        return await EndOfDayReports(services.ctx).end_of_day(
            when, store_id=store, timezone=timezone
        )

    result = _run(work)
    if chosen == "table":
        _table(
            f"End of day {when.isoformat()} ({timezone})",
            [
                "store",
                "till",
                "cur",
                "checkouts",
                "captured",
                "refunded",
                "cancelled",
                "net",
                "flagged",
            ],
            [
                [
                    t.store_id,
                    t.till_id or "(store)",
                    t.currency,
                    t.checkouts,
                    money(t.captured, t.currency),
                    money(t.refunded, t.currency),
                    money(t.cancelled, t.currency),
                    money(t.net, t.currency),
                    t.flagged,
                ]
                for t in [*result.tills, *result.stores]
            ],
        )
        _table(
            plural(len(result.mismatches), "mismatch", "mismatches"),
            ["code", "till", "checkout", "receipt", "detail"],
            [
                [m.code, m.till_id, m.checkout_id, m.receipt_number, m.detail]
                for m in result.mismatches
            ],
        )
        return
    text = result.as_csv() if chosen == "csv" else json.dumps(result.as_json(), indent=2)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)
    else:
        typer.echo(text, nl=chosen == "json")


audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)


@audit_app.command("verify", epilog="Example: vipps-pos audit verify --json")
def audit_verify(as_json: bool = JSON_OPTION) -> None:
    """Recompute every hash chain; exit status 1 and a list of breaks if any entry was edited,
    removed, inserted or reordered."""
    result = _run(lambda services: verify_audit_trail(services.ctx))
    data = {
        "intact": result.intact,
        "entries": result.entries,
        "chains": result.chains,
        "breaks": [asdict(b) for b in result.breaks],
    }
    if as_json:
        _print_json(data)
    elif result.intact:
        typer.echo(
            f"audit trail intact: {plural(result.entries, 'entry', 'entries')} in "
            f"{plural(result.chains, 'chain')}"
        )
    else:
        _table(
            f"AUDIT TRAIL BROKEN: {plural(len(result.breaks), 'problem')}",
            ["chain", "seq", "entry id", "problem"],
            [[b.chain, b.seq, b.entry_id, b.problem] for b in result.breaks],
        )
    if not result.intact:
        raise typer.Exit(1)


def drift(
    msn: str | None = typer.Option(None, help="Only this MSN (default: every MSN in use)."),
    repair: bool = typer.Option(False, "--repair", help="Fix what is ours to fix."),
    include_extra: bool = typer.Option(
        False, "--include-extra", help="With --repair: also delete QRs no till of ours has."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Compare our tills with Vipps's merchant callback QRs: missing, extra, different
    description, deactivated but still live. Exit status 1 while drift remains."""

    async def work(services: Services) -> DriftReport:
        return await DriftService(services.ctx, services.tills).check(
            msn, repair=repair, include_extra=include_extra
        )

    result = _run(work)
    if as_json:
        _print_json(result.as_json())
    elif not result.drift:
        typer.echo(
            f"no drift: {plural(result.checked_tills, 'till')}, "
            f"{plural(result.vipps_qrs, 'QR')} at Vipps"
        )
    else:
        _table(
            plural(len(result.drift), "difference"),
            ["kind", "MSN", "till", "merchant QR id", "ours", "Vipps", "repaired", "error"],
            [
                [d.kind, d.msn, d.till_id, d.merchant_qr_id, d.ours, d.theirs, d.repaired, d.error]
                for d in result.drift
            ],
        )
    for item in result.drift:
        if item.error:
            typer.echo(f"error: till {item.till_id or item.merchant_qr_id}: {item.error}", err=True)
    if not result.clean:
        raise typer.Exit(1)


admin_keys_app = typer.Typer(
    help="Named admin keys with roles (operator, money, monitor).", no_args_is_help=True
)


def _admin_key_json(info: AdminKeyInfo, key: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "keyId": info.id,
        "name": info.name,
        "roles": sorted(r.value for r in info.roles),
        "createdAt": info.created_at.isoformat(),
        "revokedAt": info.revoked_at.isoformat() if info.revoked_at else None,
    }
    if key is not None:
        data["key"] = key
    return data


def _admin_key_rows(keys: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [k["name"], k["keyId"], ",".join(k["roles"]), k["createdAt"], k["revokedAt"]] for k in keys
    ]


_ADMIN_KEY_COLUMNS = ["name", "key id", "roles", "created", "revoked"]


@admin_keys_app.command(
    "create",
    epilog="Example: vipps-pos admin-keys create ops-anna --role operator\n\n"
    "Roles: operator (tills, QR, stores, webhooks, members, reports, drift, audit, re-sync), "
    "money (captures and refunds on any till), monitor (/metrics).",
)
def admin_keys_create(
    name: str = typer.Argument(..., help="Who or what holds the key (unique among active)."),
    role: Annotated[
        list[str], typer.Option("--role", "-r", help="operator, money or monitor; repeatable.")
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    as_json: bool = JSON_OPTION,
) -> None:
    """Make a named admin key; the key is printed once (only its hash is stored)."""
    new = _run(lambda services: services.admin_keys.create(name, role))
    data = _admin_key_json(new.info, new.key)
    if as_json:
        _print_json(data)
    else:
        _table(
            "Admin key created (the key is shown once)", _ADMIN_KEY_COLUMNS, _admin_key_rows([data])
        )
        typer.echo(new.key)


@admin_keys_app.command("list", epilog="Example: vipps-pos admin-keys list --all")
def admin_keys_list(
    include_revoked: bool = typer.Option(False, "--all", help="Also revoked keys."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Named admin keys (never the keys themselves)."""
    keys = _run(lambda services: services.admin_keys.list(include_revoked=include_revoked))
    data = [_admin_key_json(k) for k in keys]
    if as_json:
        _print_json(data)
    else:
        _table("Admin keys", _ADMIN_KEY_COLUMNS, _admin_key_rows(data))


@admin_keys_app.command("revoke", epilog="Example: vipps-pos admin-keys revoke ops-anna")
def admin_keys_revoke(
    name: str = typer.Argument(..., help="The key's name or key id."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Revoke a named admin key: every replica refuses it at once (on Postgres), and streams
    and long-polls opened with it end."""
    info = _run(lambda services: services.admin_keys.revoke(name))
    data = _admin_key_json(info)
    if as_json:
        _print_json(data)
    else:
        _table("Admin key revoked", _ADMIN_KEY_COLUMNS, _admin_key_rows([data]))


encryption_keys_app = typer.Typer(
    help="The encryption keys of secrets stored here.", no_args_is_help=True
)


@encryption_keys_app.command(
    "rotate",
    epilog='Example: VIPPS_POS_SECURITY__ENCRYPTION_KEY="$NEW,$OLD" '
    "vipps-pos encryption-keys rotate",
)
def encryption_keys_rotate(as_json: bool = JSON_OPTION) -> None:
    """Move every stored secret and member lookup hash to the first configured encryption key
    (merging members registered twice across an earlier rotation). Run after putting the new
    key first; drop the old key once this exits 0. Exit status 1 if some value opens with no
    configured key."""
    report = _run(lambda services: KeyRotation(services.ctx).run())
    data = {
        "reencrypted": report.reencrypted,
        "unreadable": report.unreadable,
        "membersRehashed": report.members_rehashed,
        "membersMerged": report.members_merged,
        "clean": report.clean,
    }
    if as_json:
        _print_json(data)
    else:
        _table(
            "Moved to the first encryption key",
            ["what", "re-encrypted", "unreadable"],
            [
                [label, report.reencrypted.get(label, ""), report.unreadable.get(label, 0)]
                for label in sorted({*report.reencrypted, *report.unreadable})
            ],
        )
        typer.echo(f"members re-hashed: {report.members_rehashed}, merged: {report.members_merged}")
    if not report.clean:
        raise typer.Exit(1)


def register_operators(cli: typer.Typer) -> None:
    cli.add_typer(tills_app, name="tills")
    cli.add_typer(qr_app, name="qr")
    cli.add_typer(webhooks_app, name="webhooks")
    cli.add_typer(keys_app, name="keys")
    cli.add_typer(checkouts_app, name="checkouts")
    cli.add_typer(audit_app, name="audit")
    cli.add_typer(encryption_keys_app, name="encryption-keys")
    cli.add_typer(admin_keys_app, name="admin-keys")
    cli.command(
        "report",
        epilog="Example: vipps-pos report --date 2026-11-27 --store oslo-1 --format csv -o eod.csv",
    )(report)
    cli.command("drift", epilog="Example: vipps-pos drift --repair")(drift)
