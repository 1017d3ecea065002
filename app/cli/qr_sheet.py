"""Print-ready sheets of till QR codes: A4, three across and four down, each with its labels.

The codes are drawn as vector shapes from Vipps's ``qrContent`` (segno only encodes it; the app
accepts no QR content but Vipps's own), so they print sharp at any size. PDF is written directly
(one font, filled rectangles and text — nothing that needs a PDF library); SVG is one tall sheet
with the same grid, for printing from a browser or editing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html import escape

import segno

MM = 72 / 25.4  # PDF points per millimetre
PAGE_W, PAGE_H = 210.0, 297.0  # A4 in mm
COLUMNS, ROWS = 3, 4
MARGIN = 12.0
CELL_W = (PAGE_W - 2 * MARGIN) / COLUMNS
CELL_H = (PAGE_H - 2 * MARGIN - 10) / ROWS  # 10 mm for the page heading
QR_SIZE = 46.0  # mm, quiet zone included: well above the 2 cm Vipps suggests for till QRs
QUIET = 4  # modules of quiet zone (the QR standard's minimum)


@dataclass(frozen=True)
class QrLabel:
    qr_content: str
    title: str  # the till's location description, as the customer sees it in the app
    subtitle: str  # store
    caption: str  # till id, for whoever sticks it on the right till


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
        yield page, MARGIN + column * CELL_W, MARGIN + 10 + row * CELL_H, label


# ---- PDF ----------------------------------------------------------------------------------------


def _pdf_text(text: str) -> str:
    raw = text.encode("cp1252", errors="replace").decode("latin-1")
    return raw.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_pdf(labels: Sequence[QrLabel], *, heading: str) -> bytes:
    """A4 pages, twelve codes each; an empty list gives one page with just the heading."""
    pages: list[list[str]] = [[]]
    for page, x, y, label in _cells(labels):
        while len(pages) <= page:
            pages.append([])
        ops = pages[page]
        size, runs = _runs(label.qr_content)
        module = QR_SIZE / size
        left = x + (CELL_W - QR_SIZE) / 2
        ops.append("0 g")
        for rx, ry, length in runs:
            px = (left + rx * module) * MM
            py = (PAGE_H - (y + (ry + 1) * module)) * MM
            ops.append(f"{px:.2f} {py:.2f} {length * module * MM:.2f} {module * MM:.2f} re")
        ops.append("f")
        baseline = PAGE_H - (y + QR_SIZE + 6)
        for text, font, size_pt, drop in (
            (_fit(label.title, 30), "F2", 11, 0.0),
            (_fit(label.subtitle, 38), "F1", 9, 5.0),
            (_fit(label.caption, 40), "F1", 7, 9.5),
        ):
            ops.append(
                f"BT /{font} {size_pt} Tf {left * MM:.2f} {(baseline - drop) * MM:.2f} Td"
                f" ({_pdf_text(text)}) Tj ET"
            )
    for ops in pages:
        ops.insert(
            0,
            f"BT /F2 14 Tf {MARGIN * MM:.2f} {(PAGE_H - MARGIN - 4) * MM:.2f} Td"
            f" ({_pdf_text(heading)}) Tj ET",
        )
    return _pdf_document(["\n".join(ops).encode("latin-1") for ops in pages])


def _pdf_document(contents: list[bytes]) -> bytes:
    objects: list[bytes] = []
    font = "<< /Type /Font /Subtype /Type1 /BaseFont /{} /Encoding /WinAnsiEncoding >>"
    # 1 catalog, 2 pages, 3-4 fonts, then (page, content) pairs.
    kids = " ".join(f"{5 + 2 * i} 0 R" for i in range(len(contents)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(contents)} >>".encode())
    objects.append(font.format("Helvetica").encode())
    objects.append(font.format("Helvetica-Bold").encode())
    for i, content in enumerate(contents):
        objects.append(
            (
                f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W * MM:.2f} {PAGE_H * MM:.2f}]"
                f" /Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents {6 + 2 * i} 0 R >>"
            ).encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: list[int] = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


# ---- SVG ----------------------------------------------------------------------------------------


def render_svg(labels: Sequence[QrLabel], *, heading: str) -> bytes:
    """One A4-wide sheet, as tall as the pages it needs, in millimetres."""
    pages = max(1, -(-len(labels) // (COLUMNS * ROWS)))
    height = PAGE_H * pages
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{PAGE_W}mm" height="{height}mm"'
        f' viewBox="0 0 {PAGE_W} {height}" font-family="Helvetica, Arial, sans-serif">',
        f"<title>{escape(heading)}</title>",
        f'<rect width="{PAGE_W}" height="{height}" fill="#fff"/>',
    ]
    for page in range(pages):
        parts.append(
            f'<text x="{MARGIN}" y="{page * PAGE_H + MARGIN + 4}" font-size="5"'
            f' font-weight="bold">{escape(heading)}</text>'
        )
    for page, x, y, label in _cells(labels):
        top = page * PAGE_H + y
        size, runs = _runs(label.qr_content)
        module = QR_SIZE / size
        left = x + (CELL_W - QR_SIZE) / 2
        path = "".join(
            f"M{left + rx * module:.3f} {top + ry * module:.3f}h{length * module:.3f}"
            f"v{module:.3f}h{-length * module:.3f}z"
            for rx, ry, length in runs
        )
        parts.append(f'<path d="{path}" fill="#000"/>')
        baseline = top + QR_SIZE + 6
        parts.append(
            f'<text x="{left}" y="{baseline}" font-size="3.9" font-weight="bold">'
            f"{escape(label.title)}</text>"
        )
        parts.append(
            f'<text x="{left}" y="{baseline + 5}" font-size="3.2">{escape(label.subtitle)}</text>'
        )
        parts.append(
            f'<text x="{left}" y="{baseline + 9.5}" font-size="2.5" fill="#444">'
            f"{escape(label.caption)}</text>"
        )
    parts.append("</svg>")
    return ("\n".join(parts) + "\n").encode()
