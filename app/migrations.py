"""Run Alembic programmatically (``vipps-pos migrate``, ``serve``, tests)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from alembic import command


def alembic_dir() -> Path:
    """``alembic/`` beside the working directory (the image's /app), else beside the source."""
    configured = os.environ.get("VIPPS_POS_ALEMBIC_DIR")
    for candidate in (
        Path(configured) if configured else None,
        Path.cwd() / "alembic",
        Path(__file__).resolve().parents[1] / "alembic",
    ):
        if candidate is not None and (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("alembic/ not found; set VIPPS_POS_ALEMBIC_DIR")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(alembic_dir()))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Blocking: call from a thread when an event loop is running (env.py runs its own)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def head() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(alembic_dir()))
    return ScriptDirectory.from_config(config).get_current_head()
