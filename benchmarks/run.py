"""``make bench``: start Postgres-backed service, simulator and baselines; run the benchmarks;
write ``benchmarks/results/<date>-<commit>.json``, ``.md`` and ``.png``.

``python -m benchmarks.run [--quick] [--only ingest,slow,scan,checkouts,workers,scale,footprint]
[--out DIR] [--no-fsync]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import procs, profiler, report, scenarios
from benchmarks.fixtures import SERVICE_MSN, Signer, SimulatorApi
from benchmarks.http import HttpPool

ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
ORDER = ("ingest", "slow", "scan", "checkouts", "workers", "scale", "footprint")
NEEDS = {
    "slow": "ingest",
    "footprint": "checkouts",
    "checkouts": "scan",
    "workers": "checkouts",
    "scale": "checkouts",
}


def log(message: str) -> None:
    sys.stdout.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stdout.flush()


def commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 (read-only git on PATH)
            cwd=procs.ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
            cwd=procs.ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "nogit"
    return sha + ("-dirty" if dirty else "")


def selected(only: str | None) -> list[str]:
    if not only:
        return list(ORDER)
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    for name in list(wanted):
        while name in NEEDS:
            name = NEEDS[name]
            wanted.add(name)
    return [name for name in ORDER if name in wanted]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    scale = scenarios.Scale.quick() if args.quick else scenarios.Scale()
    if args.reps:
        scale.reps = args.reps
    names = selected(args.only)
    log_dir = procs.ROOT / "var" / "bench-logs"  # var/ is not committed
    started = time.perf_counter()
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit(),
        "machine": procs.machine(),
        "versions": procs.versions(),
        "scale": scale.__dict__ | {"scale_sizes": list(scale.scale_sizes)},
        "benchmarks": names,
    }
    if args.fsync:
        log("measuring the disk's fsync rate (pg_test_fsync)")
        meta["fsync"] = await asyncio.to_thread(procs.fsync_rate, procs.ROOT / "var")
    else:
        meta["fsync"] = {"available": False, "skipped": True}
    database = f"vipps_pos_bench_{os.getpid()}" if args.quick else "vipps_pos_bench"
    dsn = await procs.fresh_database(ADMIN_DSN, database)
    sa_url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    from app.migrations import upgrade

    await asyncio.to_thread(upgrade, sa_url)
    procs.PINNING = args.pin
    pinning = procs.pinning_enabled()
    meta["pinning"] = (
        f"service and bare baselines on CPU {procs.available_cpus()[procs.SERVER_CPU]}; "
        f"load generator and simulator on CPU {procs.available_cpus()[procs.LOADGEN_CPU]}; "
        "Postgres unpinned"
        if pinning
        else "off (fewer than 2 CPUs available)"
    )
    if pinning:
        procs.pin(os.getpid(), procs.LOADGEN_CPU)
    log(f"pinning: {meta['pinning']}")
    simulator = await procs.simulator_proc(log_dir).start("/_sim")
    service = procs.service_proc(log_dir, sa_url, simulator.url)
    bare_asyncpg = procs.baseline_proc("asyncpg", log_dir, dsn)
    bare_sqlalchemy = procs.baseline_proc("sqlalchemy", log_dir, dsn)
    forwarder = procs.baseline_proc("forwarder", log_dir, dsn, simulator.url)
    every = [simulator, service, bare_asyncpg, bare_sqlalchemy, forwarder]
    pools: dict[str, HttpPool] = {}
    try:
        await asyncio.gather(*(p.start() for p in every[1:]))
        log(f"started: {', '.join(f'{p.name} pid {p.pid}' for p in every)}")
        sim = SimulatorApi(HttpPool(simulator.url))
        await sim.login()
        admin = HttpPool(service.url)
        answer = await admin.request(
            "POST",
            f"/api/v1/webhooks/{SERVICE_MSN}/ensure",
            headers={"Authorization": f"Bearer {procs.ADMIN_KEY}"},
        )
        if answer.status != 200:
            raise RuntimeError(f"webhook ensure failed: {answer.status} {answer.body[:300]!r}")
        registrations = (await sim.control("GET", "/_sim/webhooks"))["registrations"]
        secret = next(r["secret"] for r in registrations if r["url"].startswith(service.url))
        bench = scenarios.Bench(
            scale=scale, dsn=dsn, service=service, simulator=simulator,
            bare_asyncpg=bare_asyncpg, bare_sqlalchemy=bare_sqlalchemy, forwarder=forwarder,
            sim=sim, pools=pools, log=log,
            signer=Signer(secret, f"/webhooks/vipps/{SERVICE_MSN}", f"127.0.0.1:{service.port}"),
        )  # fmt: skip
        steps = {
            "ingest": ("1 webhook ingest", scenarios.bench_ingest),
            "slow": ("6 slow provider", scenarios.bench_slow_provider),
            "scan": ("2 scan to payment request", scenarios.bench_scan_to_request),
            "checkouts": ("3 full checkouts", scenarios.bench_checkouts),
            "workers": ("7 two worker processes", scenarios.bench_workers),
            "scale": ("4 scale", scenarios.bench_scale),
            "footprint": ("5 footprint", scenarios.bench_footprint),
        }
        for name in names:
            title, step = steps[name]
            log(f"benchmark {title}")
            begun = time.perf_counter()
            with profiler.recording(args.profile, service.pid, name):
                await step(bench)
            log(f"  done in {time.perf_counter() - begun:.0f} s")
        results = {k: v for k, v in bench.results.items() if not k.startswith("_")}
        meta["startToReadySeconds"] = {
            p.name: [round(x, 3) for x in p.start_to_ready] for p in every
        }
        violations = await sim.control("GET", "/_sim/violations")
        meta["simulatorViolations"] = len(violations.get("violations", []))
    finally:
        for pool in pools.values():
            pool.close()
        for proc in reversed(every):
            proc.stop()
        if not args.keep_db:
            with contextlib.suppress(Exception):
                await procs.drop_database(ADMIN_DSN, database)
    meta["wallSeconds"] = round(time.perf_counter() - started, 1)
    return {"meta": meta, "results": results}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="toy scale (the smoke test)")
    parser.add_argument("--only", default=None, help=f"comma list of {', '.join(ORDER)}")
    parser.add_argument("--out", default=str(procs.ROOT / "benchmarks" / "results"))
    parser.add_argument("--no-fsync", dest="fsync", action="store_false")
    parser.add_argument("--keep-db", action="store_true", help="keep the bench database")
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default 3; quick 1)")
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs"
    )
    parser.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="record the service with py-spy during each benchmark (collapsed stacks in DIR)",
    )
    args = parser.parse_args(argv)
    import uvloop  # the load generator runs on uvloop, like the servers it measures

    data = uvloop.run(run(args))
    paths = report.write(data, Path(args.out))
    for path in paths:
        log(f"wrote {path}")
    sys.stdout.write(report.targets_table(data) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
