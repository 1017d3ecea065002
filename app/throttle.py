"""Throttling that holds across replicas, without a database statement per request.

Every decision is local and in memory: each replica counts, per key, what it admitted in
:data:`SLOT_SECONDS` slots over a sliding window, and adds what the *other* replicas counted as of
the last sync. Once per ``sync_seconds`` (1 s by default) a background task sends this replica's
new counts and reads everyone else's totals in **one statement** (:data:`_SYNC_SQL`) against the
``throttle_hits`` table. So the hot path gains no statement, and the cluster-wide limit holds up
to a bounded overshoot:

    admitted in any window  <=  limit + what the other replicas admitted in the last two sync
    intervals (their unsent counts plus this replica's stale view of them).

Each replica stops at the limit counting its own requests exactly, so with N replicas the worst
case (a burst spread over all replicas within two seconds) is N x limit in the first window and
the limit from then on; requests spread over time overshoot by about 2 s worth of traffic per
other replica. On SQLite (one process) the local counts are the whole truth and nothing is
shared.

Two kinds of keys, each with a :class:`Rule` chosen by the key's prefix:

* **Rates** (``take``): requests per till key, per till display, per admin key. Admitted requests
  count; beyond the limit the answer is 429 with ``Retry-After`` until enough of the window has
  passed.
* **Failures with backoff** (``begin``/``end``): failed authentications and webhooks failing their
  signature check, per source address. Up to ``limit`` failures in the window are free; beyond,
  the address must wait ``2 ** (failures - limit)`` seconds (up to ``backoff_max``) after its latest
  failure before one more attempt is even checked, so a guesser's rate falls exponentially while
  requests refused meanwhile cost nothing. Under the limit every attempt is checked however many
  are in flight: an honest address is often busy (a store's tills behind one NAT address, a POS
  vendor's relay, Vipps's few delivery addresses at peak) and must never be refused for
  concurrency alone. So a burst of bad attempts started before the limit is reached is checked in
  full (at most ``limit`` + that address's concurrency failures in the first window); from then
  on one attempt at a time. IPv6 addresses count per /64 network (a host gets a whole /64).

The shared store is Postgres because it is already the coordination point of every replica
(DESIGN.md §3: "Postgres is the coordination engine when one machine is not enough; nothing
home-made") — no new service to run, secure and back up for counters worth a few minutes. The
table is UNLOGGED: a crash forgets recent counts, which only loosens a limit briefly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from sqlalchemy.engine import make_url

from app.settings import SecuritySettings

log = structlog.get_logger("app.throttle")

SLOT_SECONDS = 5

TILL = "till:"
DISPLAY = "display:"
ADMIN = "admin:"
AUTH_FAILURE = "auth-failure:"
WEBHOOK_FAILURE = "webhook-failure:"


@dataclass(frozen=True)
class Rule:
    limit: int
    window_seconds: float
    # Failures: beyond ``limit``, wait 2 ** (failures - limit) s after the newest, up to this.
    backoff_max_seconds: float | None = None

    def first_slot(self, now: float) -> int:
        """The oldest slot inside the window ending now."""
        return int(now // SLOT_SECONDS) - math.ceil(self.window_seconds / SLOT_SECONDS) + 1


def rules_from(settings: SecuritySettings) -> dict[str, Rule]:
    failures = settings.failure_window_seconds
    backoff = float(settings.backoff_max_seconds)
    return {
        TILL: Rule(settings.till_rate_limit_per_minute, 60),
        DISPLAY: Rule(settings.till_rate_limit_per_minute, 60),
        ADMIN: Rule(settings.admin_rate_limit_per_minute, 60),
        AUTH_FAILURE: Rule(settings.auth_failures_per_source, failures, backoff),
        WEBHOOK_FAILURE: Rule(settings.webhook_failures_per_source, failures, backoff),
    }


def source_of(host: str | None) -> str:
    """What failures are counted per: the client address, IPv6 per /64 network."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass
