"""Waiting for something to happen: poll the condition itself, and fail loudly on timeout.

A fixed sleep either waits too long or, on a busy machine, not long enough; a wait that
returns quietly on timeout lets the test go on with a state it never reached.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    what: str,
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
) -> T:
    """Poll ``condition`` (plain or async) until it returns something truthy; return that.
    Raises :class:`AssertionError` naming ``what`` (and the last value seen) on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        outcome = condition()
        value = await outcome if inspect.isawaitable(outcome) else outcome
        if value:
            return value  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value!r}")
        await asyncio.sleep(interval)
