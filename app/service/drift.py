"""Drift between our tills and Vipps's merchant callback QRs, per MSN: found, reported, repaired.

Kinds (``Drift.kind``) and their repair:

* ``missing`` — an active till whose QR Vipps does not have (a scan says "not found"): PUT it.
* ``description`` — Vipps shows another ``locationDescription`` than ours: PUT ours.
* ``no_content`` — our copy of the QR content is missing (print sheets need it): fetch it.
* ``inactive`` — a deactivated till's QR still exists at Vipps (a customer could scan it and
  wait for nothing): delete it.
* ``extra`` — a QR at Vipps that no till of ours has. It may belong to another system on the
  same sales unit, so it is deleted only when asked for explicitly (``include_extra``).

Repairs are the same idempotent calls registration uses (PUT is an upsert), so repeating a
repair is harmless; each one is audited.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from app import repository as repo
from app.models import Till
from app.service.audit import append_audit
from app.service.context import ServiceContext, unit_of_work
from app.service.errors import vipps_errors_as_problems
from app.service.tills import TillService
from app.vipps.errors import VippsError, VippsNotFound
from app.vipps.schemas import MerchantCallbackQr

log = structlog.get_logger("app.drift")


@dataclass(frozen=True)
class Drift:
    kind: str
    msn: str
    merchant_qr_id: str
    till_id: str | None
    ours: str | None  # our location description
    theirs: str | None  # Vipps's location description
    repaired: bool = False
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "msn": self.msn,
            "merchantQrId": self.merchant_qr_id,
            "tillId": self.till_id,
            "ours": self.ours,
            "theirs": self.theirs,
            "repaired": self.repaired,
            "error": self.error,
        }


@dataclass(frozen=True)
class DriftReport:
    msns: tuple[str, ...]
    checked_tills: int
    vipps_qrs: int
    drift: tuple[Drift, ...]

    @property
    def clean(self) -> bool:
        return all(d.repaired for d in self.drift)

    def as_json(self) -> dict[str, object]:
        return {
            "msns": list(self.msns),
            "checkedTills": self.checked_tills,
            "vippsQrs": self.vipps_qrs,
            "clean": self.clean,
            "drift": [d.as_json() for d in self.drift],
        }


def find_drift(
    msn: str, tills: Sequence[Till], at_vipps: Sequence[MerchantCallbackQr]
) -> list[Drift]:
    """Compare one MSN's tills with Vipps's list. Pure: no I/O."""
    theirs = {q.merchant_qr_id: q for q in at_vipps}
    ours = {t.merchant_qr_id: t for t in tills if t.msn == msn}
    found: list[Drift] = []
    for qr_id, till in sorted(ours.items(), key=lambda item: item[1].id):
        qr = theirs.get(qr_id)
        desc = till.location_description
        if till.status != "ACTIVE":
            if qr is not None:
                found.append(Drift("inactive", msn, qr_id, till.id, desc, qr.location_description))
            continue
        if qr is None:
            found.append(Drift("missing", msn, qr_id, till.id, desc, None))
            continue
        if qr.location_description != desc:
            found.append(Drift("description", msn, qr_id, till.id, desc, qr.location_description))
        elif not till.qr_content:
            found.append(Drift("no_content", msn, qr_id, till.id, desc, qr.location_description))
    for qr_id, qr in sorted(theirs.items()):
        if qr_id not in ours:
            found.append(Drift("extra", msn, qr_id, None, None, qr.location_description))
    return found


class DriftService:
    def __init__(self, ctx: ServiceContext, tills: TillService) -> None:
        self.ctx = ctx
        self.tills = tills

    async def _msns(self, msn: str | None) -> tuple[str, ...]:
        if msn:
            return (msn,)
        tills = await self.tills.list()
        return tuple(sorted({self.ctx.settings.vipps.default_msn} | {t.msn for t in tills}))

    @vipps_errors_as_problems
    async def check(
        self, msn: str | None = None, *, repair: bool = False, include_extra: bool = False
    ) -> DriftReport:
        """Find drift on one MSN (or every MSN we use); with ``repair``, fix what is ours."""
        msns = await self._msns(msn)
        tills = await self.tills.list()
        drift: list[Drift] = []
        qrs = 0
        for unit in msns:
            at_vipps = await self.ctx.vipps.list_callback_qrs(unit)
            qrs += len(at_vipps)
            for item in find_drift(unit, tills, at_vipps):
                if repair and (item.kind != "extra" or include_extra):
                    item = await self._repair(item)
                drift.append(item)
        checked = sum(1 for t in tills if t.msn in msns)
        log.info("drift.checked", msns=len(msns), drift=len(drift), repair=repair)
        return DriftReport(msns, checked, qrs, tuple(drift))

    async def _repair(self, item: Drift) -> Drift:
        try:
            if item.kind in ("missing", "description", "no_content") and item.till_id:
                till, error = await self.tills.sync_qr_reporting(item.till_id)
                if till.qr_status != "SYNCED":
                    return _failed(item, error or "Vipps refused the QR")
            elif item.kind in ("inactive", "extra"):
                with contextlib.suppress(VippsNotFound):  # already gone: the goal holds
                    await self.ctx.vipps.delete_callback_qr(item.msn, item.merchant_qr_id)
        except VippsError as exc:
            return _failed(item, str(exc)[:300])
        async with unit_of_work(self.ctx) as work:
            locked = await repo.lock_till(work.session, item.till_id) if item.till_id else None
            await append_audit(
                work.session,
                at=self.ctx.clock(),
                actor="admin",
                action="drift.repair",
                till=locked,
                detail={"kind": item.kind, "msn": item.msn, "merchantQrId": item.merchant_qr_id},
            )
        return Drift(**{**item.__dict__, "repaired": True})


def _failed(item: Drift, error: str) -> Drift:
    return Drift(**{**item.__dict__, "error": error})