class _Count:
    mine: dict[int, int] = field(default_factory=dict)  # slot -> hits counted here
    mine_last: float = 0.0  # unix time of the newest hit counted here
    others: int = 0  # other replicas' hits inside the window, as of the last sync
    others_oldest: int | None = None  # their oldest slot inside the window
    others_last: float = 0.0
    in_flight: int = 0  # failure gate: attempts being checked right now


# One round trip per sync: add this replica's new counts, drop slots older than every window,
# and read the other replicas' totals per key inside each key's window.
_SYNC_SQL = """
WITH incoming AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[], $4::float8[])
        AS t(key, slot, hits, last_at)
), stored AS (
    INSERT INTO throttle_hits AS h (key, slot, replica, hits, last_at)
    SELECT key, slot, $5, hits, last_at FROM incoming
    ON CONFLICT (key, slot, replica) DO UPDATE
        SET hits = h.hits + excluded.hits, last_at = greatest(h.last_at, excluded.last_at)
), expired AS (
    DELETE FROM throttle_hits WHERE slot < $6
), windows AS (
    SELECT * FROM unnest($7::text[], $8::bigint[]) AS w(prefix, first_slot)
)
SELECT h.key, sum(h.hits)::bigint AS hits, min(h.slot) AS oldest, max(h.last_at) AS last_at
FROM throttle_hits h
JOIN windows w ON starts_with(h.key, w.prefix) AND h.slot >= w.first_slot
WHERE h.replica <> $5
GROUP BY h.key
"""


