"""Shared measurement helpers of the reliability suite.

The simulator's ledger (``GET /_sim/ledger``) is the witness: it records every mutating call the
service made, whether it took effect, whether it was an idempotent replay and which fault (if any)
answered it. The checks here turn it into the figures docs/RELIABILITY.md reports.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from app.observability.pii import find_pii

SOAK = os.environ.get("VIPPS_POS_SOAK") == "1"
MONEY_OPERATIONS = frozenset({"createPayment", "capturePayment", "cancelPayment", "refundPayment"})
_KEYED = re.compile(r"^(?P<reference>.+)-(?:capture|cancel|refund)-\d+$")
FINAL_STATES = frozenset(
    {"CAPTURED", "PARTIALLY_REFUNDED", "REFUNDED", "CANCELLED", "REJECTED", "EXPIRED", "FAILED"}
)


def scaled(short: int, soak: int, *, override: str | None = None) -> int:
    """The short figure in ``make test``, the long one under ``VIPPS_POS_SOAK=1``.

    With ``override`` set, ``VIPPS_POS_SOAK_<override>`` (when present) replaces the long figure:
    a reduced soak run for a time budget, which docs/RELIABILITY.md must report as reduced.
    """
    if not SOAK:
        return short
    reduced = os.environ.get(f"VIPPS_POS_SOAK_{override}") if override else None
    return int(reduced) if reduced else soak


def reference_of(entry: Mapping[str, Any]) -> str | None:
    """The payment reference of a ledger entry.

    A fault that answers a create before the simulator parsed the body records no reference; our
    idempotency keys are derived from it (``<reference>-create``, ``<reference>-capture-<n>``).
    """
    if entry.get("reference"):
        return str(entry["reference"])
    key = entry.get("idempotencyKey") or ""
    if key.endswith("-create"):
        return str(key[: -len("-create")])
    match = _KEYED.match(key)
    return match.group("reference") if match else None


@dataclass
class LedgerReport:
    """What the ledger proves about the service's calls to Vipps."""

    calls: int = 0
    effective_creates: Counter[str] = field(default_factory=Counter)
    effects_per_key: Counter[str] = field(default_factory=Counter)
    effective_captures: Counter[str] = field(default_factory=Counter)
    # Vipps's limit is per reference and operation (REFERENCE.md §7.11), so are these.
    calls_per_reference: dict[tuple[str, str], list[datetime]] = field(
        default_factory=lambda: defaultdict(list)
    )
    faults: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, ledger: Iterable[Mapping[str, Any]]) -> LedgerReport:
        report = cls()
        for entry in ledger:
            operation = entry["operation"]
            if operation not in MONEY_OPERATIONS:
                continue
            report.calls += 1
            reference = reference_of(entry)
            if entry.get("fault"):
                report.faults[str(entry["fault"]).split(":")[0]] += 1
            if reference is not None:
                at = datetime.fromisoformat(str(entry["at"]).replace("Z", "+00:00"))
                report.calls_per_reference[(reference, operation)].append(at)
            if not entry.get("effect"):
                continue
            if entry.get("idempotencyKey"):
                report.effects_per_key[str(entry["idempotencyKey"])] += 1
            if reference is not None and operation == "createPayment":
                report.effective_creates[reference] += 1
            if reference is not None and operation == "capturePayment":
                report.effective_captures[reference] += 1
        return report

    @property
    def duplicate_creates(self) -> dict[str, int]:
        return {ref: n for ref, n in self.effective_creates.items() if n > 1}

    @property
    def duplicate_effects(self) -> dict[str, int]:
        """Idempotency keys that took effect more than once: a double create/capture/refund."""
        return {key: n for key, n in self.effects_per_key.items() if n > 1}

    def max_calls_per_minute(self) -> tuple[int, tuple[str, str] | None]:
        """The most calls of one operation any one reference saw inside any sliding 60-second
        window (create, capture, cancel and refund each have their own limit of 5)."""
        worst, worst_reference = 0, None
        window = timedelta(seconds=60)
        for reference, stamps in self.calls_per_reference.items():
            ordered = sorted(stamps)
            start = 0
            for end, stamp in enumerate(ordered):
                while stamp - ordered[start] >= window:
                    start += 1
                if end - start + 1 > worst:
                    worst, worst_reference = end - start + 1, reference
        return worst, worst_reference


