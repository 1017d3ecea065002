"""The operator CLI never leaves a mess: it checks before it writes, never loses an API key,
names the till that failed and still does the rest, and fails with one line, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from app.cli import cli
from app.cli.operators import audit_detail, money, plural
from tests.cli.conftest import LiveStack

pytestmark = pytest.mark.e2e


def _one_line(result: Result) -> str:
    """The error: one line on stderr, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


def _fault(stack: LiveStack, operation: str, times: int = 50, status: int = 500) -> None:
    rule = {"kind": "error", "status": status, "operation": operation, "times": times}
    assert stack.sim.post("/_sim/faults", json=rule).status_code in (200, 201)


def _clear_faults(stack: LiveStack) -> None:
    assert stack.sim.delete("/_sim/faults").status_code in (200, 204)


def test_tills_add_checks_before_writing(stack: LiveStack) -> None:
    long = stack.run(
        "tills", "add", "kasse-1", "--store", "oslo-1", "--location", "K" * 48, expect=2
    )
    assert "--location" in _one_line(long)
    assert "36" in _one_line(long)
    bad_id = stack.run("tills", "add", "kasse 1", "--store", "oslo-1", "--location", "K", expect=2)
    assert "--till-id" in _one_line(bad_id)

    wrong = CliRunner().invoke(
        cli,
        ["tills", "add", "kasse-1", "--store", "oslo-1", "--location", "Kasse 1"],
        env={**stack.env, "VIPPS_POS_VIPPS__CLIENT_SECRET": "not-the-secret"},
    )
    assert wrong.exit_code == 1
    assert "credentials" in _one_line(wrong)
    assert stack.run_json("tills", "list") == []  # nothing was written


def test_a_failing_qr_keeps_the_till_and_its_key_and_sync_qr_finishes(stack: LiveStack) -> None:
    _fault(stack, "PutMerchantCallbackQr")
    result = stack.run(
        "tills", "add", "kasse-1", "--store", "oslo-1", "--location", "Kasse 1", "--json", expect=1
    )
    saved = json.loads(result.stdout)
    assert saved["apiKey"].startswith("vpk_")  # shown although the QR failed
    assert saved["qrStatus"] == "FAILED"
    assert "tills sync-qr kasse-1" in _one_line(result)
    # The key works, and the till is what the CLI says.
    active = stack.api.get(
        "/api/v1/tills/kasse-1/checkouts/active", headers=stack.till_headers(saved)
    )
    assert active.status_code == 200, active.text

    still = stack.run("tills", "sync-qr", "kasse-1", expect=1)
    assert "kasse-1" in _one_line(still)
    _clear_faults(stack)
    synced = stack.run_json("tills", "sync-qr", "kasse-1")
    assert synced["qrStatus"] == "SYNCED"
    assert stack.run_json("tills", "show", "kasse-1")["qrContent"]


def test_rotate_key_prints_the_new_key_once_and_the_old_one_stops(stack: LiveStack) -> None:
    old = stack.run_json("tills", "add", "kasse-1", "--store", "oslo-1", "--location", "Kasse 1")
    new = stack.run_json("tills", "rotate-key", "kasse-1")
    assert new["apiKey"].startswith("vpk_")
    assert new["apiKey"] != old["apiKey"]
    url = "/api/v1/tills/kasse-1/checkouts/active"
    assert stack.api.get(url, headers=stack.till_headers(old)).status_code == 401
    assert stack.api.get(url, headers=stack.till_headers(new)).status_code == 200
    table = stack.run("tills", "rotate-key", "kasse-1").stdout
    assert "vpk_" in table
    assert "old one no longer works" in table


def test_qr_sheet_names_the_failing_till_and_prints_the_rest(
    stack: LiveStack, tmp_path: Path
) -> None:
    stack.run_json("tills", "add", "kasse-1", "--store", "oslo-1", "--location", "Kasse 1")
    _fault(stack, "PutMerchantCallbackQr")
    stack.run("tills", "add", "kasse-2", "--store", "oslo-1", "--location", "Kasse 2", expect=1)
    _fault(stack, "GetMerchantCallbackById")
    out = tmp_path / "sheet.pdf"
    result = stack.run("qr", "sheet", "--store", "oslo-1", "-o", str(out), "--json", expect=1)
    summary = json.loads(result.stdout)
    assert summary["tills"] == 1
    assert [f["tillId"] for f in summary["failed"]] == ["kasse-2"]
    assert _one_line(result).startswith("error: till kasse-2:")
    assert out.read_bytes().startswith(b"%PDF")