class Throttle:
    def __init__(
        self,
        rules: Mapping[str, Rule],
        *,
        sync_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = dict(rules)
        self.sync_seconds = sync_seconds
        self.replica = str(uuid.uuid4())
        self._clock = clock
        self._counts: dict[str, _Count] = {}
        self._unsent: dict[tuple[str, int], tuple[int, float]] = {}
        self._dsn: str | None = None
        self._connection: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._sync_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> Throttle:
        return cls(rules_from(settings), sync_seconds=settings.throttle_sync_seconds)

    def _rule(self, key: str) -> Rule:
        return self.rules[key[: key.index(":") + 1]]

    # ---- decisions (no I/O) -------------------------------------------------------------------

    def take(self, key: str) -> float:
        """A request under a rate rule: 0 if admitted (and counted), else seconds to wait."""
        rule, now = self._rule(key), self._clock()
        count = self._counts.setdefault(key, _Count())
        if self._in_window(count, rule, now) < rule.limit:
            self._hit(key, count, now)
            return 0.0
        return self._until_room(count, rule, now)

    def begin(self, key: str) -> float:
        """Before checking a credential or signature under a failure rule: 0 if the attempt may
        go ahead (it is reserved until :meth:`end`), else seconds to wait."""
        rule, now = self._rule(key), self._clock()
        count = self._counts.setdefault(key, _Count())
        failures = self._in_window(count, rule, now)
        if failures < rule.limit:
            # In-flight attempts are not counted against the free failures: a busy honest
            # address has many at once (see the module docstring).
            count.in_flight += 1
            return 0.0
        if rule.backoff_max_seconds is None:
            return self._until_room(count, rule, now)
        if count.in_flight:
            return 1.0  # one attempt at a time while backing off
        pause = min(rule.backoff_max_seconds, 2.0 ** min(max(failures - rule.limit, 0), 30))
        wait = max(count.mine_last, count.others_last) + pause - now
        if wait <= 0:
            count.in_flight += 1
            return 0.0
        return wait

    def end(self, key: str, *, failed: bool) -> None:
        """After an attempt :meth:`begin` let through; a failure counts against the source."""
        count = self._counts.setdefault(key, _Count())
        count.in_flight = max(0, count.in_flight - 1)
        if failed:
            self._hit(key, count, self._clock())

    def _in_window(self, count: _Count, rule: Rule, now: float) -> int:
        first = rule.first_slot(now)
        for slot in [s for s in count.mine if s < first]:
            del count.mine[slot]
        return count.others + sum(count.mine.values())

    def _hit(self, key: str, count: _Count, now: float) -> None:
        slot = int(now // SLOT_SECONDS)
        count.mine[slot] = count.mine.get(slot, 0) + 1
        count.mine_last = now
        hits, _ = self._unsent.get((key, slot), (0, 0.0))
        self._unsent[(key, slot)] = (hits + 1, now)

    @staticmethod
    def _until_room(count: _Count, rule: Rule, now: float) -> float:
        """Seconds until the oldest counted slot leaves the window (at least 1)."""
        slots = [*count.mine, *([count.others_oldest] if count.others_oldest is not None else [])]
        oldest = min(slots) if slots else int(now // SLOT_SECONDS)
        leaves = (oldest + math.ceil(rule.window_seconds / SLOT_SECONDS)) * SLOT_SECONDS
        return max(1.0, leaves - now)

    # ---- sharing through Postgres -------------------------------------------------------------

    async def start(self, database_url: str) -> None:
        """Share counts with the other replicas (Postgres only); the first sync happens before
        this returns, so a fresh replica starts out knowing the cluster's counts."""
        url = make_url(database_url)
        if url.get_backend_name() == "postgresql":
            self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
            with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
                await self.sync_once()
        # Elsewhere the task only forgets idle keys.
        self._task = asyncio.create_task(self._run(), name="throttle-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close(timeout=2)
            self._connection = None

    async def _run(self) -> None:
        delay = self.sync_seconds
        while True:
            await asyncio.sleep(delay)
            try:
                await self.sync_once()
                delay = self.sync_seconds
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                # Counts stay local (per replica) until the database answers again.
                log.warning("throttle.sync_failed", error=type(exc).__name__)
                delay = min(max(delay * 2, self.sync_seconds), 10.0)

    async def sync_once(self) -> None:
        """Send this replica's new counts and read the other replicas' totals (one statement);
        without a shared store, just forget idle keys."""
        if self._dsn is None:
            self._apply([], self._clock())
            return
        async with self._sync_lock:
            now = self._clock()
            sending, self._unsent = self._unsent, {}
            windows = {prefix: rule.first_slot(now) for prefix, rule in self.rules.items()}
            keep = min(windows.values())
            sending = {k: v for k, v in sending.items() if k[1] >= keep}
            try:
                if self._connection is None or self._connection.is_closed():
                    self._connection = await asyncpg.connect(self._dsn, timeout=5)
                rows = await self._connection.fetch(
                    _SYNC_SQL,
                    [key for key, _ in sending],
                    [slot for _, slot in sending],
                    [hits for hits, _ in sending.values()],
                    [last for _, last in sending.values()],
                    self.replica,
                    keep,
                    list(windows),
                    list(windows.values()),
                    timeout=5,
                )
            except BaseException:
                for item, (hits, last) in sending.items():  # send them next time
                    before, before_last = self._unsent.get(item, (0, 0.0))
                    self._unsent[item] = (before + hits, max(last, before_last))
                if self._connection is not None and not self._connection.is_closed():
                    with contextlib.suppress(Exception):
                        await self._connection.close(timeout=2)
                self._connection = None
                raise
            self._apply(rows, now)

    def _apply(self, rows: list[Any], now: float) -> None:
        seen: dict[str, tuple[int, int, float]] = {
            row["key"]: (int(row["hits"]), int(row["oldest"]), float(row["last_at"]))
            for row in rows
        }
        for key in list(self._counts):
            count = self._counts[key]
            if key not in seen:
                count.others, count.others_oldest, count.others_last = 0, None, 0.0
                self._in_window(count, self._rule(key), now)
                if not count.mine and not count.in_flight:
                    del self._counts[key]  # idle: forget it
        for key, (hits, oldest, last) in seen.items():
            if key[: key.find(":") + 1] not in self.rules:
                continue
            count = self._counts.setdefault(key, _Count())
            count.others, count.others_oldest, count.others_last = hits, oldest, last
