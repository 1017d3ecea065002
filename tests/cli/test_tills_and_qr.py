"""`tills …` and `qr sheet` against the live service, the simulator and Postgres."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
from pypdf import PdfReader

from app.cli import cli
from app.service.qr_sheet import _runs
from tests.cli.conftest import LiveStack

pytestmark = pytest.mark.e2e


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found.extend(_commands(command, (*prefix, name)))
        else:
            found.append((*prefix, name))
    return found


def test_every_command_has_help_with_an_example_and_operator_commands_offer_json(
    live_stack: LiveStack,
) -> None:
    commands = _commands(typer.main.get_command(cli))
    assert ("tills", "import") in commands
    assert ("webhooks", "rotate") in commands
    for path in commands:
        text = live_stack.run(*path, "--help").stdout
        assert "Example" in text, path
        if path[0] not in ("serve", "migrate", "demo"):
            assert "--json" in text, path


def test_tills_add_list_show_update_deactivate(stack: LiveStack) -> None:
    added = stack.run_json("tills", "add", "kasse-1", "--store", "oslo-1", "--location", "Kasse 1")
    assert added["apiKey"].startswith("vpk_")
    assert added["qrStatus"] == "SYNCED"
    # The till's key works on the service at once.
    active = stack.api.get(
        "/api/v1/tills/kasse-1/checkouts/active", headers=stack.till_headers(added)
    )
    assert active.status_code == 200, active.text

    listed = stack.run_json("tills", "list", "--store", "oslo-1")
    assert [t["tillId"] for t in listed] == ["kasse-1"]
    assert "apiKey" not in listed[0]

    shown = stack.run_json("tills", "show", "kasse-1")
    assert shown["qrContent"]
    assert shown["merchantQrId"] == added["merchantQrId"]

    updated = stack.run_json("tills", "update", "kasse-1", "--location", "Kasse 1 ved døra")
    assert updated["locationDescription"] == "Kasse 1 ved døra"
    at_vipps = stack.vipps("GET", f"/qr/v1/merchant-callback/{added['merchantQrId']}").json()
    assert at_vipps["locationDescription"] == "Kasse 1 ved døra"

    deactivated = stack.run_json("tills", "deactivate", "kasse-1")
    assert deactivated["status"] == "INACTIVE"
    scan = stack.sim.post(f"/_sim/qr/{added['merchantQrId']}/scan", json={})
    assert scan.status_code == 404  # the QR is gone at Vipps: the customer sees "not found"

    table = stack.run("tills", "list").stdout
    assert "kasse-1" in table
    assert "INACTIVE" in table

    missing = stack.run("tills", "show", "nope", expect=1)
    assert "till_not_found" in missing.stderr


def test_tills_import_registers_new_tills_and_skips_existing_ones(
    stack: LiveStack, tmp_path: Path
) -> None:
    stack.run_json("tills", "add", "kasse-1", "--store", "oslo-1", "--location", "Kasse 1")
    sheet = tmp_path / "tills.csv"
    sheet.write_text(
        "tillId,storeId,locationDescription,msn\n"
        "kasse-1,oslo-1,Kasse 1,\n"
        "kasse-2,oslo-1,Kasse 2,123456\n"
        "kasse-3,bergen-1,Kasse 3,\n",
        encoding="utf-8",
    )
    results = stack.run_json("tills", "import", str(sheet))
    assert [(r["tillId"], r["result"]) for r in results] == [
        ("kasse-1", "exists"),
        ("kasse-2", "registered"),
        ("kasse-3", "registered"),
    ]
    assert all(r["apiKey"].startswith("vpk_") for r in results[1:])
    assert {t["tillId"] for t in stack.run_json("tills", "list")} == {
        "kasse-1",
        "kasse-2",
        "kasse-3",
    }
    # Without --json the progress bar and the table go out; the keys are shown once.
    again = stack.run("tills", "import", str(sheet))
    assert "0 of 3 registered" in again.stdout

    bad = tmp_path / "bad.csv"
    bad.write_text("till,store\nx,y\n", encoding="utf-8")
    assert "lacks columns" in stack.run("tills", "import", str(bad), expect=2).stderr


def test_qr_sheet_renders_each_tills_vipps_qr_content_with_labels(
    stack: LiveStack, tmp_path: Path
) -> None:
    for n in (1, 2):
        stack.run_json(
            "tills", "add", f"kasse-{n}", "--store", "oslo-1", "--location", f"Kasse {n}"
        )
    stack.run_json("tills", "add", "other", "--store", "bergen-1", "--location", "Bergen")
    contents = [stack.run_json("tills", "show", f"kasse-{n}")["qrContent"] for n in (1, 2)]

    svg_path = tmp_path / "sheet.svg"
    summary = stack.run_json(
        "qr", "sheet", "--store", "oslo-1", "--format", "svg", "-o", str(svg_path)
    )
    assert summary["tills"] == 2
    svg = svg_path.read_text(encoding="utf-8")
    assert "Kasse 1" in svg
    assert "Kasse 2" in svg
    assert "Bergen" not in svg
    assert "till kasse-1" in svg
    # Each drawn code is exactly the QR of the content Vipps gave that till.
    paths = re.findall(r'<path d="([^"]+)"', svg)
    assert len(paths) == 2
    for content, path in zip(contents, paths, strict=True):
        assert path.count("M") == len(_runs(content)[1])

    pdf_path = tmp_path / "sheet.pdf"
    stack.run("qr", "sheet", "--store", "oslo-1", "--format", "pdf", "-o", str(pdf_path))
    reader = PdfReader(pdf_path)
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    for expected in ("Kasse 1", "Kasse 2", "till kasse-1", "Scan with Vipps / MobilePay"):
        assert expected in text, text
    assert "Bergen" not in text

    assert (
        "no active tills"
        in stack.run(
            "qr", "sheet", "--store", "nowhere", "-o", str(tmp_path / "x.pdf"), expect=1
        ).stderr
    )
