"""serve, migrate, demo."""

from __future__ import annotations

import os
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
        workers: int | None = typer.Option(
            None,
            min=1,
            help="Processes to serve with (default: one per available core on Postgres, one on "
            "SQLite). They share the database as replicas do.",
        ),
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
        if workers is None:
            workers = len(os.sched_getaffinity(0)) if settings.database.is_postgres else 1
        if workers > 1 and not settings.database.is_postgres:
            typer.echo("several worker processes need Postgres; SQLite serves one", err=True)
            raise typer.Exit(2)
        json_logs = (
            settings.logging.json_logs
            if settings.logging.json_logs is not None
            else settings.environment is Environment.PRODUCTION
        )
        configure_logging(settings.logging.level, json_logs)
        if migrate:
            upgrade(settings.database.url)
        if workers == 1:
            config = uvicorn_config(create_app(settings), settings.server, host=host, port=port)
            uvicorn.Server(config).run()
            return
        # Each process builds its app (and the server's guarded protocol) from the same
        # environment; uvicorn supervises them and restarts one that dies.
        from uvicorn.supervisors import Multiprocess

        config = uvicorn_config(
            "app.main:app_from_environment",
            settings.server,
            host=host,
            port=port,
            workers=workers,
        )
        Multiprocess(config, sockets=[config.bind_socket()]).run()

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
        port: int | None = typer.Option(
            None, help="The service's port (default 8000, or a free one if 8000 is taken)."
        ),
        sim_port: int | None = typer.Option(
            None, help="The simulator's port (default 8081, or a free one if taken)."
        ),
    ) -> None:
        """Run the whole flow on SQLite + the Vipps simulator and print a timeline.

        Example: vipps-pos demo --keep-running --port 8000
        """
        from app.demo import run_demo

        for name, value in (("--port", port), ("--sim-port", sim_port)):
            if value is not None and not _port_free(value):
                typer.echo(f"error: {name} {value} is in use", err=True)
                raise typer.Exit(2)
        sys.exit(run_demo(keep_running=keep_running, port=port, sim_port=sim_port))


def _port_free(port: int) -> bool:
    import socket

    try:
        with socket.create_server(("127.0.0.1", port)):
            return True
    except OSError:
        return False
