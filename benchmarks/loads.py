"""Load shapes and measurements: closed loop (max throughput), open loop (latency at a rate).

Open-loop latencies are measured from each request's *scheduled* start, so a server that falls
behind is charged for the queueing it causes (no coordinated omission).

Every run also records the load generator's own CPU use and, for the processes under test, CPU
and the largest RSS seen (sampled every 100 ms with psutil).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from benchmarks.http import Answer, HttpPool


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Run:
    """One measured run against one target."""

    target: str
    shape: str  # closed | open
    seconds: float = 0.0
    ok: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    offered_rate: float | None = None
    loadgen_cpu: float = 0.0  # percent of one core
    target_cpu: float = 0.0  # percent of one core, processes under test
    target_rss_mb: float = 0.0  # largest RSS of one process under test
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "shape": self.shape,
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "errors": self.errors,
            "throughput": round(self.throughput, 2),
            "offeredRate": self.offered_rate,
            "p50": round(self.p(50), 3),
            "p90": round(self.p(90), 3),
            "p99": round(self.p(99), 3),
            "max": round(max(self.latencies_ms), 3) if self.latencies_ms else math.nan,
            "loadgenCpuPercent": round(self.loadgen_cpu, 1),
            "targetCpuPercent": round(self.target_cpu, 1),
            "targetRssMb": round(self.target_rss_mb, 1),
            **self.extra,
        }


class Meter:
    """CPU of this process and of ``pids``, largest RSS of ``pids``, over a block."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.me = psutil.Process()
        self.targets = [psutil.Process(pid) for pid in pids]
        self.rss_max = 0
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _cpu(process: psutil.Process, *, children: bool = True) -> float:
        """CPU seconds of ``process`` (and its children: uvicorn may fork workers)."""
        try:
            times = process.cpu_times()
            offspring = (
                sum(
                    c.cpu_times().user + c.cpu_times().system
                    for c in process.children(recursive=True)
                )
                if children
                else 0.0
            )
        except psutil.Error:
            return 0.0
        return float(times.user + times.system + offspring)

    async def _sample(self) -> None:
        while True:
            for process in self.targets:
                with contextlib.suppress(psutil.Error):
                    self.rss_max = max(self.rss_max, process.memory_info().rss)
            await asyncio.sleep(0.1)

    async def __aenter__(self) -> Meter:
        self.started = time.perf_counter()
        self.my_cpu = self._cpu(self.me, children=False)
        self.their_cpu = sum(self._cpu(p) for p in self.targets)
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.elapsed = time.perf_counter() - self.started
        self.loadgen_cpu = 100 * (self._cpu(self.me, children=False) - self.my_cpu) / self.elapsed
        self.target_cpu = (
            100 * (sum(self._cpu(p) for p in self.targets) - self.their_cpu) / self.elapsed
        )

    def fill(self, run: Run) -> Run:
        run.loadgen_cpu = self.loadgen_cpu
        run.target_cpu = self.target_cpu
        run.target_rss_mb = self.rss_max / 2**20
        return run


def accepted(answer: Answer) -> bool:
    return 200 <= answer.status < 300


async def closed_loop(
    target: str,
    pool: HttpPool,
    requests: Sequence[bytes],
    *,
    concurrency: int,
    seconds: float,
    pids: Sequence[int],
    ok: Callable[[Answer], bool] = accepted,
) -> Run:
    """``concurrency`` workers send back to back until time is up or the requests run out."""
    run = Run(target, "closed")
    cursor = iter(range(len(requests)))
    deadline = time.perf_counter() + seconds
    latencies = run.latencies_ms

    async def worker() -> None:
        for index in cursor:
            started = time.perf_counter()
            if started >= deadline:
                return
            try:
                answer = await pool.send(requests[index])
            except (OSError, asyncio.IncompleteReadError, ValueError):
                run.errors += 1
                continue
            if ok(answer):
                run.ok += 1
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                run.errors += 1

    async with Meter(pids) as meter:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.seconds = meter.elapsed
    return meter.fill(run)


