"""``make demo`` keeps working: every scenario of the demo ends as it should."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCENARIOS = (
    "basket then scan: CAPTURED",
    "scan then basket: CAPTURED",
    "declined: REJECTED",
    "cancelled: CANCELLED",
    "partial refund: PARTIALLY_REFUNDED",
    "full refund: REFUNDED",
    "member sale: CAPTURED",
    "enrollment: CAPTURED",
)


def test_the_demo_ends_every_scenario_as_expected(tmp_path: Path) -> None:
    # Run where the demo's SQLite file (var/demo/) may be written: a scratch directory.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIPPS_POS_")}
    env["COLUMNS"] = "200"
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for scenario in SCENARIOS:
        assert f"✓ {scenario}" in output, scenario
    assert "all scenarios ended as expected" in output
    assert (tmp_path / "var" / "demo" / "demo.db").exists()
