"""The six benchmarks. Each alternates the service and its bare baseline (A B A B ...) within one
run of the harness, with the same load generator, and keeps every repetition."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from benchmarks import procs
from benchmarks.baselines import FORWARD_PREFIX
from benchmarks.fixtures import (
    BARE_MSN,
    SERVICE_MSN,
    BenchTill,
    Signer,
    SimulatorApi,
    delete_tills,
    ingest_events,
    insert_tills,
    signed_requests,
)
from benchmarks.http import HttpPool
from benchmarks.loads import (
    Meter,
    Run,
    closed_loop,
    closed_loop_flows,
    open_loop,
    open_loop_flows,
)
from benchmarks.procs import Proc

Log = Callable[[str], None]


@dataclass
class Scale:
    """How big each benchmark is; ``quick()`` is the toy scale of the smoke test."""

    reps: int = 3
    ingest_seconds: float = 3.0
    ingest_concurrency: int = 32
    ingest_rate_cap: float = 4000.0  # events pre-signed per second of run
    # Scans per second of benchmark 2: the first rate is the one the absolute targets (2a, 2b)
    # are stated at; issue 15's ratio targets hold at each.
    scan_rates: tuple[float, ...] = (20.0, 100.0)
    scan_seconds: float = 6.0
    scan_tills: int = 1000  # at least; more when the runs need more tills with a waiting sale
    checkout_tills: int = 1000
    checkout_seconds: float = 8.0
    checkout_concurrency: int = 32
    checkout_target_rate: float = 150.0
    scale_sizes: tuple[int, ...] = (100, 10_000, 100_000)
    scale_rate: float = 10.0
    scale_seconds: float = 6.0
    slow_seconds: float = 4.0
    slow_latency_ms: int = 2000
    slow_checkouts: int = 40
    restarts: int = 3

    @classmethod
    def quick(cls) -> Scale:
        return cls(
            reps=1, ingest_seconds=0.5, ingest_concurrency=4, ingest_rate_cap=400, scan_rates=(10,),
            scan_seconds=0.5, scan_tills=10, checkout_tills=10, checkout_seconds=1.0,
            checkout_concurrency=2, checkout_target_rate=4, scale_sizes=(5, 50), scale_rate=4,
            scale_seconds=0.5, slow_seconds=0.5, slow_latency_ms=200, slow_checkouts=2,
            restarts=1,
        )  # fmt: skip


@dataclass
class Bench:
    """Everything the benchmarks share."""

    scale: Scale
    dsn: str
    service: Proc
    simulator: Proc
    bare_asyncpg: Proc
    bare_sqlalchemy: Proc
    forwarder: Proc
    sim: SimulatorApi
    pools: dict[str, HttpPool]
    signer: Signer
    log: Log
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def sa_url(self) -> str:
        return self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)

    def pool(self, proc: Proc) -> HttpPool:
        if proc.name not in self.pools:
            self.pools[proc.name] = HttpPool(proc.url)
        return self.pools[proc.name]

    async def scalar(self, sql: str, *args: Any) -> Any:
        connection = await asyncpg.connect(self.dsn)
        try:
            return await connection.fetchval(sql, *args)
        finally:
            await connection.close()

    async def settle(self, within: float = 120.0) -> float:
        """Wait until the service has no pending inbox or outbox work; returns seconds taken."""
        started = time.perf_counter()
        sql = (
            "SELECT (SELECT count(*) FROM webhook_inbox WHERE status = 'PENDING')"
            " + (SELECT count(*) FROM outbox WHERE status IN ('PENDING', 'IN_FLIGHT'))"
        )
        connection = await asyncpg.connect(self.dsn)
        try:
            while time.perf_counter() - started < within:
                if await connection.fetchval(sql) == 0:
                    break
                await asyncio.sleep(0.1)
            else:
                self.log(f"  (service still busy after {within:.0f} s; going on)")
        finally:
            await connection.close()
        return time.perf_counter() - started


# ---- statistics over repetitions ------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median with min–max of per-repetition values."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {
        "median": round(statistics.median(clean), 3),
        "min": round(min(clean), 3),
        "max": round(max(clean), 3),
    }


def ratios(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Per-repetition a/b (the runs of one repetition were interleaved), then median, min–max."""
    return spread([x / y if y else math.nan for x, y in zip(a, b, strict=True)])


