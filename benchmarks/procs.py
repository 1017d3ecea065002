"""The processes of a benchmark run: database, simulator, service, baselines; machine facts.

Pinning (when at least 2 CPUs are available to us): the processes under test (the service and the
bare baselines) run on CPU 0; the load generator and the simulator share CPU 1; Postgres is not
ours to pin and floats. The service and its baselines therefore compete for the same single core,
and neither competes with the load it is being measured with.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import psutil

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
SERVER_CPU = 0
LOADGEN_CPU = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Taken once, before this process pins itself (its children would inherit that pin).
_CPUS = sorted(os.sched_getaffinity(0))


def available_cpus() -> list[int]:
    return list(_CPUS)


PINNING = True  # ``--no-pin`` turns it off


def pinning_enabled() -> bool:
    return PINNING and len(available_cpus()) >= 2


def pin(pid: int, cpu: int) -> None:
    if pinning_enabled():
        cpus = available_cpus()
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {cpus[cpu % len(cpus)]})


def service_environment(database_url: str, sim_url: str, public_url: str) -> dict[str, str]:
    """Production defaults except what points at the simulator (as tests/support/live.py)."""
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
            # The load generator drives each till far faster than a person at a counter.
            "VIPPS_POS_SECURITY__TILL_RATE_LIMIT_PER_MINUTE": "100000",
            "VIPPS_POS_LOGGING__JSON_LOGS": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass
class Proc:
    """One child process: started, pinned, waited for, stopped by its own PID."""

    name: str
    argv: list[str]
    port: int
    log_dir: Path
    cpu: int | None = SERVER_CPU
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    start_to_ready: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def spawn(self) -> float:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{self.name}.log").open("ab") as log:
            started = time.perf_counter()
            self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and modules)
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stop() reaches its worker processes
            )
        if self.cpu is not None:
            pin(self.process.pid, self.cpu)
        return started

    async def start(self, ready_path: str = "/readyz", within: float = 60.0) -> Proc:
        started = self.spawn()
        await self.wait_ready(ready_path, within)
        self.start_to_ready.append(time.perf_counter() - started)
        return self

    async def wait_ready(self, path: str, within: float) -> None:
        deadline = time.perf_counter() + within
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        while time.perf_counter() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_dir}/{self.name}.log")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(request)
                head = await reader.read(64)
                writer.close()
                if head.startswith(b"HTTP/1.1 200"):
                    return
            except OSError:
                pass
            await asyncio.sleep(0.02)
        raise TimeoutError(f"{self.name} not ready after {within}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def service_proc(
    log_dir: Path, database_url: str, sim_url: str, port: int | None = None, *, workers: int = 1
) -> Proc:
    """The service as ``vipps-pos serve``. One worker process is pinned like the baselines;
    several are left to the scheduler (they are meant to use every core)."""
    port = port or free_port()
    argv = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--no-migrate", "--workers", str(workers)]
    env = service_environment(database_url, sim_url, f"http://127.0.0.1:{port}/webhooks/vipps")
    name = "service" if workers == 1 else f"service-{workers}-workers"
    return Proc(name, argv, port, log_dir, cpu=SERVER_CPU if workers == 1 else None, env=env)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (the worker processes of ``serve --workers N``)."""
    import psutil

    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return [pid]


def simulator_proc(log_dir: Path) -> Proc:
    port = free_port()
    argv = [sys.executable, "-m", "app.simulator", "--port", str(port), "--no-rate-limits"]
    # Sales units set up for this flow (PUSH_MESSAGE approved); the service and the baselines
    # listen on http://127.0.0.1, which the development switch lets them register.
    argv += ["--approved", "--allow-http-localhost"]
    # The simulator's token-lifetime and expiry defaults hold for a 10-minute run.
    return Proc("simulator", argv, port, log_dir, cpu=LOADGEN_CPU)


def baseline_proc(kind: str, log_dir: Path, dsn: str, sim_url: str = "") -> Proc:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.baselines", kind, "--port", str(port)]
    argv += ["--dsn", dsn, "--sim-url", sim_url]
    return Proc(f"bare-{kind}", argv, port, log_dir)


# ---- database ------------------------------------------------------------------------------


async def fresh_database(admin_dsn: str, name: str) -> str:
    """Drop and create ``name``; returns its plain ``postgresql://`` DSN."""
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


async def drop_database(admin_dsn: str, name: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await connection.close()


# ---- machine facts -------------------------------------------------------------------------


def fsync_rate(directory: Path) -> dict[str, Any]:
    """``pg_test_fsync`` (1 s per method) on the disk of ``directory``: fdatasync ops/s."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_test_fsync"))
    tool = candidates[-1] if candidates else shutil.which("pg_test_fsync")
    if not tool:
        return {"available": False}
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "pg_test_fsync.tmp"
    try:
        out = subprocess.run(  # noqa: S603 (a fixed system tool)
            [tool, "-s", "1", "-f", str(target)],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        ).stdout
    except subprocess.TimeoutExpired:
        return {"available": True, "error": "timeout"}
    finally:
        target.unlink(missing_ok=True)
    rates = {}
    section = out.split("Compare file sync methods using one 8kB write", 1)[-1]
    section = section.split("Compare file sync methods using two", 1)[0]
    for method in ("open_datasync", "fdatasync", "fsync"):
        match = re.search(rf"^\s+{method}\s+([\d.]+) ops/sec", section, re.M)
        if match:
            rates[method] = float(match.group(1))
    return {"available": True, "tool": tool, "opsPerSecond": rates}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in (
        "fastapi",
        "uvicorn",
        "starlette",
        "sqlalchemy",
        "asyncpg",
        "uvloop",
        "httptools",
        "httpx",
        "pydantic",
        "orjson",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "cpusAvailable": len(available_cpus()),
        "cpuModel": model,
        "memoryGb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "loadAverageAtStart": [round(x, 2) for x in load],
    }
