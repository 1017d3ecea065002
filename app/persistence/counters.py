"""Counts of database statements and transactions, for the statement budget and /metrics.

An increment per statement costs nothing measurable; the statement budget test reads these to
hold the number of round trips per sale (``tests/persistence/test_statement_budget.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass
class StatementCounter:
    statements: int = 0
    # Units of work that wrote: an autocommit write or an explicit BEGIN … COMMIT.
    transactions: int = 0

    def statement(self, *, write: bool = False) -> None:
        self.statements += 1
        if write:
            self.transactions += 1

    def transaction(self) -> None:
        self.transactions += 1

    def snapshot(self) -> tuple[int, int]:
        return self.statements, self.transactions


def count_engine(engine: AsyncEngine, counter: StatementCounter) -> None:
    """Count the ORM's statements and commits too (the operator paths, and anything the hot
    paths still leave to it)."""

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _statement(*_: Any) -> None:
        counter.statement()

    @event.listens_for(engine.sync_engine, "commit")
    def _commit(*_: Any) -> None:
        counter.transaction()
