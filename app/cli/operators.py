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
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from app.api.schemas import CheckoutOut, TillOut, WebhookRegistrationOut
from app.cli.core import _settings
from app.cli.qr_sheet import QrLabel, render_pdf, render_svg
from app.observability.logging import configure_logging
from app.service import Services
from app.service.admin_keys import AdminKeyInfo
from app.service.bootstrap import open_services
from app.service.drift import DriftReport, DriftService
from app.service.errors import ServiceError, TillExists
from app.service.key_rotation import KeyRotation
from app.service.reports import (
    DEFAULT_TIMEZONE,
    EndOfDayReports,
    checkout_audit_trail,
    verify_audit_trail,
)
from app.service.webhooks import EnsureReport
from app.vipps.errors import VippsError

T = TypeVar("T")
JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document (for scripts).")


def _console() -> Console:
    return Console(soft_wrap=False, width=200 if not sys.stdout.isatty() else None)


def _run(work: Callable[[Services], Awaitable[T]]) -> T:
    """Run ``work`` on freshly opened services; service and Vipps errors exit with status 1."""
    settings = _settings()
    configure_logging("WARNING", json_logs=False, stream=sys.stderr)

    async def main() -> T:
        async with open_services(settings) as services:
            return await work(services)

    try:
        return asyncio.run(main())
    except ServiceError as exc:
        typer.echo(f"error: {exc.code}: {exc.detail}", err=True)
        raise typer.Exit(1) from exc
    except VippsError as exc:
        typer.echo(f"error: Vipps: {exc}", err=True)
        raise typer.Exit(1) from exc


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    _console().print(table)


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
    """Register a till and create its QR at Vipps. Prints the till's API key once."""

    async def work(services: Services) -> dict[str, Any]:
        new = await services.tills.register(
            till_id, store_id=store, location_description=location, msn=msn
        )
        return _till_json(new.till, new.api_key)

    data = _run(work)
    if as_json:
        _print_json(data)
    else:
        _table(
            "Till registered — keep the API key, it is not shown again",
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
        _table(f"{len(data)} tills", _TILL_COLUMNS, _till_rows(data))


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
                    results.append({"result": "registered", **_till_json(new.till, new.api_key)})
                except TillExists:
                    results.append({"result": "exists", "tillId": till_id})
                except (ServiceError, ValueError) as exc:
                    results.append({"result": "failed", "tillId": till_id, "error": str(exc)})
                progress.advance(task)
        return results

    results = _run(work)
    if as_json:
        _print_json(results)
    else:
        _table(
            f"{sum(r['result'] == 'registered' for r in results)} of {len(results)} registered",
            ["till", "result", "QR", "API key / error"],
            [
                [r["tillId"], r["result"], r.get("qrStatus"), r.get("apiKey") or r.get("error")]
                for r in results
            ],
        )
    if any(r["result"] == "failed" for r in results):
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
    till id, rendered from the QR content Vipps gave each till."""
    if sheet_format not in ("pdf", "svg"):
        raise typer.BadParameter("--format must be pdf or svg")

    async def work(services: Services) -> tuple[str, list[QrLabel]]:
        try:
            store_name = (await services.tills.get_store(store)).name
        except ServiceError:
            store_name = store
        labels: list[QrLabel] = []
        for till in await services.tills.list(store_id=store, status="ACTIVE"):
            if not till.qr_content:
                await services.tills.qr_image(till.id, "svg")  # fetches and keeps the content
                till = await services.tills.get(till.id)
            assert till.qr_content is not None
            labels.append(
                QrLabel(
                    qr_content=till.qr_content,
                    title=till.location_description,
                    subtitle=store_name if store_name == store else f"{store_name} ({store})",
                    caption=f"till {till.id} · MSN {till.msn}",
                )
            )
        return store_name, labels

    store_name, labels = _run(work)
    if not labels:
        typer.echo(f"error: store {store} has no active tills", err=True)
        raise typer.Exit(1)
    heading = f"{store_name} — Vipps MobilePay QR codes"
    render = render_pdf if sheet_format == "pdf" else render_svg
    output.write_bytes(render(labels, heading=heading))
    summary = {"store": store, "format": sheet_format, "file": str(output), "tills": len(labels)}
    if as_json:
        _print_json(summary)
    else:
        typer.echo(f"wrote {len(labels)} QR codes to {output}")


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
            f"{len(rows)} checkouts",
            ["id", "till", "state", "amount", "captured", "refunded", "reference", "updated"],
            [
                [
                    c["id"],
                    c["tillId"],
                    c["state"],
                    c["amount"]["value"],
                    c["capturedAmount"],
                    c["refundedAmount"],
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
    _table(checkout_id, ["field", "value"], [[k, v] for k, v in data.items()])
    _table(
        "audit trail",
        ["#", "at", "actor", "action", "amount", "detail"],
        [[e["seq"], e["at"], e["actor"], e["action"], e["amount"], e["detail"]] for e in trail],
    )


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
            [[data["id"], data["state"], data["capturedAmount"], data["refundedAmount"]]],
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
        when = date.fromisoformat(day) if day else datetime.now(ZoneInfo(timezone)).date()
    except ValueError as exc:
        raise typer.BadParameter("--date must be YYYY-MM-DD") from exc
    chosen = "json" if as_json else report_format
    if chosen not in ("table", "csv", "json"):
        raise typer.BadParameter("--format must be table, csv or json")

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
                    t.captured,
                    t.refunded,
                    t.cancelled,
                    t.net,
                    t.flagged,
                ]
                for t in [*result.tills, *result.stores]
            ],
        )
        _table(
            f"{len(result.mismatches)} mismatches",
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
        typer.echo(f"audit trail intact: {result.entries} entries in {result.chains} chains")
    else:
        _table(
            f"AUDIT TRAIL BROKEN: {len(result.breaks)} problems",
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
        typer.echo(f"no drift: {result.checked_tills} tills, {result.vipps_qrs} QRs at Vipps")
    else:
        _table(
            f"{len(result.drift)} differences",
            ["kind", "MSN", "till", "merchant QR id", "ours", "Vipps", "repaired", "error"],
            [
                [d.kind, d.msn, d.till_id, d.merchant_qr_id, d.ours, d.theirs, d.repaired, d.error]
                for d in result.drift
            ],
        )
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


keys_app = typer.Typer(help="Encryption keys.", no_args_is_help=True)


@keys_app.command(
    "rotate",
    epilog='Example: VIPPS_POS_SECURITY__ENCRYPTION_KEY="$NEW,$OLD" vipps-pos keys rotate',
)
def keys_rotate(as_json: bool = JSON_OPTION) -> None:
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
    cli.add_typer(checkouts_app, name="checkouts")
    cli.add_typer(audit_app, name="audit")
    cli.add_typer(keys_app, name="keys")
    cli.add_typer(admin_keys_app, name="admin-keys")
    cli.command(
        "report",
        epilog="Example: vipps-pos report --date 2026-11-27 --store oslo-1 --format csv -o eod.csv",
    )(report)
    cli.command("drift", epilog="Example: vipps-pos drift --repair")(drift)