def target(
    ident: str, text: str, measured: str, ratio: dict[str, float] | None, met: bool | None
) -> dict[str, Any]:
    return {"id": ident, "target": text, "measured": measured, "ratio": ratio, "met": met}


# ---- 1 webhook ingest ---------------------------------------------------------------------


INGEST_PATH = f"/webhooks/vipps/{SERVICE_MSN}"
BARE_PATH = f"/ingest/{SERVICE_MSN}"


async def bench_ingest(b: Bench) -> None:
    s = b.scale
    targets = [
        ("bare-asyncpg", b.bare_asyncpg, BARE_PATH),
        ("service", b.service, INGEST_PATH),
        ("bare-sqlalchemy", b.bare_sqlalchemy, BARE_PATH),
    ]
    closed: dict[str, list[Run]] = {name: [] for name, _, _ in targets}
    drains: list[float] = []
    for rep in range(s.reps):
        for name, proc, path in targets:
            pool = b.pool(proc)
            bodies = ingest_events(f"c{rep}{name}", int(s.ingest_rate_cap * s.ingest_seconds))
            requests = signed_requests(pool, path, b.signer, bodies)
            run = await closed_loop(
                name,
                pool,
                requests,
                concurrency=s.ingest_concurrency,
                seconds=s.ingest_seconds,
                pids=[proc.pid],
            )
            if name == "service":
                drain = await b.settle()
                drains.append(drain)
                run.extra["backlogDrainSeconds"] = round(drain, 2)
            closed[name].append(run)
            b.log(
                f"  ingest closed rep {rep + 1} {name}: {run.throughput:.0f}/s"
                f" p99 {run.p(99):.1f} ms"
            )
    half = statistics.median(r.throughput for r in closed["bare-asyncpg"]) / 2
    opened: dict[str, list[Run]] = {name: [] for name, _, _ in targets}
    for rep in range(s.reps):
        for name, proc, path in targets:
            pool = b.pool(proc)
            bodies = ingest_events(f"o{rep}{name}", int(half * s.ingest_seconds) + 1)
            requests = signed_requests(pool, path, b.signer, bodies)
            run = await open_loop(
                name, pool, requests, rate=half, seconds=s.ingest_seconds, pids=[proc.pid]
            )
            if name == "service":
                await b.settle()
            opened[name].append(run)
            b.log(f"  ingest open@{half:.0f}/s rep {rep + 1} {name}: p99 {run.p(99):.1f} ms")
    thr = ratios(
        [r.throughput for r in closed["service"]], [r.throughput for r in closed["bare-asyncpg"]]
    )
    p99 = ratios([r.p(99) for r in opened["service"]], [r.p(99) for r in opened["bare-asyncpg"]])
    orm = ratios(
        [r.throughput for r in closed["bare-sqlalchemy"]],
        [r.throughput for r in closed["bare-asyncpg"]],
    )
    b.results["ingest"] = {
        "halfBareRate": round(half, 1),
        "halfServiceRate": round(statistics.median(r.throughput for r in closed["service"]) / 2, 1),
        "closed": {k: [r.summary() for r in v] for k, v in closed.items()},
        "open": {k: [r.summary() for r in v] for k, v in opened.items()},
        "throughputRatio": thr,
        "sqlalchemyThroughputRatio": orm,
        "p99AtHalfRatio": p99,
        "serviceBacklogDrainSeconds": spread(drains),
        "targets": [
            target(
                "1a",
                "webhook ingest throughput ≥ 0.8× bare asyncpg insert",
                f"{thr['median']:.2f}× ({thr['min']:.2f}–{thr['max']:.2f})",
                thr,
                thr["median"] >= 0.8,
            ),
            target(
                "1b",
                "p99 at half the bare maximum ≤ 1.5× bare p99",
                f"{p99['median']:.2f}× ({p99['min']:.2f}–{p99['max']:.2f})",
                p99,
                p99["median"] <= 1.5,
            ),
        ],
    }


# ---- 6 slow provider ----------------------------------------------------------------------


