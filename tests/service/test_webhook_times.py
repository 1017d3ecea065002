"""Timestamps in Vipps webhook payloads (``initiatedAt``), as Vipps writes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.service.intake import _parse_time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Vipps: seven fractional digits and "Z" (user.checked-in.v1 example, REFERENCE.md).
        ("2023-03-30T08:38:32.1234567Z", datetime(2023, 3, 30, 8, 38, 32, 123456, UTC)),
        ("2026-11-27T15:33:46.123456Z", datetime(2026, 11, 27, 15, 33, 46, 123456, UTC)),
        ("2023-03-30T08:38:32Z", datetime(2023, 3, 30, 8, 38, 32, tzinfo=UTC)),
        (
            "2023-03-30T10:38:32.5+02:00",
            datetime(2023, 3, 30, 10, 38, 32, 500000, timezone(timedelta(hours=2))),
        ),
    ],
)
def test_fractional_seconds_and_zones_are_read(text: str, expected: datetime) -> None:
    assert _parse_time(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2023-03-30T08:38:32.123", None, 1680165512])
def test_what_is_not_an_aware_time_is_none(text: object) -> None:
    assert _parse_time(text) is None
