"""QR sheets keep every letter (an embedded Unicode font), carry the call to action and cut
marks, and each drawn code is the QR of its till's content."""

from __future__ import annotations

import io

from pypdf import PdfReader

from app.service.qr_sheet import (
    CALL_TO_ACTION,
    COLUMNS,
    ROWS,
    QrLabel,
    _runs,
    render_pdf,
    render_svg,
)

NORDIC = "Kassa 2 – Åbo/Turku ØÆÅ ÄÖ"
SAMI = "Ŋuorttanjárga: Čáhcesuolu đ ŧ ž š ǩ ʒ"


def _labels(count: int) -> list[QrLabel]:
    return [
        QrLabel(
            qr_content=f"https://qr.vipps.no/28/2/01/031/{n:04d}",
            title=NORDIC if n == 0 else f"Kasse {n}",
            subtitle=SAMI,
            caption=f"till kasse-{n} · MSN 123456",
        )
        for n in range(count)
    ]


def test_non_latin1_text_survives_in_the_pdf() -> None:
    pdf = render_pdf(_labels(2), heading="Åbo – Turku ØÆÅ")
    reader = PdfReader(io.BytesIO(pdf))
    text = reader.pages[0].extract_text()
    for expected in (NORDIC, SAMI, "Åbo – Turku ØÆÅ", CALL_TO_ACTION, "till kasse-1"):
        assert expected in text, (expected, text)
    assert "?" not in text
    fonts = {
        font.get_object()["/BaseFont"] for font in reader.pages[0]["/Resources"]["/Font"].values()
    }
    assert all("DejaVuSans" in str(name) for name in fonts), fonts
    descriptor = next(iter(reader.pages[0]["/Resources"]["/Font"].values())).get_object()
    assert descriptor["/Subtype"] == "/Type0"  # a CID font: the embedded TrueType subset


def test_a_full_page_then_the_next_with_cut_marks() -> None:
    count = COLUMNS * ROWS + 1
    reader = PdfReader(io.BytesIO(render_pdf(_labels(count), heading="Store")))
    assert len(reader.pages) == 2
    assert reader.pages[1].extract_text().count(CALL_TO_ACTION) == 1
    # Cut marks: 8 short strokes per cell (two at each corner) drawn as lines.
    first = reader.pages[0].get_contents().get_data().decode("latin-1")
    assert first.count(" l S") + first.count(" l\nS") >= 8 * COLUMNS * ROWS


def test_the_svg_sheet_has_the_same_parts() -> None:
    labels = _labels(2)
    svg = render_svg(labels, heading="Åbo").decode()
    assert NORDIC in svg
    assert svg.count(CALL_TO_ACTION) == 2
    assert svg.count('class="cut-marks"') == 2
    size, runs = _runs(labels[1].qr_content)
    assert size > 20
    assert runs


def test_a_title_too_wide_for_its_cell_is_shortened_not_spilled() -> None:
    long_title = "Kasse ved inngangen til frukt og grønt " * 4
    label = QrLabel(
        qr_content="https://qr.vipps.no/28/2/01/031/0001",
        title=long_title,
        subtitle="",
        caption="till kasse-1 · MSN 123456",
    )
    text = PdfReader(io.BytesIO(render_pdf([label], heading="Butikk"))).pages[0].extract_text()
    assert long_title.strip() not in text
    assert "Kasse ved inngangen" in text
    assert "…" in text