async def bench_slow_provider(b: Bench) -> None:
    s = b.scale
    # Half the service's own maximum: a rate it sustains, so the p99 measures the intake and not
    # a queue that grows with or without the fault.
    rate = max(1.0, b.results["ingest"]["halfServiceRate"])
    tills = await insert_tills(b.dsn, "slow", s.reps * 2 * s.slow_checkouts)
    pool = b.pool(b.service)
    runs: dict[str, list[Run]] = {"normal": [], "slow": []}
    cursor = 0
    count = int(rate * s.slow_seconds) + 1
    every = max(1, count // max(1, s.slow_checkouts))
    for rep in range(s.reps):
        for mode in ("normal", "slow"):
            batch = tills[cursor : cursor + s.slow_checkouts]
            cursor += s.slow_checkouts
            await _create_checkouts(b, batch)
            await b.settle()
            rule = None
            if mode == "slow":
                rule = await b.sim.control(
                    "POST",
                    "/_sim/faults",
                    {"kind": "latency", "path": "/*", "latencyMs": s.slow_latency_ms},
                )
            bodies = ingest_events(f"s{rep}{mode}", count, [t.qr_id for t in batch], every)
            requests = signed_requests(pool, INGEST_PATH, b.signer, bodies)
            run = await open_loop(
                mode, pool, requests, rate=rate, seconds=s.slow_seconds, pids=[b.service.pid]
            )
            inflight = await b.scalar(
                "SELECT count(*) FROM outbox WHERE status IN ('PENDING', 'IN_FLIGHT')"
            )
            run.extra["vippsCallsQueuedAtEnd"] = inflight
            if rule is not None:
                await b.sim.control("DELETE", f"/_sim/faults/{rule['id']}")
            await b.settle()
            runs[mode].append(run)
            b.log(f"  slow provider rep {rep + 1} {mode}: p99 {run.p(99):.1f} ms")
    ratio = ratios([r.p(99) for r in runs["slow"]], [r.p(99) for r in runs["normal"]])
    b.results["slowProvider"] = {
        "rate": rate,
        "latencyMs": s.slow_latency_ms,
        "runs": {k: [r.summary() for r in v] for k, v in runs.items()},
        "p99Ratio": ratio,
        "targets": [
            target(
                "6",
                f"ingest p99 with Vipps answering in {s.slow_latency_ms / 1000:g} s ≤ 1.2× normal",
                f"{ratio['median']:.2f}× ({ratio['min']:.2f}–{ratio['max']:.2f})",
                ratio,
                ratio["median"] <= 1.2,
            )
        ],
    }


async def _create_checkouts(b: Bench, tills: Sequence[BenchTill]) -> dict[str, dict[str, Any]]:
    """One checkout waiting for a scan per till; returns them by till id."""
    pool = b.pool(b.service)
    created: dict[str, dict[str, Any]] = {}
    queue = list(tills)

    async def worker() -> None:
        while queue:
            till = queue.pop()
            answer = await pool.json(
                "POST", f"/api/v1/tills/{till.id}/checkouts", {"amount": 1000}, till.auth
            )
            if answer.status != 201:
                raise RuntimeError(f"create checkout {answer.status}: {answer.body[:300]!r}")
            created[till.id] = answer.json()  # type: ignore[assignment]

    await asyncio.gather(*(worker() for _ in range(8)))
    return created


# ---- 2 scan to payment request ------------------------------------------------------------


async def bench_scan_to_request(b: Bench) -> None:
    s = b.scale
    per_run = {rate: int(rate * s.scan_seconds) for rate in s.scan_rates}
    needed = sum(per_run.values()) * s.reps
    tills = await insert_tills(b.dsn, "scan", max(s.scan_tills, needed))
    await b.sim.put_qrs([t.qr_id for t in tills], SERVICE_MSN)
    bare_qrs = [str(uuid.uuid4()) for _ in range(len(tills))]
    await b.sim.put_qrs(bare_qrs, BARE_MSN)
    b.results["_bareQrs"] = bare_qrs
    registration = await _register_forwarder(b)
    # A sale waits at each till that will be scanned; the other tills are registered, idle.
    checkouts = await _create_checkouts(b, tills[:needed])
    await b.settle()
    reference_to_qr = {checkouts[t.id]["reference"]: t.qr_id for t in tills if t.id in checkouts}
    at_rate: list[dict[str, Any]] = []
    cursor = 0
    for rate in s.scan_rates:
        count = per_run[rate]
        runs: dict[str, list[Run]] = {"service": [], "bare-forwarder": []}
        for rep in range(s.reps):
            for name in ("service", "bare-forwarder"):
                if name == "service":
                    qrs, msn, proc = (
                        [t.qr_id for t in tills[cursor : cursor + count]],
                        SERVICE_MSN,
                        b.service,
                    )
                else:
                    qrs, msn, proc = bare_qrs[cursor : cursor + count], BARE_MSN, b.forwarder
                run = await _scan_run(b, name, rate, qrs, msn, proc, reference_to_qr)
                runs[name].append(run)
                b.log(
                    f"  scan→request {rate:g}/s rep {rep + 1} {name}: "
                    f"p50 {run.p(50):.1f} p99 {run.p(99):.1f} ms"
                )
            cursor += count
        at_rate.append(_scan_figures(rate, runs))
    await _unregister_forwarder(b, registration)
    # End the requested payments (the customer lets them expire: one webhook each) so the
    # reconciler does not poll them during benchmark 3.
    used = [checkouts[t.id]["reference"] for t in tills[:cursor] if t.id in checkouts]
    await asyncio.gather(*(_expire_quietly(b, reference) for reference in used))
    await _wait_no_requested(b, within=180)
    first = at_rate[0]
    p50, p99 = first["p50Ms"], first["p99Ms"]
    targets = [
        target("2a", f"scan → payment request p50 < 5 ms (at {first['rate']:g}/s)",
               f"{p50['median']:.1f} ms ({p50['min']:.1f}–{p50['max']:.1f})", None,
               p50["median"] < 5),
        target("2b", f"scan → payment request p99 < 25 ms (at {first['rate']:g}/s)",
               f"{p99['median']:.1f} ms ({p99['min']:.1f}–{p99['max']:.1f})", None,
               p99["median"] < 25),
    ]  # fmt: skip
    for index, figures in enumerate(at_rate):
        r50, r99 = figures["p50Ratio"], figures["p99Ratio"]
        targets.append(
            target(
                f"2{'cdefg'[index]}",
                f"at {figures['rate']:g} scans/s: p50 ≤ 1.5× and p99 ≤ 2× the bare forwarder",
                f"p50 {r50['median']:.2f}× ({r50['min']:.2f}–{r50['max']:.2f}), "
                f"p99 {r99['median']:.2f}× ({r99['min']:.2f}–{r99['max']:.2f})",
                r99,
                r50["median"] <= 1.5 and r99["median"] <= 2,
            )
        )
    b.results["scanToRequest"] = {
        "tills": len(tills),
        "rates": at_rate,
        # The first rate's runs, as before several rates were measured (the plot reads these).
        "rate": first["rate"],
        "runs": first["runs"],
        "targets": targets,
    }


def _scan_figures(rate: float, runs: dict[str, list[Run]]) -> dict[str, Any]:
    service, bare = runs["service"], runs["bare-forwarder"]
    return {
        "rate": rate,
        "runs": {k: [r.summary() for r in v] for k, v in runs.items()},
        "p50Ms": spread([r.p(50) for r in service]),
        "p99Ms": spread([r.p(99) for r in service]),
        "p50Ratio": ratios([r.p(50) for r in service], [r.p(50) for r in bare]),
        "p99Ratio": ratios([r.p(99) for r in service], [r.p(99) for r in bare]),
    }


async def _register_forwarder(b: Bench) -> str:
    answer = await b.sim.pool.json(
        "POST",
        "/webhooks/v1/webhooks",
        {"url": f"{b.forwarder.url}/hook", "events": ["user.checked-in.v1"]},
        b.sim.headers(BARE_MSN),
    )
    if answer.status >= 300:
        raise RuntimeError(f"forwarder registration {answer.status}: {answer.body[:200]!r}")
    ident: str = answer.json()["id"]  # type: ignore[index]
    return ident


async def _unregister_forwarder(b: Bench, ident: str) -> None:
    await b.sim.pool.request(
        "DELETE", f"/webhooks/v1/webhooks/{ident}", b"", b.sim.headers(BARE_MSN)
    )


async def _expire_quietly(b: Bench, reference: str) -> None:
    # Not requested (the service never sent it) or already final: nothing to end.
    await b.sim.pool.json("POST", f"/_sim/payments/{reference}/expire", {"msn": SERVICE_MSN})


async def _wait_no_requested(b: Bench, within: float = 60.0) -> None:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        busy = await b.scalar(
            "SELECT count(*) FROM checkouts WHERE state IN "
            "('IDENTIFYING', 'PAYMENT_REQUESTED', 'AUTHORIZED', 'CANCELLING')"
        )
        if busy == 0:
            break
        await asyncio.sleep(0.2)
    else:
        b.log(f"  ({busy} sales still open after {within:.0f} s; going on)")
    await b.settle()


async def _scan_run(
    b: Bench,
    name: str,
    rate: float,
    qrs: list[str],
    msn: str,
    proc: Proc,
    reference_to_qr: dict[str, str],
) -> Run:
    run = Run(name, "open", offered_rate=rate)
    started = time.perf_counter()

    async def scan(index: int, _at: float) -> None:
        await b.sim.scan(qrs[index], msn)

    async with Meter([proc.pid]) as meter:
        begin = time.perf_counter()
        tasks = []
        for index in range(len(qrs)):
            delay = begin + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(scan(index, 0.0)))
        await asyncio.gather(*tasks)
        await _await_payments(b, qrs, msn, reference_to_qr)
    run.seconds = time.perf_counter() - started
    sent: dict[str, float] = {}
    for delivery in await b.sim.control("GET", "/_sim/deliveries?event=user.checked-in.v1"):
        qr_id = delivery["payload"]["merchantQrId"]
        if delivery["attempts"]:
            sent.setdefault(qr_id, delivery["attempts"][0]["sentAtEpoch"])
    arrived: dict[str, float] = {}
    for entry in await b.sim.control("GET", "/_sim/ledger?operation=createPayment"):
        qr_id = _qr_of(entry["reference"] or "", reference_to_qr)
        if qr_id:
            arrived.setdefault(qr_id, entry["receivedAtEpoch"])
    for qr_id in qrs:
        if qr_id in sent and qr_id in arrived:
            run.ok += 1
            run.latencies_ms.append((arrived[qr_id] - sent[qr_id]) * 1000)
        else:
            run.errors += 1
    return meter.fill(run)


