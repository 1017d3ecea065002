"""Mutation testing of the code that decides money: one AST mutation at a time, each run
against the mutated module's own tests (``make mutate``).

The module is rewritten as a whole (``ast.unparse``), so mutants of module-level code — the
state machine's transition table, built when the module is imported — are seen too (a per-call
tool such as mutmut 3 cannot see them). Each worker runs in its own copy of the project, so the
working tree is never touched.

Mutations: arithmetic (``+``/``-``, ``*``/``//``), comparisons (``<``/``<=``, ``>``/``>=``,
``==``/``!=``, ``in``/``not in``, ``is``/``is not``), ``and``/``or``, dropping a ``not``, integer
constants (n → n + 1, and 1 → 0), ``True``/``False``, and string constants where they decide
something (compared, or matched in a ``case``). Message text is not mutated.

Usage: python tools/mutate.py [--jobs 2] [--only NAME] [--out docs/mutation-results.json]
A mutant is *killed* when its tests fail (or exceed the time limit), *survived* otherwise.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    name: str
    module: str
    tests: tuple[str, ...]
    functions: frozenset[str] | None = None  # only mutate inside these functions


TARGETS = (
    Target("state_machine", "app/domain/state_machine.py", ("tests/domain/test_state_machine.py",)),
    Target("receipt", "app/domain/receipt.py", ("tests/domain/test_receipt.py",)),
    Target("signature", "app/vipps/signature.py", ("tests/vipps/test_signature.py",)),
    Target(
        "sync",
        "app/service/sync.py",
        (
            "tests/service/test_repairs.py",
            "tests/service/test_vipps_refusals.py",
            "tests/api/test_live_updates.py",
            "-k",
            "postgres",
        ),
    ),
    Target(
        "outbox_decisions",
        "app/workers/outbox.py",
        (
            "tests/service/test_vipps_refusals.py",
            "tests/service/test_direct_dispatch.py",
            "tests/service/test_repairs.py",
            "tests/api/test_payment_outcomes.py",
            "-k",
            "postgres or pg",
        ),
        frozenset({"_reason", "_retry", "_create", "_move_money", "_cancel", "_perform"}),
    ),
)

_SWAPS: dict[type[ast.AST], tuple[type[ast.AST], ...]] = {
    ast.Add: (ast.Sub,),
    ast.Sub: (ast.Add,),
    ast.Mult: (ast.FloorDiv,),
    ast.FloorDiv: (ast.Mult,),
    ast.Div: (ast.Mult,),
    ast.Lt: (ast.LtE, ast.Gt),
    ast.LtE: (ast.Lt, ast.GtE),
    ast.Gt: (ast.GtE, ast.Lt),
    ast.GtE: (ast.Gt, ast.LtE),
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
    ast.And: (ast.Or,),
    ast.Or: (ast.And,),
}


@dataclass
class Mutant:
    target: str
    index: int
    line: int
    description: str
    source: str
    status: str = "pending"  # killed | survived | timeout
    seconds: float = 0.0


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _sites(tree: ast.AST, functions: frozenset[str] | None) -> list[tuple[ast.AST, str, Any]]:
    """(node, description, replacement) for every mutation, in a stable order."""
    skip = _docstrings(tree)
    decisive: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            decisive.update(id(c) for c in [node.left, *node.comparators])
        elif isinstance(node, ast.MatchValue):
            decisive.add(id(node.value))
    annotations: set[int] = set()
    for node in ast.walk(tree):
        for name in ("annotation", "returns"):
            sub = getattr(node, name, None)
            if sub is not None:
                annotations.update(id(n) for n in ast.walk(sub))

    allowed: set[int] | None = None
    if functions is not None:
        allowed = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in functions:
                allowed.update(id(n) for n in ast.walk(node))

    sites: list[tuple[ast.AST, str, Any]] = []
    for node in ast.walk(tree):
        if (allowed is not None and id(node) not in allowed) or id(node) in annotations:
            continue
        if isinstance(node, ast.BinOp | ast.BoolOp):
            for swap in _SWAPS.get(type(node.op), ()):
                sites.append((node, f"{type(node.op).__name__} -> {swap.__name__}", swap))
        elif isinstance(node, ast.Compare):
            for position, op in enumerate(node.ops):
                for swap in _SWAPS.get(type(op), ()):
                    label = f"{type(op).__name__} -> {swap.__name__}"
                    sites.append((node, label, (position, swap)))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            sites.append((node, "drop not", None))
        elif isinstance(node, ast.Constant) and id(node) not in skip:
            value = node.value
            if isinstance(value, bool):
                sites.append((node, f"{value} -> {not value}", not value))
            elif isinstance(value, int):
                sites.append((node, f"{value} -> {value + 1}", value + 1))
                if value == 1:
                    sites.append((node, "1 -> 0", 0))
            elif isinstance(value, str) and id(node) in decisive:
                sites.append((node, f"{value!r} -> 'XX{value}'", f"XX{value}"))
    return sites


class _Apply(ast.NodeTransformer):
    def __init__(self, target: ast.AST, replacement: Any) -> None:
        self.target, self.replacement = target, replacement

    def generic_visit(self, node: ast.AST) -> ast.AST:
        node = super().generic_visit(node)
        if node is not self.target:
            return node
        r = self.replacement
        if isinstance(node, ast.BinOp | ast.BoolOp):
            node.op = r()
        elif isinstance(node, ast.Compare):
            position, swap = r
            node.ops[position] = swap()
        elif isinstance(node, ast.UnaryOp):
            return node.operand
        elif isinstance(node, ast.Constant):
            node.value = r
        return node


def mutants_of(target: Target) -> tuple[str, list[tuple[str, Mutant]]]:
    source = (ROOT / target.module).read_text()
    tree = ast.parse(source)
    lines = source.splitlines()
    found: list[tuple[str, Mutant]] = []
    for index, (_, description, _) in enumerate(_sites(tree, target.functions)):
        mutated = ast.parse(source)  # a fresh tree: node identity is per parse
        node, _, replacement = _sites(mutated, target.functions)[index]
        new_tree = _Apply(node, replacement).visit(mutated)
        line = getattr(node, "lineno", 0)
        found.append(
            (
                ast.unparse(ast.fix_missing_locations(new_tree)),
                Mutant(
                    target.name,
                    index,
                    line,
                    description,
                    lines[line - 1].strip() if line else "",
                ),
            )
        )
    return source, found


def _workspace(number: int) -> Path:
    place = Path(tempfile.gettempdir()) / f"vipps-pos-mutate-{os.getpid()}-{number}"
    if place.exists():
        shutil.rmtree(place)
    place.mkdir()
    for name in ("app", "tests", "alembic"):
        shutil.copytree(ROOT / name, place / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "alembic.ini"):
        shutil.copy2(ROOT / name, place / name)
    return place


def _run(place: Path, tests: tuple[str, ...], limit: float) -> tuple[str, float]:
    started = time.monotonic()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        result = subprocess.run(  # noqa: S603 (our interpreter, our tests)
            command, cwd=place, env=env, capture_output=True, timeout=limit, check=False
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started
    status = "survived" if result.returncode == 0 else "killed"
    return status, time.monotonic() - started


def run(targets: list[Target], jobs: int) -> list[Mutant]:
    places = [_workspace(n) for n in range(jobs)]
    done: list[Mutant] = []
    try:
        for target in targets:
            source, mutants = mutants_of(target)
            baseline_status, baseline = _run(places[0], target.tests, 1800)
            assert baseline_status == "survived", f"{target.name}: tests fail unmutated"
            limit = max(60.0, 4 * baseline)
            print(f"{target.name}: {len(mutants)} mutants, tests {baseline:.0f} s", flush=True)

            def one(
                job: tuple[int, tuple[str, Mutant]],
                target: Target = target,
                source: str = source,
                limit: float = limit,
            ) -> Mutant:
                number, (code, mutant) = job
                place = places[number % jobs]
                (place / target.module).write_text(code)
                mutant.status, mutant.seconds = _run(place, target.tests, limit)
                (place / target.module).write_text(source)
                return mutant

            # Each worker owns one workspace: jobs are dealt round-robin, one at a time each.
            with ThreadPoolExecutor(jobs) as pool:
                for start in range(0, len(mutants), jobs):
                    batch = list(enumerate(mutants[start : start + jobs]))
                    for mutant in pool.map(one, batch):
                        done.append(mutant)
                        if mutant.status == "survived":
                            print(f"  survived: {mutant.line}: {mutant.description}", flush=True)
    finally:
        for place in places:
            shutil.rmtree(place, ignore_errors=True)
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", action="append", help="target name (repeatable)")
    parser.add_argument("--out", default="test-artifacts/mutation/results.json")
    args = parser.parse_args()
    targets = [t for t in TARGETS if not args.only or t.name in args.only]
    started = time.monotonic()
    results = run(targets, args.jobs)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(m) for m in results], indent=1))
    for target in targets:
        mine = [m for m in results if m.target == target.name]
        killed = sum(m.status != "survived" for m in mine)
        print(f"{target.name}: {killed}/{len(mine)} killed")
    print(f"{time.monotonic() - started:.0f} s in all; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