def assert_ledger_clean(ledger: Iterable[Mapping[str, Any]]) -> LedgerReport:
    """No duplicate create, no idempotency key with two effects, ≤ 5 calls per minute per
    reference and operation."""
    report = LedgerReport.of(ledger)
    assert report.duplicate_creates == {}, f"duplicate creates: {report.duplicate_creates}"
    assert report.duplicate_effects == {}, f"keys with two effects: {report.duplicate_effects}"
    worst, reference = report.max_calls_per_minute()
    assert worst <= 5, f"{worst} calls within a minute for {reference}"
    return report


def consistent_with_vipps(ours: Mapping[str, Any], theirs: Mapping[str, Any] | None) -> str | None:
    """``None`` if our final checkout agrees with the simulator's payment, else what differs.

    Vipps keeps ``state`` AUTHORIZED after capture, cancel and refund; the money is in
    ``aggregate`` (REFERENCE.md §7.4), so states are compared through the totals.
    """
    state = ours["state"]
    if theirs is None:
        # No payment at Vipps: only outcomes that never reached it.
        if state in ("CANCELLED", "FAILED", "EXPIRED") and ours["authorizedAmount"] == 0:
            return None
        return f"{state} but Vipps has no payment"
    aggregate = theirs["aggregate"]
    totals = {
        "authorizedAmount": aggregate["authorizedAmount"]["value"],
        "capturedAmount": aggregate["capturedAmount"]["value"],
        "refundedAmount": aggregate["refundedAmount"]["value"],
        "cancelledAmount": aggregate["cancelledAmount"]["value"],
    }
    for name in ("capturedAmount", "refundedAmount"):
        if ours[name] != totals[name]:
            return f"{name}: ours {ours[name]}, Vipps {totals[name]}"
    vipps_state = theirs["state"]
    expected: set[str]
    if vipps_state == "AUTHORIZED":
        released = totals["authorizedAmount"] - totals["capturedAmount"] - totals["cancelledAmount"]
        if released > 0:
            return f"{state}: Vipps still holds {released} authorized and uncaptured"
        if totals["refundedAmount"] and totals["refundedAmount"] == totals["capturedAmount"]:
            expected = {"REFUNDED"}
        elif totals["refundedAmount"]:
            expected = {"PARTIALLY_REFUNDED"}
        elif totals["capturedAmount"]:
            expected = {"CAPTURED"}
        else:
            expected = {"CANCELLED"}
    elif vipps_state == "TERMINATED":
        expected = {"CANCELLED", "FAILED", "EXPIRED", "REJECTED"}
    elif vipps_state == "ABORTED":
        expected = {"REJECTED", "CANCELLED"}
    elif vipps_state == "EXPIRED":
        expected = {"EXPIRED", "CANCELLED"}
    else:  # CREATED: nobody answered it yet — never acceptable at quiescence
        return f"{state} while Vipps shows {vipps_state}"
    if state not in expected:
        return f"{state} while Vipps shows {vipps_state} {totals}"
    return None


def scan_logs_for_pii(paths: Iterable[Path], known_secrets: Iterable[str]) -> list[str]:
    """Findings of :func:`find_pii` in every log file, prefixed with the file name."""
    secrets = sorted({s for s in known_secrets if s and len(s) >= 6})
    findings: list[str] = []
    for path in paths:
        if path.exists():
            text = path.read_text(errors="replace")
            findings += [f"{path.name}: {f}" for f in find_pii(text, known_secrets=secrets)]
    return findings
