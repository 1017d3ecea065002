"""The simulator's clock. Every deadline (payment expiry, token lifetimes, rate-limit windows,
CIBA polling interval) is measured on it, so tests move time forward instead of sleeping.

Invariant: ``now()`` never goes backwards; ``advance`` only accepts non-negative steps.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    def advance(self, seconds: float) -> datetime: ...


class SystemClock:
    """Wall-clock time (UTC) plus an offset that :meth:`advance` grows."""

    def __init__(self) -> None:
        self._offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def advance(self, seconds: float) -> datetime:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += timedelta(seconds=seconds)
        return self.now()


class ManualClock:
    """A frozen clock that moves only when told to: fully deterministic tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2024, 6, 12, 10, 0, 0, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("start must be timezone-aware")

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._now += timedelta(seconds=seconds)
        return self._now
