"""Proof that a property checked something: how often each one reached its assertions.

A property that returns early for most examples passes while checking nothing. Each property
labels what it reached (``reached("capture decided")``), which shows in hypothesis's statistics
(``pytest --hypothesis-show-statistics``) and is counted; after the run the test fails if any
label was reached fewer times than its stated minimum.
"""

from __future__ import annotations

from collections import Counter

import hypothesis


class Reached:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, label: str) -> None:
        hypothesis.event(label)
        self.counts[label] += 1

    def at_least(self, minimums: dict[str, int]) -> None:
        short = {
            label: f"{self.counts[label]} < {minimum}"
            for label, minimum in minimums.items()
            if self.counts[label] < minimum
        }
        assert not short, (
            f"the property reached its assertions too rarely: {short} (all: {dict(self.counts)})"
        )
