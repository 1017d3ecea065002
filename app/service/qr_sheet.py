"""Print-ready sheets of a store's till QR codes: A4, three across and four down, each in a cell
with cut marks, the call to action "Scan with Vipps / MobilePay" and its labels.

The codes are drawn as vector shapes from Vipps's ``qrContent`` (segno only encodes it; the app
accepts no QR content but Vipps's own), so they print sharp at any size. The PDF is made with
fpdf2 and embeds (a subset of) DejaVu Sans, so every label prints as typed — Nordic, Sámi or
any other European letters (app/fonts/LICENSE). SVG is one tall sheet with the same grid, for
printing from a browser or editing.

:func:`store_labels` gathers the labels of a store's active tills; a till whose QR content
Vipps cannot give now is reported, and the sheet is made of the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import segno
from fpdf import FPDF

from app.service.errors import ServiceError
from app.service.tills import TillService
from app.vipps.errors import VippsError

FONTS = Path(__file__).resolve().parents[1] / "fonts"
PAGE_W, PAGE_H = 210.0, 297.0  # A4 in mm
COLUMNS, ROWS = 3, 4
MARGIN = 10.0
HEADING = 12.0  # mm for the page heading
CELL_W = (PAGE_W - 2 * MARGIN) / COLUMNS
CELL_H = (PAGE_H - 2 * MARGIN - HEADING) / ROWS
QR_SIZE = 42.0  # mm, quiet zone included: well above the 2 cm Vipps suggests for till QRs
QUIET = 4  # modules of quiet zone (the QR standard's minimum)
CUT_MARK = 4.0  # mm of each cut mark, drawn outside the cell's corner
CALL_TO_ACTION = "Scan with Vipps / MobilePay"


@dataclass(frozen=True)
class QrLabel:
    qr_content: str
    title: str  # the till's location description, as the customer sees it in the app
    subtitle: str  # store
    caption: str  # till id, for whoever sticks it on the right till


@dataclass(frozen=True)
class SheetLabels:
    store_name: str
    labels: list[QrLabel]
    failures: list[tuple[str, str]]  # (till id, why its QR could not be had)


async def store_labels(tills: TillService, store_id: str) -> SheetLabels:
    """Labels of the store's active tills, and (till, reason) for each whose QR Vipps cannot
    give us now: one till never stops the sheet of the others."""
    try:
        store_name = (await tills.get_store(store_id)).name
    except ServiceError:
        store_name = store_id
    subtitle = store_name if store_name == store_id else f"{store_name} ({store_id})"
    labels: list[QrLabel] = []
    failures: list[tuple[str, str]] = []
    for till in await tills.list(store_id=store_id, status="ACTIVE"):
        if not till.qr_content:
            try:
                await tills.qr_image(till.id, "svg")  # fetches and keeps the content
            except (ServiceError, VippsError) as exc:
                reason = exc.detail if isinstance(exc, ServiceError) else str(exc)
                failures.append((till.id, f"no QR content from Vipps ({reason})"))
                continue
            till = await tills.get(till.id)
        if not till.qr_content:
            failures.append((till.id, "Vipps has no QR content for this till"))
            continue
        labels.append(
            QrLabel(
                qr_content=till.qr_content,
                title=till.location_description,
                subtitle=subtitle,
                caption=f"till {till.id} · MSN {till.msn}",
            )
        )
    return SheetLabels(store_name, labels, failures)


def _runs(content: str) -> tuple[int, list[tuple[int, int, int]]]:
    """(size in modules incl. quiet zone, dark runs as (x, y, length)) — rows merged into runs
    so a code is a few hundred shapes, not thousands."""
    code = segno.make(content, error="m")
    rows = [list(row) for row in code.matrix_iter(scale=1, border=QUIET)]
    runs: list[tuple[int, int, int]] = []
    for y, row in enumerate(rows):
        x = 0
        while x < len(row):
            if row[x]:
                start = x
                while x < len(row) and row[x]:
                    x += 1
                runs.append((start, y, x - start))
            else:
                x += 1
    return len(rows), runs


def _cells(labels: Sequence[QrLabel]) -> Iterator[tuple[int, float, float, QrLabel]]:
    """(page, x, y of the cell's top-left in mm from the page's top-left, label)."""
    per_page = COLUMNS * ROWS
    for index, label in enumerate(labels):
        page, slot = divmod(index, per_page)
        row, column = divmod(slot, COLUMNS)
        yield page, MARGIN + column * CELL_W, MARGIN + HEADING + row * CELL_H, label


def _cut_marks(x: float, y: float) -> Iterator[tuple[float, float, float, float]]:
    """Short lines at each corner of the cell at (x, y), pointing away from it."""
    for cx, dx in ((x, -1), (x + CELL_W, 1)):
        for cy, dy in ((y, -1), (y + CELL_H, 1)):
            yield cx, cy, cx + dx * CUT_MARK, cy  # horizontal
            yield cx, cy, cx, cy + dy * CUT_MARK  # vertical


# ---- PDF ----------------------------------------------------------------------------------------


def _fitted(pdf: FPDF, text: str, width: float, style: str = "", size: float = 9) -> str:
    """Set the font for ``text``: ``size`` points, smaller (down to 6) if it is wider than
    ``width`` mm, and only then shortened with an ellipsis."""
    while True:
        pdf.set_font("DejaVu", style, size)
        if pdf.get_string_width(text) <= width or size <= 6:
            break
        size -= 0.5
    if pdf.get_string_width(text) <= width:
        return text
    while text and pdf.get_string_width(text + "…") > width:
        text = text[:-1]
    return text + "…"


def render_pdf(labels: Sequence[QrLabel], *, heading: str) -> bytes:
    """A4 pages, twelve codes each; an empty list gives one page with just the heading."""
    pdf = FPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_margins(MARGIN, MARGIN)
    pdf.set_title(f"{heading} — Vipps MobilePay QR codes")
    pdf.set_creator("vipps-pos")
    pdf.add_font("DejaVu", "", str(FONTS / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(FONTS / "DejaVuSans-Bold.ttf"))
    pages = max(1, -(-len(labels) // (COLUMNS * ROWS)))
    for _ in range(pages):
        pdf.add_page()
        pdf.set_text_color(0)
        pdf.text(MARGIN, MARGIN + 5, _fitted(pdf, heading, PAGE_W - 2 * MARGIN - 60, "B", 14))
        pdf.set_font("DejaVu", "", 9)
        pdf.text(PAGE_W - MARGIN - 55, MARGIN + 5, "Vipps MobilePay QR codes")
    for page, x, y, label in _cells(labels):
        pdf.page = page + 1
        pdf.set_draw_color(120)
        pdf.set_line_width(0.2)
        for x1, y1, x2, y2 in _cut_marks(x, y):
            pdf.line(x1, y1, x2, y2)
        size, runs = _runs(label.qr_content)
        module = QR_SIZE / size
        left = x + (CELL_W - QR_SIZE) / 2
        top = y + 4
        pdf.set_fill_color(0)
        for rx, ry, length in runs:
            pdf.rect(left + rx * module, top + ry * module, length * module, module, style="F")
        text_left, text_width = x + 4, CELL_W - 8
        pdf.set_text_color(0)
        for text, style, points, drop in (
            (CALL_TO_ACTION, "B", 10.0, 5.0),
            (label.title, "B", 11.0, 11.0),
            (label.subtitle, "", 8.5, 15.5),
            (label.caption, "", 7.0, 19.5),
        ):
            if text is label.caption:
                pdf.set_text_color(90)
            pdf.text(text_left, top + QR_SIZE + drop, _fitted(pdf, text, text_width, style, points))
    pdf.page = pages
    return bytes(pdf.output())


# ---- SVG ----------------------------------------------------------------------------------------


def render_svg(labels: Sequence[QrLabel], *, heading: str) -> bytes:
    """One A4-wide sheet, as tall as the pages it needs, in millimetres."""
    pages = max(1, -(-len(labels) // (COLUMNS * ROWS)))
    height = PAGE_H * pages
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{PAGE_W}mm" height="{height}mm"'
        f' viewBox="0 0 {PAGE_W} {height}"'
        ' font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
        f"<title>{escape(heading)} — Vipps MobilePay QR codes</title>",
        f'<rect width="{PAGE_W}" height="{height}" fill="#fff"/>',
    ]
    for page in range(pages):
        parts.append(
            f'<text x="{MARGIN}" y="{page * PAGE_H + MARGIN + 5}" font-size="5"'
            f' font-weight="bold">{escape(heading)}</text>'
        )
    for page, x, y, label in _cells(labels):
        top_of_cell = page * PAGE_H + y
        marks = "".join(
            f"M{x1:.2f} {y1 + page * PAGE_H:.2f}L{x2:.2f} {y2 + page * PAGE_H:.2f}"
            for x1, y1, x2, y2 in _cut_marks(x, y)
        )
        parts.append(f'<path class="cut-marks" d="{marks}" stroke="#777" stroke-width="0.2"/>')
        size, runs = _runs(label.qr_content)
        module = QR_SIZE / size
        left = x + (CELL_W - QR_SIZE) / 2
        top = top_of_cell + 4
        path = "".join(
            f"M{left + rx * module:.3f} {top + ry * module:.3f}h{length * module:.3f}"
            f"v{module:.3f}h{-length * module:.3f}z"
            for rx, ry, length in runs
        )
        parts.append(f'<path d="{path}" fill="#000"/>')
        text_left = x + 4
        for text, size_mm, weight, drop, colour in (
            (CALL_TO_ACTION, 3.5, "bold", 5.0, "#000"),
            (label.title, 3.9, "bold", 11.0, "#000"),
            (label.subtitle, 3.0, "normal", 15.5, "#000"),
            (label.caption, 2.5, "normal", 19.5, "#444"),
        ):
            parts.append(
                f'<text x="{text_left:.2f}" y="{top + QR_SIZE + drop:.2f}" font-size="{size_mm}"'
                f' font-weight="{weight}" fill="{colour}">{escape(text)}</text>'
            )
    parts.append("</svg>")
    return ("\n".join(parts) + "\n").encode()
