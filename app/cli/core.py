"""serve, migrate, demo."""

from __future__ import annotations

import sys

import typer

from app.settings import Environment, Settings, UnsafeConfiguration


def _settings() -> Settings:
    settings = Settings()
    try:
        settings.check_startable()
    except UnsafeConfiguration as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    return settings


def register_core(cli: typer.Typer) -> None:
    @cli.command()
    def serve(
        host: str = typer.Option("0.0.0.0", help="Interface to listen on."),  # noqa: S104
        port: int = typer.Option(8000, help="Port to listen on."),
        migrate: bool = typer.Option(True, help="Apply migrations before starting."),
    ) -> None:
        """Apply migrations, then serve the API, the webhook receiver and the workers.

        Example: VIPPS_POS_DATABASE__URL=postgresql+asyncpg://... vipps-pos serve --port 8000
        """
        import uvicorn

        from app.main import create_app
        from app.migrations import upgrade
        from app.observability.logging import configure_logging
        from app.server import uvicorn_config

        settings = _settings()
        json_logs = (
            settings.logging.json_logs
            if settings.logging.json_logs is not None
            else settings.environment is Environment.PRODUCTION
        )
        configure_logging(settings.logging.level, json_logs)
        if migrate:
            upgrade(settings.database.url)
        config = uvicorn_config(create_app(settings), settings.server, host=host, port=port)
        uvicorn.Server(config).run()

    @cli.command()
    def migrate(revision: str = typer.Argument("head", help="Target revision.")) -> None:
        """Apply database migrations (default: to the newest).

        Example: vipps-pos migrate
        """
        from app.migrations import upgrade

        settings = _settings()
        upgrade(settings.database.url, revision)
        typer.echo(f"database at {revision}")

    @cli.command()
    def demo(
        keep_running: bool = typer.Option(
            False, help="Leave the service and simulator running after the scenarios."
        ),
    ) -> None:
        """Run the whole flow on SQLite + the Vipps simulator and print a timeline.

        Example: vipps-pos demo
        """
        from app.demo import run_demo

        sys.exit(run_demo(keep_running=keep_running))
