"""Readiness: the database answers and its schema is at the migrations' head."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.migrations import head
from app.service.context import ServiceContext


async def readiness(ctx: ServiceContext) -> dict[str, Any]:
    expected = head()
    try:
        async with ctx.sessions() as session:
            current = await session.scalar(text("SELECT version_num FROM alembic_version"))
    except Exception as exc:
        return {"status": "unavailable", "database": "unreachable", "error": type(exc).__name__}
    ready = current == expected
    return {
        "status": "ready" if ready else "migrations_pending",
        "database": "ok",
        "migration": current,
        "head": expected,
    }
