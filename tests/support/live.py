"""End-to-end plumbing over real HTTP: the simulator in a thread, the service as real processes.

``ServiceProcess`` runs ``python -m app.cli serve`` with its settings in the environment, so a test
can run two replicas on one database, kill one with SIGKILL and start it again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.devstack import BackgroundServer, free_port
from app.simulator import SimulatorConfig, create_simulator_app
from tests.support.stack import simulator_config

ADMIN_KEY = "live-admin-key-0123456789"
ROOT = Path(__file__).resolve().parents[2]


def live_simulator_config(**overrides: Any) -> SimulatorConfig:
    """:func:`tests.support.stack.simulator_config` for a service on a local port: the
    development switch lets it register its http://127.0.0.1:<port> webhook URL."""
    return simulator_config(**{"allow_http_localhost_webhooks": True, **overrides})


@contextmanager
def live_simulator(config: SimulatorConfig | None = None) -> Iterator[BackgroundServer]:
    server = BackgroundServer(create_simulator_app(config or live_simulator_config()))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def service_environment(
    database_url: str, sim_url: str, public_url: str, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIPPS_POS_")}
    env.update(
        {
            "VIPPS_POS_ENVIRONMENT": "test",
            "VIPPS_POS_DATABASE__URL": database_url,
            "VIPPS_POS_VIPPS__BASE_URL": sim_url,
            "VIPPS_POS_VIPPS__CLIENT_ID": "sim-client-id",
            "VIPPS_POS_VIPPS__CLIENT_SECRET": "sim-client-secret",
            "VIPPS_POS_VIPPS__SUBSCRIPTION_KEY": "sim-subscription-key",
            "VIPPS_POS_VIPPS__DEFAULT_MSN": "123456",
            "VIPPS_POS_WEBHOOKS__PUBLIC_URL": public_url,
            "VIPPS_POS_SECURITY__ADMIN_API_KEY": ADMIN_KEY,
            # Tests make many deliberate 401s from one address and poll with the admin key far
            # faster than an operator; the throttling tests set their own limits.
            "VIPPS_POS_SECURITY__AUTH_FAILURES_PER_SOURCE": "10000",
            "VIPPS_POS_SECURITY__ADMIN_RATE_LIMIT_PER_MINUTE": "100000",
            "VIPPS_POS_WORKERS__OUTBOX_POLL_INTERVAL_SECONDS": "0.1",
            "VIPPS_POS_WORKERS__RECONCILE_INTERVAL_SECONDS": "0.5",
            "VIPPS_POS_WORKERS__RECONCILE_FIRST_POLL_SECONDS": "2",
            "VIPPS_POS_WORKERS__RECONCILE_POLL_EVERY_SECONDS": "1",
            "VIPPS_POS_LOGGING__JSON_LOGS": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@dataclass
class ServiceProcess:
    """One replica of the service as an OS process."""

    database_url: str
    sim_url: str
    log_dir: Path
    name: str = "service"
    port: int = field(default_factory=free_port)
    public_url: str | None = None  # the webhook URL registered at Vipps (default: this replica)
    extra_env: dict[str, str] = field(default_factory=dict)
    # Worker processes (``serve --workers``); one unless a test is about several, as the tests
    # stop and kill a replica by its own PID.
    workers: int = 1
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self, *, timeout: float = 30.0) -> ServiceProcess:
        env = service_environment(
            self.database_url,
            self.sim_url,
            self.public_url or f"{self.url}/webhooks/vipps",
            **self.extra_env,
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = self._spawn(env, log)
        self.starts += 1
        self.wait_ready(timeout)
        return self

    def _spawn(self, env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
        # The child keeps its own copy of the log file descriptor.
        return subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-migrate",
                "--workers",
                str(self.workers),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group, so that stopping it stops its worker processes too.
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s: see {self.log_path}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the service's whole process group (its worker processes too, which a killed
        parent would otherwise leave running) and wait for the parent to end."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def restart(self) -> ServiceProcess:
        self.kill()
        return self.start()
