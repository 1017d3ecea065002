"""Real QR images of ``qrContent`` (PNG or SVG) rendered with segno, cached by content and size."""

from __future__ import annotations

import io
from functools import lru_cache

import segno

_BORDER = 4  # the quiet zone the QR standard asks for


@lru_cache(maxsize=256)
def render(content: str, fmt: str, size: int = 800) -> bytes:
    """The QR of ``content``; PNG scaled to the largest whole module size within ``size`` px."""
    code = segno.make_qr(content, error="m")
    buffer = io.BytesIO()
    if fmt == "png":
        width, _ = code.symbol_size(scale=1, border=_BORDER)
        code.save(buffer, kind="png", scale=max(1, size // width), border=_BORDER)
    else:
        code.save(buffer, kind="svg", scale=10, border=_BORDER, xmldecl=False)
    return buffer.getvalue()
