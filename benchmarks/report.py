"""The result set: JSON (everything), a Markdown summary, a PNG plot (matplotlib, Agg)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import orjson


def _stem(data: dict[str, Any]) -> str:
    meta = data["meta"]
    return f"{meta['date'][:10]}-{meta['commit']}"


def write(data: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem(data)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    paths[0].write_bytes(
        orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    )
    paths[1].write_text(markdown(data, paths[2].name))
    plot(data, paths[2])
    return paths


def all_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    found = [t for r in data["results"].values() for t in r.get("targets", [])]
    return sorted(found, key=lambda t: t["id"])


def targets_table(data: dict[str, Any]) -> str:
    lines = ["| # | Target | Measured (median, min–max) | Met |", "|---|---|---|---|"]
    for t in all_targets(data):
        met = "—" if t["met"] is None else ("**met**" if t["met"] else "**not met**")
        lines.append(f"| {t['id']} | {t['target']} | {t['measured']} | {met} |")
    return "\n".join(lines)


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _runs_table(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "| Target | Reps | Throughput /s | p50 ms | p90 ms | p99 ms | Errors | Load gen CPU % "
        "| Target CPU % | Target RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in groups.items():
        cells = [_median(runs, k) for k in ("throughput", "p50", "p90", "p99")]
        lines.append(
            f"| {name} | {len(runs)} | {cells[0]:.1f} | {cells[1]:.2f} | {cells[2]:.2f} "
            f"| {cells[3]:.2f} | {sum(r['errors'] for r in runs)} "
            f"| {_median(runs, 'loadgenCpuPercent'):.0f} | {_median(runs, 'targetCpuPercent'):.0f} "
            f"| {max(r['targetRssMb'] for r in runs):.0f} |"
        )
    return lines


def _phases_table(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = ["| Target | Phase | p50 ms | p99 ms |", "|---|---|---|---|"]
    for name, runs in groups.items():
        phases = runs[0].get("phases", {}) if runs else {}
        for phase in phases:
            p50 = statistics.median(r["phases"][phase]["p50"] for r in runs)
            p99 = statistics.median(r["phases"][phase]["p99"] for r in runs)
            lines.append(f"| {name} | {phase} | {p50:.1f} | {p99:.1f} |")
    return lines


def markdown(data: dict[str, Any], plot_name: str) -> str:
    meta, results = data["meta"], data["results"]
    m, v = meta["machine"], meta["versions"]
    fsync = meta.get("fsync", {})
    rates = fsync.get("opsPerSecond", {})
    fsync_text = (
        ", ".join(f"{k} {val:,.0f} ops/s" for k, val in rates.items()) if rates else "not measured"
    )
    out = [
        f"# Benchmarks {meta['date']} — commit {meta['commit']}",
        "",
        f"- Machine: {m['cpus']} CPUs ({m['cpusAvailable']} available), {m['cpuModel']}, "
        f"{m['memoryGb']} GB RAM, Linux {m['kernel']}; load average at start "
        f"{', '.join(map(str, m['loadAverageAtStart']))} (the machine is shared: figures are "
        "noisy, so every figure is a ratio against a baseline measured in the same run).",
        f"- Disk fsync rate (pg_test_fsync, one 8 kB write): {fsync_text}.",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"- Pinning: {meta['pinning']}.",
        f"- Repetitions: {meta['scale']['reps']}, interleaved (service, baseline, service, ...); "
        "each figure is the median of the repetitions with min–max.",
        f"- Wall time: {meta['wallSeconds']} s. Simulator spec violations: "
        f"{meta.get('simulatorViolations', 'n/a')}.",
        "",
        "## Targets",
        "",
        targets_table(data),
        "",
        f"![latency and throughput]({plot_name})",
        "",
    ]
    if "ingest" in results:
        r = results["ingest"]
        out += [
            "## 1 Webhook ingest",
            "",
            "Unique signed `user.checked-in.v1` and `epayments` events. Closed loop "
            f"({meta['scale']['ingest_concurrency']} connections) for maximum throughput:",
            "",
            *_runs_table(r["closed"]),
            "",
            f"Open loop at half the bare maximum ({r['halfBareRate']:.0f} events/s), latency "
            "from each request's scheduled start:",
            "",
            *_runs_table(r["open"]),
            "",
            f"Bare SQLAlchemy session / bare asyncpg throughput: "
            f"{r['sqlalchemyThroughputRatio']['median']:.2f}×. After each closed-loop run the "
            "service's inbox worker needed "
            f"{r['serviceBacklogDrainSeconds']['median']:.1f} s (median) to process the backlog "
            "(events are acknowledged first, processed after).",
            "",
        ]
    if "scanToRequest" in results:
        r = results["scanToRequest"]
        out += [
            "## 2 Scan to payment request",
            "",
            f"Open loop over {r['tills']:,} tills, a sale waiting at each scanned till; time from "
            "the simulator sending `user.checked-in.v1` to the create-payment arriving at it "
            "(simulator timestamps).",
            "",
        ]
        for at_rate in r.get("rates", [r]):
            out += [f"At {at_rate['rate']:g} scans/s:", "", *_runs_table(at_rate["runs"]), ""]
    if "checkouts" in results:
        r = results["checkouts"]
        out += [
            "## 3 Full checkouts",
            "",
            f"create → scan → push → approve → capture, {r['tills']:,} tills, the till "
            "long-polling. `bare-vipps` is the same sale straight against the simulator (scan, "
            "create-payment, approve, capture): the floor the service adds to. Closed loop "
            f"({r['concurrency']} sales in flight):",
            "",
            *_runs_table(r["closed"]),
            "",
            f"Open loop at {r['latencyRate']:.0f} checkouts/s; phases (`service` = the parts the "
            "till waits on the service: create + scan→payment sent + approve→captured; for "
            "`bare-vipps` create-payment + capture):",
            "",
            *_runs_table(r["open"]),
            "",
            *_phases_table(r["open"]),
            "",
            f"Database round trips per sale (the service's own counts, `/metrics`, closed loop, "
            f"all work included): {r['statementsPerSale']['median']:.1f} statements "
            f"({r['statementsPerSale']['min']:.1f}–{r['statementsPerSale']['max']:.1f}) in "
            f"{r['transactionsPerSale']['median']:.1f} transactions. Service CPU per sale "
            f"{r['serviceCpuMsPerSale']['median']:.1f} ms; in the same closed loop the "
            f"simulator used {r['simulatorCpuPercent']['median']:.0f} % of a core for "
            f"`bare-vipps` and the load generator {r['loadgenCpuPercent']['median']:.0f} % "
            "for the service's sales.",
            "",
        ]
    if "workers" in results:
        r = results["workers"]
        out += [
            "## 7 Two worker processes",
            "",
            "The closed-loop checkouts of benchmark 3 against `vipps-pos serve --workers 2` "
            "(same database, same port; not pinned). One process in the same run: "
            f"{r['oneWorkerThroughput']['median']:.1f}/s.",
            "",
            *_runs_table(r["runs"]),
            "",
        ]
    if "scale" in results:
        r = results["scale"]
        out += [
            "## 4 Scale",
            "",
            f"The checkout flow at {r['rate']:g}/s with more tills registered (bulk-inserted):",
            "",
            *_runs_table(r["runs"]),
            "",
        ]
    if "footprint" in results:
        r = results["footprint"]
        ready, bare = r["serviceStartToReadySeconds"], r["bareStartToReadySeconds"]
        out += [
            "## 5 Footprint",
            "",
            f"- Largest service RSS during benchmark 3: {r['serviceRssMbUnderCheckouts']:.0f} MB.",
            f"- Start to ready (process spawn → `/readyz` 200, migrations already applied): "
            f"{ready['median']:.2f} s ({ready['min']:.2f}–{ready['max']:.2f}); bare FastAPI + "
            f"asyncpg app: {bare['median']:.2f} s ({r['startRatio']['median']:.1f}×).",
            "",
        ]
    if "slowProvider" in results:
        r = results["slowProvider"]
        out += [
            "## 6 Slow provider",
            "",
            f"Webhook ingest, open loop at {r['rate']:.0f} events/s (half the service's own "
            "maximum from benchmark 1), with and without a "
            f"{r['latencyMs']} ms latency fault on every Vipps API call; some events are "
            "check-ins at tills with a sale waiting, so Vipps calls are in flight throughout.",
            "",
            *_runs_table(r["runs"]),
            "",
        ]
    return "\n".join(out)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    panels: list[tuple[str, dict[str, list[dict[str, Any]]], str]] = []
    if "ingest" in results:
        panels.append(("1 ingest: latency at half bare max", results["ingest"]["open"], "lat"))
        panels.append(("1 ingest: max throughput", results["ingest"]["closed"], "thr"))
    if "scanToRequest" in results:
        panels.append(("2 scan → payment request", results["scanToRequest"]["runs"], "lat"))
    if "checkouts" in results:
        panels.append(("3 checkouts: max throughput", results["checkouts"]["closed"], "thr"))
        panels.append(("3 checkouts: latency (open loop)", results["checkouts"]["open"], "lat"))
    if "scale" in results:
        panels.append(("4 scale: checkout latency", results["scale"]["runs"], "lat"))
    if "slowProvider" in results:
        panels.append(("6 ingest with slow Vipps", results["slowProvider"]["runs"], "lat"))
    columns = 3
    rows = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, groups, kind) in zip(axes.flat, panels, strict=False):
        names = list(groups)
        if kind == "thr":
            values = [_median(groups[n], "throughput") for n in names]
            low = [
                v - min(r["throughput"] for r in groups[n])
                for v, n in zip(values, names, strict=True)
            ]
            high = [
                max(r["throughput"] for r in groups[n]) - v
                for v, n in zip(values, names, strict=True)
            ]
            ax.bar(names, values, yerr=[low, high], color="tab:blue", capsize=4)
            ax.set_ylabel("per second (median, min–max)")
        else:
            width = 0.25
            for i, q in enumerate(("p50", "p90", "p99")):
                values = [_median(groups[n], q) for n in names]
                ax.bar([x + (i - 1) * width for x in range(len(names))], values, width, label=q)
            ax.set_xticks(range(len(names)), names)
            ax.set_ylabel("ms (median of reps)")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    meta = data["meta"]
    fig.suptitle(f"vipps-pos benchmarks {meta['date']} {meta['commit']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