def test_drift_repair_names_the_till_it_could_not_repair(stack: LiveStack) -> None:
    one = stack.run_json("tills", "add", "kasse-1", "--store", "s1", "--location", "Kasse 1")
    two = stack.run_json("tills", "add", "kasse-2", "--store", "s1", "--location", "Kasse 2")
    qr = "/qr/v1/merchant-callback/"
    for till in (one, two):
        assert stack.vipps("DELETE", qr + till["merchantQrId"]).status_code in (200, 204)
    # Vipps refuses the next PUT (kasse-1 comes first) and then accepts again.
    _fault(stack, "PutMerchantCallbackQr", times=4)
    result = stack.run("drift", "--repair", "--json", expect=1)
    report = json.loads(result.stdout)
    by_till = {d["tillId"]: d for d in report["drift"]}
    assert by_till["kasse-1"]["repaired"] is False
    assert by_till["kasse-1"]["error"]
    assert by_till["kasse-2"]["repaired"] is True
    assert _one_line(result).startswith("error: till kasse-1:")


def test_one_line_errors_for_what_operators_mistype(stack: LiveStack, tmp_path: Path) -> None:
    assert "Europe/Oslo" in _one_line(stack.run("report", "--tz", "Oslo", expect=2))
    assert "2026-13-01" in _one_line(stack.run("report", "--date", "2026-13-01", expect=2))
    state = _one_line(stack.run("checkouts", "list", "--state", "FOO", expect=2))
    assert "FOO" in state
    assert "PAYMENT_REQUESTED" in state
    lowercase = stack.run_json("checkouts", "list", "--state", "captured")
    assert lowercase == []

    missing = tmp_path / "elsewhere" / "vipps-pos.db"
    outside = CliRunner().invoke(
        cli,
        ["tills", "list"],
        env={**stack.env, "VIPPS_POS_DATABASE__URL": f"sqlite+aiosqlite:///{missing}"},
    )
    assert outside.exit_code == 2
    line = _one_line(outside)
    assert str(missing) in line
    assert "vipps-pos migrate" in line
    assert not missing.parent.exists()  # nothing created where it was run


def test_money_plurals_and_no_python_reprs(stack: LiveStack) -> None:
    stack.run_json("webhooks", "ensure")
    till = stack.run_json("tills", "add", "kasse-1", "--store", "s1", "--location", "Kasse 1")
    sale = stack.sale(
        till,
        12900,
        receipt={
            "orderLines": [
                {
                    "name": "Brunost",
                    "id": "4002",
                    "totalAmount": 12900,
                    "totalAmountExcludingTax": 11518,
                    "totalTaxAmount": 1382,
                    "taxRate": 1200,
                }
            ],
            "bottomLine": {"currency": "NOK", "receiptNumber": "R-77"},
        },
    )
    shown = stack.run("checkouts", "show", sale["id"]).stdout
    assert "129.00 NOK" in shown
    assert "Brunost 129.00 NOK" in shown
    assert "12900" not in shown
    for repr_sign in ("{'", "['", "None", "True", "False"):
        assert repr_sign not in shown, repr_sign
    listed = stack.run("checkouts", "list").stdout
    assert "1 checkout" in listed
    assert "1 checkouts" not in listed
    assert "129.00 NOK" in listed
    assert "1 till" in stack.run("tills", "list").stdout


def test_audit_lines_read_as_what_happened() -> None:
    ignored: dict[str, Any] = {"from": "CAPTURED", "to": "CAPTURED", "outcome": "IGNORED"}
    assert audit_detail(ignored) == "no change, still CAPTURED (a repeated or late message)"
    applied = {"from": "PAYMENT_REQUESTED", "to": "AUTHORIZED", "outcome": "APPLIED"}
    assert audit_detail(applied) == "PAYMENT_REQUESTED → AUTHORIZED"
    assert money(12900, "NOK") == "129.00 NOK"
    assert money(-5, "EUR") == "-0.05 EUR"
    assert money(100, "DKK") == "1.00 DKK"
    assert plural(1, "till") == "1 till"
    assert plural(2, "entry", "entries") == "2 entries"
