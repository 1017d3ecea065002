"""Vipps's limit on mutating calls: 5 per minute per payment reference *and operation*.

Vipps lists create, capture, cancel and refund as separate rows of 5 per minute each, keyed by
``reference`` + MSN (REFERENCE.md §7.11). The stamps of recent calls are kept on the checkout
(``checkouts.mutating_calls``) as ``{"CAPTURE": [epoch, ...], "REFUND": [...], ...}``. Rows
written before budgets were per operation hold one list for every operation; those stamps (and
any carried forward under ``"*"``) count against every operation — over-cautious for at most a
minute.

Pure: the standard library only.
"""

from __future__ import annotations

RATE_LIMIT_CALLS = 5
RATE_LIMIT_WINDOW = 60.0
# Key under which stamps of the older, pooled shape (one list for all operations) are carried.
_POOLED = "*"


def recorded_calls(stored: object, kind: str) -> list[float]:
    """Stamps of recorded ``kind`` calls from ``checkouts.mutating_calls`` (either shape)."""
    if isinstance(stored, list):
        return [float(t) for t in stored]
    if isinstance(stored, dict):
        return [float(t) for t in [*stored.get(kind, []), *stored.get(_POOLED, [])]]
    return []


def with_call(stored: object, kind: str, stamp: float) -> dict[str, list[float]]:
    """``stored`` (either shape) with ``stamp`` added under ``kind`` and stamps older than the
    window dropped; at most twice the budget is kept per operation."""
    calls: dict[str, list[float]] = {}
    if isinstance(stored, list):
        calls[_POOLED] = [float(t) for t in stored]
    elif isinstance(stored, dict):
        calls = {str(k): [float(t) for t in v] for k, v in stored.items() if isinstance(v, list)}
    calls.setdefault(kind, []).append(stamp)
    kept = {
        k: [t for t in v if stamp - t < RATE_LIMIT_WINDOW][-(RATE_LIMIT_CALLS * 2) :]
        for k, v in calls.items()
    }
    return {k: v for k, v in kept.items() if v}