async def open_loop(
    target: str,
    pool: HttpPool,
    requests: Sequence[bytes],
    *,
    rate: float,
    seconds: float,
    pids: Sequence[int],
    ok: Callable[[Answer], bool] = accepted,
) -> Run:
    """Start request i at ``i / rate``; latency counts from that scheduled moment."""
    run = Run(target, "open", offered_rate=round(rate, 1))

    async def one(request: bytes, scheduled: float) -> None:
        try:
            answer = await pool.send(request)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            run.errors += 1
            return
        if ok(answer):
            run.ok += 1
            run.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
        else:
            run.errors += 1

    count = min(len(requests), int(rate * seconds))
    async with Meter(pids) as meter:
        tasks = await _schedule(count, rate, lambda i, at: one(requests[i], at))
        run.errors += await _finish(tasks, GRACE_SECONDS)
    run.seconds = count / rate
    return meter.fill(run)


# An open-loop run waits this long past its schedule for answers; later ones count as errors
# (a server that cannot keep up would otherwise stretch the run without bound).
GRACE_SECONDS = 15.0


async def _finish(tasks: Sequence[asyncio.Future[None]], grace: float) -> int:
    """Wait up to ``grace`` seconds for ``tasks``; cancel the rest and return how many."""
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    return len(pending)


async def _schedule(
    count: int, rate: float, start: Callable[[int, float], Awaitable[None]]
) -> list[asyncio.Future[None]]:
    """Start ``count`` coroutines at a fixed rate; returns them (still running)."""
    tasks: list[asyncio.Future[None]] = []
    begin = time.perf_counter()
    for index in range(count):
        scheduled = begin + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(start(index, scheduled)))
    return tasks


async def open_loop_flows(
    target: str,
    flow: Callable[[int, float], Awaitable[dict[str, float] | None]],
    *,
    rate: float,
    seconds: float,
    pids: Sequence[int],
) -> Run:
    """Start flow i at ``i / rate``; each returns its phase timings (ms) or None on failure."""
    run = Run(target, "open", offered_rate=round(rate, 1))
    phases: dict[str, list[float]] = {}

    async def one(index: int, scheduled: float) -> None:
        try:
            timings = await flow(index, scheduled)
        except (OSError, asyncio.IncompleteReadError, ValueError, KeyError, TimeoutError):
            timings = None
        if timings is None:
            run.errors += 1
            return
        run.ok += 1
        run.latencies_ms.append(timings["total"])
        for name, value in timings.items():
            phases.setdefault(name, []).append(value)

    count = int(rate * seconds)
    async with Meter(pids) as meter:
        tasks = await _schedule(count, rate, one)
        run.errors += await _finish(tasks, GRACE_SECONDS + 30)
    run.seconds = meter.elapsed
    run.extra["phases"] = _phase_summary(phases)
    return meter.fill(run)


async def closed_loop_flows(
    target: str,
    flow: Callable[[int, float], Awaitable[dict[str, float] | None]],
    *,
    concurrency: int,
    seconds: float,
    pids: Sequence[int],
) -> Run:
    """``concurrency`` workers run flows back to back; only flows finished in time count."""
    run = Run(target, "closed")
    phases: dict[str, list[float]] = {}
    counter = iter(range(10**9))
    begin = time.perf_counter()
    deadline = begin + seconds

    async def worker() -> None:
        for index in counter:
            started = time.perf_counter()
            if started >= deadline:
                return
            try:
                timings = await flow(index, started)
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError, TimeoutError):
                timings = None
            if time.perf_counter() > deadline:
                return
            if timings is None:
                run.errors += 1
                continue
            run.ok += 1
            run.latencies_ms.append(timings["total"])
            for name, value in timings.items():
                phases.setdefault(name, []).append(value)

    async with Meter(pids) as meter:
        workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        await asyncio.sleep(seconds)
        await _finish(workers, 30.0)  # sales in flight at the deadline finish, uncounted
    run.seconds = seconds
    run.extra["phases"] = _phase_summary(phases)
    return meter.fill(run)


def _phase_summary(phases: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "p50": round(percentile(values, 50), 3),
            "p99": round(percentile(values, 99), 3),
        }
        for name, values in phases.items()
    }
