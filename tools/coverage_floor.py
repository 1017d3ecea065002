"""Check the coverage report against the project's floors and print per-package figures.

Reads the JSON report ``make coverage`` writes (coverage.py's ``coverage json``) and fails
(exit 1) if branch coverage of the whole of ``app/``, or of a guarded package, is under its
floor. Lines no test can reach carry ``# pragma: no cover (<why>)`` in the code; nothing else
is excluded.

Usage: python tools/coverage_floor.py [test-artifacts/coverage/coverage.json]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

REPORT = Path("test-artifacts/coverage/coverage.json")
# Branch coverage floors, in percent. The aim is 90 % overall and 97 % in each guarded package
# (where money moves), and the suite measures that: 90.3 overall; domain 99.6, service 97.2,
# workers 97.8 (90 of 92), vipps 97.2 (241 of 248). At 97 the workers and vipps floors would have
# no branch to spare, and a few branches depend on scheduling (which task wins a race, whether a
# connection drops mid-test), so those floors sit a point under: a floor must not turn a correct
# change red. Raise them as tests are added.
OVERALL_FLOOR = 90.0
PACKAGE_FLOORS = {
    "app/domain": 99.0,
    "app/service": 96.0,
    "app/workers": 96.0,
    "app/vipps": 96.0,
}


def package_of(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[:2]) if len(parts) > 2 else path


def figures(report: dict[str, Any]) -> dict[str, tuple[int, int, int, int]]:
    """Per package: (covered branches, branches, covered lines, lines)."""
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for path, data in report["files"].items():
        summary = data["summary"]
        total = sums[package_of(path)]
        total[0] += summary["covered_branches"]
        total[1] += summary["num_branches"]
        total[2] += summary["covered_lines"]
        total[3] += summary["num_statements"]
    return {name: (a, b, c, d) for name, (a, b, c, d) in sums.items()}


def percent(covered: int, total: int) -> float:
    return 100.0 * covered / total if total else 100.0


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else REPORT
    report = json.loads(path.read_text())
    per_package = figures(report)
    totals = report["totals"]
    overall = percent(totals["covered_branches"], totals["num_branches"])
    failures: list[str] = []
    print(f"{'package':<28}{'branches':>18}{'lines':>18}   floor")
    for name in sorted(per_package):
        covered_b, branches, covered_l, lines = per_package[name]
        share = percent(covered_b, branches)
        floor = PACKAGE_FLOORS.get(name)
        mark = ""
        if floor is not None:
            mark = f"{floor:5.1f} %"
            if share < floor:
                mark += "  UNDER"
                failures.append(f"{name}: {share:.1f} % of branches < {floor} %")
        print(
            f"{name:<28}{covered_b:>7}/{branches:<5}{share:5.1f} %"
            f"{covered_l:>7}/{lines:<5}{percent(covered_l, lines):5.1f} %   {mark}"
        )
    line_share = percent(totals["covered_lines"], totals["num_statements"])
    print(f"{'all of app/':<28}{overall:>17.1f} %{line_share:>17.1f} %   {OVERALL_FLOOR:5.1f} %")
    if overall < OVERALL_FLOOR:
        failures.append(f"app/: {overall:.1f} % of branches < {OVERALL_FLOOR} %")
    for failure in failures:
        print(f"coverage floor not met: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
