"""The README's curl walk-through is docs/walkthrough.sh, run here against the demo stack; the
README shows exactly the script's commands and the output of a real run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.devstack import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "walkthrough.sh"
README = ROOT / "README.md"


def _block(marker: str) -> list[str]:
    """The fenced block right after ``<!-- marker -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    after = text.split(f"<!-- {marker} -->", 1)[1]
    body = after.split("```", 2)[1]
    return body.split("\n", 1)[1].rstrip("\n").split("\n")


def _script_commands() -> list[str]:
    lines = SCRIPT.read_text(encoding="utf-8").rstrip("\n").split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("S="))
    return lines[start:]


_VARYING = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"kasse-\d+-[0-9a-f]{12}"), "<reference>"),
    (re.compile(r"kasse-\d+"), "<till>"),
    (re.compile(r"\(version \d+\)"), "(version n)"),
]


def normalized(lines: list[str]) -> list[str]:
    """Ids replaced; consecutive long-poll lines ("  STATE (version n)") kept as the last one of
    each run, since how many intermediate versions a poll sees depends on timing."""
    out: list[str] = []
    for line in lines:
        for pattern, placeholder in _VARYING:
            line = pattern.sub(placeholder, line)
        if line.startswith("  ") and out and out[-1].startswith("  "):
            out[-1] = line
        else:
            out.append(line)
    return out


def test_the_readme_shows_exactly_the_scripts_commands() -> None:
    assert _block("walkthrough:script") == _script_commands()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port, sim_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIPPS_POS_")}
    log = (tmp_path / "demo.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        [
            sys.executable,
            "-m",
            "app.cli",
            "demo",
            "--keep-running",
            "--port",
            str(port),
            "--sim-port",
            str(sim_port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    service, sim = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sim_port}"
    try:
        deadline = time.monotonic() + 180
        while b"keep running" not in (tmp_path / "demo.log").read_bytes():
            assert process.poll() is None, (tmp_path / "demo.log").read_text()
            assert time.monotonic() < deadline, "the demo did not finish its scenarios"
            time.sleep(0.5)
        assert httpx.get(f"{service}/readyz", timeout=10).status_code == 200
        yield service, sim
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_the_walkthrough_sells_against_the_demo_as_the_readme_shows(
    demo: tuple[str, str],
) -> None:
    service, sim = demo
    env = {**os.environ, "S": service, "SIM": sim}
    result = subprocess.run(  # noqa: S603 (our own script)
        ["bash", str(SCRIPT)],  # noqa: S607
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout.rstrip("\n").split("\n")
    assert "  CAPTURED (version n)" in normalized(output)
    assert output[-1] == "refund: PARTIALLY_REFUNDED, refunded 4900 øre"
    assert normalized(output) == normalized(_block("walkthrough:output"))