async def _await_payments(
    b: Bench, qrs: list[str], msn: str, reference_to_qr: dict[str, str], within: float = 10.0
) -> None:
    wanted = set(qrs)
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        ledger = await b.sim.control("GET", "/_sim/ledger?operation=createPayment")
        seen = set()
        for entry in ledger:
            qr_id = _qr_of(entry["reference"] or "", reference_to_qr)
            if qr_id in wanted:
                seen.add(qr_id)
        if seen >= wanted:
            return
        await asyncio.sleep(0.2)


def _qr_of(reference: str, reference_to_qr: dict[str, str]) -> str | None:
    """The QR a create-payment belongs to: the service's checkout, or the forwarder's."""
    if reference in reference_to_qr:
        return reference_to_qr[reference]
    if reference.startswith(FORWARD_PREFIX):
        return reference[len(FORWARD_PREFIX) :]
    return None


# ---- 3 full checkouts and 4 scale ---------------------------------------------------------


class TillPool:
    """Tills free for a new sale; a flow takes one and gives it back when the sale is final."""

    def __init__(self, tills: Sequence[Any]) -> None:
        self.free: asyncio.Queue[Any] = asyncio.Queue()
        for till in tills:
            self.free.put_nowait(till)


def service_flow(
    b: Bench, tills: TillPool
) -> Callable[[int, float], Awaitable[dict[str, float] | None]]:
    pool = b.pool(b.service)

    async def poll_until(
        checkout: dict[str, Any], till: BenchTill, done: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        while not done(checkout):
            if checkout["final"]:
                raise ValueError(f"checkout ended {checkout['state']}")
            answer = await pool.request(
                "GET",
                f"/api/v1/checkouts/{checkout['id']}?wait=10&version={checkout['version']}",
                headers=till.auth,
            )
            if answer.status != 200:
                raise ValueError(f"long-poll {answer.status}")
            checkout = answer.json()  # type: ignore[assignment]
        return checkout

    async def flow(_index: int, scheduled: float) -> dict[str, float] | None:
        till: BenchTill = await tills.free.get()
        try:
            t0 = time.perf_counter()
            answer = await pool.json(
                "POST", f"/api/v1/tills/{till.id}/checkouts", {"amount": 1000}, till.auth
            )
            if answer.status != 201:
                return None
            checkout: dict[str, Any] = answer.json()  # type: ignore[assignment]
            t1 = time.perf_counter()
            await b.sim.scan(till.qr_id, SERVICE_MSN)
            t2 = time.perf_counter()
            checkout = await asyncio.wait_for(
                poll_until(checkout, till, lambda c: c["paymentSent"]), 30
            )
            t3 = time.perf_counter()
            await b.sim.approve(checkout["reference"], SERVICE_MSN)
            t4 = time.perf_counter()
            checkout = await asyncio.wait_for(
                poll_until(checkout, till, lambda c: c["state"] == "CAPTURED"), 30
            )
            t5 = time.perf_counter()
        finally:
            tills.free.put_nowait(till)
        ms = 1000.0
        return {
            "total": (t5 - t0) * ms,
            "queued": (t0 - scheduled) * ms,
            "create": (t1 - t0) * ms,
            "scan": (t2 - t1) * ms,
            "scanToPaymentSent": (t3 - t2) * ms,
            "approve": (t4 - t3) * ms,
            "approveToCaptured": (t5 - t4) * ms,
            "service": ((t1 - t0) + (t3 - t2) + (t5 - t4)) * ms,
        }

    return flow


def bare_flow(
    b: Bench, qrs: TillPool
) -> Callable[[int, float], Awaitable[dict[str, float] | None]]:
    """The same sale straight against the simulator: the floor the service adds to."""

    async def flow(index: int, scheduled: float) -> dict[str, float] | None:
        qr_id: str = await qrs.free.get()
        try:
            t0 = time.perf_counter()
            scan = await b.sim.scan(qr_id, BARE_MSN)
            t1 = time.perf_counter()
            reference = f"bare-{uuid.uuid4().hex}"
            await b.sim.create_payment(reference, scan["customerToken"], BARE_MSN)
            t2 = time.perf_counter()
            await b.sim.approve(reference, BARE_MSN)
            t3 = time.perf_counter()
            await b.sim.capture(reference, BARE_MSN)
            t4 = time.perf_counter()
        finally:
            qrs.free.put_nowait(qr_id)
        ms = 1000.0
        return {
            "total": (t4 - t0) * ms,
            "queued": (t0 - scheduled) * ms,
            "scan": (t1 - t0) * ms,
            "create": (t2 - t1) * ms,
            "approve": (t3 - t2) * ms,
            "capture": (t4 - t3) * ms,
            "service": ((t2 - t1) + (t4 - t3)) * ms,
        }

    return flow


def _service_p99(run: Run) -> float:
    return float(run.extra["phases"]["service"]["p99"])


async def database_counts(url: str) -> tuple[float, float]:
    """(statements, transactions) the service process has sent so far, from its /metrics."""
    pool = HttpPool(url)
    try:
        answer = await pool.request("GET", "/metrics")
    finally:
        pool.close()
    values: dict[str, float] = {}
    for line in answer.body.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in ("vipps_pos_db_statements_total", "vipps_pos_db_transactions_total"):
            values[name] = float(value)
    return values["vipps_pos_db_statements_total"], values["vipps_pos_db_transactions_total"]


async def bench_checkouts(b: Bench) -> None:
    s = b.scale
    tills = await insert_tills(b.dsn, "co", s.checkout_tills)
    await b.sim.put_qrs([t.qr_id for t in tills], SERVICE_MSN)
    b.results["_checkoutTills"] = tills
    till_pool = TillPool(tills)
    qr_pool = TillPool(b.results["_bareQrs"][: s.checkout_tills])
    closed: dict[str, list[Run]] = {"service": [], "bare-vipps": []}
    opened: dict[str, list[Run]] = {"service": [], "bare-vipps": []}
    per_sale: list[tuple[float, float]] = []
    rate = 0.0
    for rep in range(s.reps):
        for name, flow, pids in (
            ("service", service_flow(b, till_pool), [b.service.pid]),
            ("bare-vipps", bare_flow(b, qr_pool), [b.simulator.pid]),
        ):
            before = await database_counts(b.service.url) if name == "service" else (0.0, 0.0)
            run = await closed_loop_flows(
                name,
                flow,
                concurrency=s.checkout_concurrency,
                seconds=s.checkout_seconds,
                pids=pids,
            )
            closed[name].append(run)
            await _wait_no_requested(b)
            if name == "service":
                await b.settle()
                after = await database_counts(b.service.url)
                # Everything the service did for these sales (and for the few a run cut off):
                # till requests, webhooks, Vipps calls and their records, the reconciler's polls.
                sales = max(1, run.ok + run.errors)
                per_sale.append(((after[0] - before[0]) / sales, (after[1] - before[1]) / sales))
                run.extra["statementsPerSale"] = round(per_sale[-1][0], 1)
                run.extra["transactionsPerSale"] = round(per_sale[-1][1], 1)
            b.log(
                f"  checkouts closed rep {rep + 1} {name}: {run.throughput:.1f}/s"
                f" p99 {run.p(99):.0f} ms"
            )
        if not rate:
            best = statistics.median(r.throughput for r in closed["service"])
            rate = max(1.0, min(s.checkout_target_rate, best / 2))
        for name, flow, pids in (
            ("service", service_flow(b, till_pool), [b.service.pid]),
            ("bare-vipps", bare_flow(b, qr_pool), [b.simulator.pid]),
        ):
            run = await open_loop_flows(
                name, flow, rate=rate, seconds=s.checkout_seconds, pids=pids
            )
            opened[name].append(run)
            await _wait_no_requested(b)
            b.log(
                f"  checkouts open@{rate:.0f}/s rep {rep + 1} {name}:"
                f" service-path p99 {_service_p99(run):.0f} ms"
            )
    thr = spread([r.throughput for r in closed["service"]])
    bare_thr = spread([r.throughput for r in closed["bare-vipps"]])
    added = spread(
        [
            _service_p99(a) - _service_p99(c)
            for a, c in zip(opened["service"], opened["bare-vipps"], strict=True)
        ]
    )
    rss = max(r.target_rss_mb for r in closed["service"] + opened["service"])
    statements = spread([p[0] for p in per_sale])
    transactions = spread([p[1] for p in per_sale])
    cpu_per_sale = spread(
        [r.target_cpu / 100.0 / r.throughput * 1000.0 for r in closed["service"] if r.throughput]
    )
    b.results["checkouts"] = {
        "statementsPerSale": statements,
        "transactionsPerSale": transactions,
        "serviceCpuMsPerSale": cpu_per_sale,
        "simulatorCpuPercent": spread([r.target_cpu for r in closed["bare-vipps"]]),
        "loadgenCpuPercent": spread([r.loadgen_cpu for r in closed["service"]]),
        "tills": s.checkout_tills,
        "concurrency": s.checkout_concurrency,
        "latencyRate": rate,
        "closed": {k: [r.summary() for r in v] for k, v in closed.items()},
        "open": {k: [r.summary() for r in v] for k, v in opened.items()},
        "throughput": thr,
        "bareThroughput": spread([r.throughput for r in closed["bare-vipps"]]),
        "addedP99Ms": added,
        "serviceRssMb": round(rss, 1),
        "targets": [
            target("3a", f"≥ {s.checkout_target_rate:g} checkouts/s", f"{thr['median']:.1f}/s "
                   f"({thr['min']:.1f}–{thr['max']:.1f})", None,
                   thr["median"] >= s.checkout_target_rate),
            target("3a'", "≥ 0.8× bare-vipps (the same sale straight against the simulator)",
                   f"{thr['median'] / bare_thr['median']:.2f}×", None,
                   thr["median"] >= 0.8 * bare_thr["median"]),
            target("3a''", "service CPU per sale ≤ 6.7 ms",
                   f"{cpu_per_sale['median']:.1f} ms ({cpu_per_sale['min']:.1f}–"
                   f"{cpu_per_sale['max']:.1f})", None, cpu_per_sale["median"] <= 6.7),
            target("3b", f"p99 added latency < 50 ms (at {rate:.0f} checkouts/s)",
                   f"{added['median']:.1f} ms ({added['min']:.1f}–{added['max']:.1f})", None,
                   added["median"] < 50),
            target("3c", "database round trips per sale (statements; transactions)",
                   f"{statements['median']:.1f}; {transactions['median']:.1f}", None, None),
        ],
    }  # fmt: skip


async def bench_workers(b: Bench) -> None:
    """The closed-loop checkouts of benchmark 3 against ``serve --workers 2`` on the same
    database and port, beside the one-process figures of the same run: how the service scales
    with processes. The machine's cores are shared with the load generator, the simulator and
    Postgres, so this shows the direction for a deployer, not a capacity."""
    s = b.scale
    one = b.results["checkouts"]["closed"]["service"]
    b.service.stop()
    two = procs.service_proc(
        b.service.log_dir, b.sa_url, b.simulator.url, b.service.port, workers=2
    )
    runs: list[Run] = []
    try:
        await two.start()
        till_pool = TillPool(b.results["_checkoutTills"])
        for rep in range(s.reps):
            run = await closed_loop_flows(
                "service --workers 2",
                service_flow(b, till_pool),
                concurrency=s.checkout_concurrency,
                seconds=s.checkout_seconds,
                pids=procs.process_tree(two.pid),
            )
            runs.append(run)
            await _wait_no_requested(b)
            b.log(f"  2 workers rep {rep + 1}: {run.throughput:.1f}/s")
    finally:
        two.stop()
        await b.service.start()
    thr_one = spread([r["throughput"] for r in one])
    thr_two = spread([r.throughput for r in runs])
    ratio = thr_two["median"] / thr_one["median"] if thr_one["median"] else math.nan
    b.results["workers"] = {
        "runs": {"service --workers 2": [r.summary() for r in runs]},
        "oneWorkerThroughput": thr_one,
        "twoWorkerThroughput": thr_two,
        "targets": [
            target("7", "checkouts/s with 2 worker processes vs 1 (same run)",
                   f"{thr_two['median']:.1f}/s vs {thr_one['median']:.1f}/s ({ratio:.2f}×)",
                   None, None),
        ],
    }  # fmt: skip


async def bench_scale(b: Bench) -> None:
    s = b.scale
    active = await insert_tills(b.dsn, "sc", min(s.scale_sizes))
    await b.sim.put_qrs([t.qr_id for t in active], SERVICE_MSN)
    till_pool = TillPool(active)
    # Benchmark 3's latency rate: one the service sustains, so p99 reflects the data size and not
    # a queue growing at a rate it cannot keep up with.
    rate = min(s.scale_rate, b.results["checkouts"]["latencyRate"])
    runs: dict[int, list[Run]] = {n: [] for n in s.scale_sizes}
    for rep in range(s.reps):
        filler = 0
        for size in s.scale_sizes:
            wanted = size - len(active)
            if wanted > filler:
                await insert_tills(b.dsn, f"filler{rep}-{filler}", wanted - filler)
                filler = wanted
                async with asyncpg.create_pool(b.dsn, min_size=1, max_size=1) as pool:
                    await pool.execute("ANALYZE tills")
            run = await open_loop_flows(
                f"{size} tills",
                service_flow(b, till_pool),
                rate=rate,
                seconds=s.scale_seconds,
                pids=[b.service.pid],
            )
            run.extra["registeredTills"] = await b.scalar("SELECT count(*) FROM tills")
            runs[size].append(run)
            await _wait_no_requested(b)
            b.log(f"  scale rep {rep + 1} {size} tills: p99 {run.p(99):.0f} ms")
        await delete_tills(b.dsn, f"filler{rep}")
    small, large = min(s.scale_sizes), max(s.scale_sizes)
    ratio = ratios([r.p(99) for r in runs[large]], [r.p(99) for r in runs[small]])
    b.results["scale"] = {
        "rate": rate,
        "runs": {str(k): [r.summary() for r in v] for k, v in runs.items()},
        "p99Ratio": ratio,
        "targets": [
            target("4", f"p99 at {large:,} tills ≤ 1.2× p99 at {small:,}",
                   f"{ratio['median']:.2f}× ({ratio['min']:.2f}–{ratio['max']:.2f})", ratio,
                   ratio["median"] <= 1.2),
        ],
    }  # fmt: skip


# ---- 5 footprint ----------------------------------------------------------------------------


async def bench_footprint(b: Bench) -> None:
    s = b.scale
    for _ in range(s.restarts):
        for proc in (b.bare_asyncpg, b.service):
            proc.stop()
            await proc.start()
    service = b.service.start_to_ready[-s.restarts :]
    bare = b.bare_asyncpg.start_to_ready[-s.restarts :]
    ready = spread(service)
    rss = b.results["checkouts"]["serviceRssMb"]
    b.results["footprint"] = {
        "serviceStartToReadySeconds": ready,
        "bareStartToReadySeconds": spread(bare),
        "startRatio": ratios(service, bare),
        "serviceRssMbUnderCheckouts": rss,
        "targets": [
            target("5a", "RSS per service process under benchmark 3 ≤ 150 MB", f"{rss:.0f} MB",
                   None, rss <= 150),
            target("5b", "start to ready ≤ 2 s", f"{ready['median']:.2f} s "
                   f"({ready['min']:.2f}–{ready['max']:.2f})", None, ready["median"] <= 2),
        ],
    }  # fmt: skip
