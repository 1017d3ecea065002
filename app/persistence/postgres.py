"""The hot paths on Postgres: prepared statements on raw asyncpg, one round trip per step.

Why raw asyncpg: one statement costs the service ~13–47 µs of CPU this way against ~50 µs
through SQLAlchemy Core and 400–800 µs through the ORM (``python -m benchmarks.statement_cost``,
figures in benchmarks/README.md). Every statement text here is fixed per shape, so asyncpg
prepares it once per connection and re-uses it.

Invariants:

* **Load, decide, save.** A load reads a checkout (or a till) with everything a decision depends
  on in one statement, without locking. :meth:`PostgresStore.save` writes the whole decision in
  one statement whose first CTE locks the till row ``FOR UPDATE`` *and* requires the till's
  ``revision`` to be the one loaded. Every other CTE reads from that guard, so either everything
  is written (and the revision moves on) or nothing is (a concurrent change: the caller loads and
  decides again). Postgres re-checks the locked row's condition after waiting for a lock
  (EvalPlanQual), so the check holds against writers that committed while this one waited; the
  check is on the locked row itself, never on a subquery, because subqueries keep the
  statement's first snapshot.
* Every write a decision depends on (checkouts, their outbox commands, check-ins) goes through a
  save and bumps the till's revision. Writes that no decision depends on (the reconciler's poll
  schedule, an inbox row's processing mark, an outbox lease) do not.
* A save in autocommit is its own transaction: one round trip, one fsync.
* Claims are single ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING …``.
* Notifications (``pg_notify``) are sent by the same statement, so they are delivered exactly
  when the change commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
from sqlalchemy.engine import make_url

from app.domain.state_machine import ACTIVE_STATES, CommandKind
from app.domain.statuses import (
    UNFINISHED_OUTBOX,
    UNPROCESSED_INBOX,
    CheckInStatus,
    ClubPolicy,
    InboxStatus,
    OutboxStatus,
    TillStatus,
)
from app.models import Checkout
from app.notifications import CHANNEL, ChangeHub
from app.persistence.counters import StatementCounter
from app.persistence.records import (
    CHECKOUT_COLUMNS,
    DECISION_COLUMNS,
    POLL_COLUMNS,
    ChangeRecord,
    CheckoutRecord,
    CommandOutcome,
    CommandRecord,
    InboxOutcome,
    InboxRecord,
    LoadedCheckout,
    LoadedTill,
    PendingCommand,
    RevisionConflict,
    Saved,
    StorePolicy,
    TillRecord,
    TillWrite,
    WaitingCheckIn,
)
from app.persistence.store import Duplicate, NewInboxEvent, StoredInboxEvent

# ---- SQL building blocks ------------------------------------------------------------------------


def _literal_list(values: Sequence[str]) -> str:
    """An SQL list of constant strings (enum values only, never user input)."""
    return "(" + ", ".join(f"'{value}'" for value in values) + ")"


ACTIVE_SQL = _literal_list(sorted(state.value for state in ACTIVE_STATES))
UNFINISHED_SQL = _literal_list([status.value for status in UNFINISHED_OUTBOX])
UNPROCESSED_SQL = _literal_list([status.value for status in UNPROCESSED_INBOX])


def _pg_type(column: Any) -> str:
    name = type(column.type).__name__
    if name in ("UTCDateTime",):
        return "timestamptz"
    if name in ("BigInteger",):
        return "bigint"
    if name in ("Integer",):
        return "int"
    if name in ("Boolean",):
        return "bool"
    if name in ("JSON", "JSONB"):
        return "jsonb"
    return "text"  # String, Text, Enum (stored as VARCHAR)


CHECKOUT_TYPES: dict[str, str] = {
    column.name: _pg_type(column) for column in Checkout.__table__.columns
}
_C = ", ".join(f"c.{name} AS c_{name}" for name in CHECKOUT_COLUMNS)
_T = (
    "t.id AS t_id, t.store_id AS t_store_id, t.msn AS t_msn, t.merchant_qr_id AS t_qr,"
    " t.api_key_id AS t_key_id,"
    " t.status AS t_status, t.revision AS t_revision, t.audit_seq AS t_audit_seq,"
    " t.audit_head AS t_audit_head"
)
_S = (
    "s.club_policy AS s_club_policy, s.member_price_hold AS s_hold,"
    " s.member_price_hold_seconds AS s_hold_seconds"
)
_UNFINISHED = f"""(
    SELECT jsonb_agg(jsonb_build_array(o.id, o.kind, o.payload->'amount') ORDER BY o.id)
    FROM outbox o WHERE o.checkout_id = c.id AND o.status IN {UNFINISHED_SQL}
) AS unfinished"""

LOAD_CHECKOUT = f"""
SELECT {_C}, {_T}, {_S}, {_UNFINISHED},
       (SELECT w.status FROM webhook_inbox w WHERE w.id = $2) AS inbox_status,
       (SELECT r.request_hash FROM idempotent_requests r
         WHERE r.scope = $3 AND r.key = $4) AS seen_request
FROM checkouts c JOIN tills t ON t.id = c.till_id LEFT JOIN stores s ON s.id = t.store_id
WHERE c.id = $1
"""
LOAD_BY_REFERENCE = f"""
SELECT {_C}, {_T}, {_S}, {_UNFINISHED},
       (SELECT w.status FROM webhook_inbox w WHERE w.id = $3) AS inbox_status,
       NULL AS seen_request
FROM checkouts c JOIN tills t ON t.id = c.till_id LEFT JOIN stores s ON s.id = t.store_id
WHERE c.msn = $1 AND c.reference = $2
"""
# A till, its store's policy and its active checkout (at most one: a partial unique index).
_TILL_FROM = f"""
FROM tills t LEFT JOIN stores s ON s.id = t.store_id
LEFT JOIN checkouts c ON c.till_id = t.id AND c.state IN {ACTIVE_SQL}"""
LOAD_TILL = f"""
SELECT {_T}, {_S}, {_C}, {_UNFINISHED},
       (SELECT k.id FROM checkouts k WHERE k.till_id = t.id AND k.create_key = $2) AS keyed_id,
       w.id AS w_id, w.customer_token_enc AS w_token, w.initiated_at AS w_initiated,
       w.expires_at AS w_expires, NULL AS inbox_status
{_TILL_FROM}
LEFT JOIN LATERAL (
    SELECT id, customer_token_enc, initiated_at, expires_at FROM checkins
    WHERE till_id = t.id AND status = '{CheckInStatus.WAITING.value}' AND expires_at > $3
    ORDER BY initiated_at DESC LIMIT 1
) w ON true
WHERE t.id = $1
"""
LOAD_TILL_BY_QR = f"""
SELECT {_T}, {_S}, {_C}, {_UNFINISHED}, NULL AS keyed_id, NULL AS w_id,
       (SELECT w.status FROM webhook_inbox w WHERE w.id = $3) AS inbox_status
{_TILL_FROM}
WHERE t.merchant_qr_id = $1 AND t.msn = $2
"""
READ_CHECKOUT = f"SELECT {_C} FROM checkouts c WHERE c.id = $1"
READ_ACTIVE = f"SELECT {_C} FROM checkouts c WHERE c.till_id = $1 AND c.state IN {ACTIVE_SQL}"
READ_CHECKOUT_AND_UNFINISHED = f"SELECT {_C}, {_UNFINISHED} FROM checkouts c WHERE c.id = $1"
CHANGES_AFTER = f"""
SELECT ch.id AS ch_id, ch.kind AS ch_kind, ch.checkout_id AS ch_checkout_id, ch.data AS ch_data,
       {_C}
FROM checkout_changes ch LEFT JOIN checkouts c ON c.id = ch.checkout_id
WHERE ch.till_id = $1 AND ch.id > $2
ORDER BY ch.id LIMIT $3
"""
LAST_CHANGE = "SELECT coalesce(max(id), 0) FROM checkout_changes WHERE till_id = $1"

# The intake's group insert. Each delivery is matched in the same statement to its till (by QR)
# or checkout (by reference): an event that matches nothing is stored UNMATCHED and a signal
# that needs no decision (``settle``) is stored PROCESSED, so neither is ever processed again.
# A CAPTURED/REFUNDED signal on an active checkout asks the reconciler to look now (``nudge``).
STORE_INBOX = f"""
WITH incoming AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::bool[], $8::timestamptz[], $9::text[], $10::text[],
                         $11::text[])
        WITH ORDINALITY AS i(dedup_key, msn, event_type, reference, qr_id, body,
                             body_encrypted, event_time, disposition, outcome, last_error, ord)
), matched AS (
    SELECT i.*, c.id AS checkout_id, c.state AS checkout_state, t.id AS till_id
    FROM incoming i
    LEFT JOIN checkouts c ON i.reference IS NOT NULL AND c.msn = i.msn
                         AND c.reference = i.reference
    LEFT JOIN tills t ON i.qr_id IS NOT NULL AND t.merchant_qr_id = i.qr_id AND t.msn = i.msn
), classified AS (
    SELECT m.*,
        CASE WHEN m.disposition = 'failed' THEN '{InboxStatus.FAILED.value}'
             WHEN m.checkout_id IS NULL AND m.till_id IS NULL
                  THEN '{InboxStatus.UNMATCHED.value}'
             WHEN m.disposition IN ('settle', 'nudge') THEN '{InboxStatus.PROCESSED.value}'
             ELSE '{InboxStatus.PENDING.value}' END AS status
    FROM matched m
), stored AS (
    INSERT INTO webhook_inbox (dedup_key, msn, event_type, reference, body, body_encrypted,
                               event_time, received_at, status, attempts, next_attempt_at,
                               last_error, outcome, checkout_id, processed_at)
    SELECT dedup_key, msn, event_type, reference, body, body_encrypted, event_time, $12,
           status,
           CASE WHEN status = '{InboxStatus.PENDING.value}' THEN 1 ELSE 0 END,
           CASE WHEN status = '{InboxStatus.PENDING.value}' THEN $13::timestamptz
                ELSE $12::timestamptz + interval '3650 days' END,
           last_error,
           CASE WHEN status = '{InboxStatus.PROCESSED.value}' THEN outcome
                WHEN status = '{InboxStatus.UNMATCHED.value}' THEN 'unmatched' END,
           checkout_id,
           CASE WHEN status IN ('{InboxStatus.PROCESSED.value}', '{InboxStatus.UNMATCHED.value}')
                THEN $12::timestamptz END
    FROM classified ORDER BY ord
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING id, dedup_key, status, checkout_id
), nudged AS (
    UPDATE checkouts SET next_poll_at = $12
    FROM classified k JOIN stored s ON s.dedup_key = k.dedup_key
    WHERE k.disposition = 'nudge' AND checkouts.id = k.checkout_id
      AND checkouts.state IN {ACTIVE_SQL}
)
SELECT id, dedup_key, status, checkout_id FROM stored
"""

CLAIM_INBOX = f"""
UPDATE webhook_inbox SET next_attempt_at = $2, attempts = attempts + 1
WHERE id IN (
    SELECT id FROM webhook_inbox
    WHERE status IN {UNPROCESSED_SQL} AND next_attempt_at <= $1
    ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED
)
RETURNING id, msn, event_type, reference, body, body_encrypted, status, attempts, received_at
"""
FINISH_INBOX = f"""
UPDATE webhook_inbox SET status = $2, outcome = $3, checkout_id = $4, processed_at = $5,
                         last_error = NULL
WHERE id = $1 AND status IN {UNPROCESSED_SQL}
"""
FAIL_INBOX = f"""
UPDATE webhook_inbox SET status = '{InboxStatus.FAILED.value}', last_error = $2,
       next_attempt_at = $5::timestamptz
           + make_interval(secs => least($4::float8, $3::float8 * 2 ^ greatest(attempts - 1, 0)))
WHERE id = $1 AND status IN {UNPROCESSED_SQL}
RETURNING extract(epoch FROM next_attempt_at - $5::timestamptz)
"""

# Commands of one checkout run strictly in order: a command is due only when no earlier command
# of its checkout is unfinished (a capture never overtakes the create it depends on).
_COMMAND_RETURNING = """
RETURNING o.id, o.checkout_id, o.till_id, o.kind, o.msn, o.reference, o.idempotency_key,
          o.payload, o.attempts, o.outcome_unknown,
          c.customer_token_enc, c.customer_token_expires_at, c.mutating_calls, c.scanned_at,
          c.store_id, c.id IS NOT NULL AS checkout_found
"""
CLAIM_OUTBOX = f"""
UPDATE outbox o SET status = '{OutboxStatus.IN_FLIGHT.value}', lease_until = $2,
       attempts = o.attempts + 1, updated_at = $1
FROM (
    SELECT x.id, x.checkout_id FROM outbox x
    WHERE ((x.status = '{OutboxStatus.PENDING.value}' AND x.next_attempt_at <= $1)
           OR (x.status = '{OutboxStatus.IN_FLIGHT.value}' AND x.lease_until <= $1))
      AND (x.checkout_id IS NULL OR NOT EXISTS (
           SELECT 1 FROM outbox e WHERE e.checkout_id = x.checkout_id AND e.id < x.id
             AND e.status IN {UNFINISHED_SQL}))
    ORDER BY x.id LIMIT $3 FOR UPDATE SKIP LOCKED
) due LEFT JOIN checkouts c ON c.id = due.checkout_id
WHERE o.id = due.id
{_COMMAND_RETURNING}
"""
FINISH_COMMAND = f"""
UPDATE outbox SET status = $2::text, last_error = $3::text, result = $4::jsonb,
       next_attempt_at = coalesce($5::timestamptz, next_attempt_at),
       outcome_unknown = outcome_unknown OR $6::bool, lease_until = NULL, updated_at = $7,
       completed_at = CASE WHEN $2::text IN ('{OutboxStatus.DONE.value}',
                                             '{OutboxStatus.FAILED.value}')
                           THEN $7::timestamptz END
WHERE id = $1 AND status IN {UNFINISHED_SQL}
"""
SCHEDULE_POLL = f"""
UPDATE checkouts SET poll_count = poll_count + 1,
       next_poll_at = $2::timestamptz + make_interval(
           secs => CASE WHEN poll_count >= $4::int THEN greatest($3::float8, $5::float8)
                        ELSE $3::float8 END)
WHERE id = $1 AND state IN {ACTIVE_SQL}
"""


# What a statement raises when its connection is no longer usable.
_BROKEN_CONNECTION = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
)


class _Sql:
    """One statement being built: CTE texts and their positional arguments.

    The text depends only on the *shape* of a write (which parts are present, how many rows of
    each), never on values, so asyncpg's per-connection statement cache prepares each shape once.
    """

    def __init__(self) -> None:
        self.ctes: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any, cast: str) -> str:
        self.args.append(value)
        return f"${len(self.args)}::{cast}"

    def cte(self, name: str, body: str) -> None:
        self.ctes.append(f"{name} AS ({body})")


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(connection: asyncpg.Connection) -> None:
    # JSON columns arrive as Python objects and go out from them (orjson both ways).
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name, encoder=_json_text, decoder=orjson.loads, schema="pg_catalog"
        )


async def _nothing_to_reset(connection: asyncpg.Connection) -> None:
    """What a connection goes back to the pool with needs no reset: every statement here runs in
    autocommit and sets nothing that lasts (no SET, LISTEN, advisory lock, cursor or open
    transaction). asyncpg's default reset (``RESET ALL; UNLISTEN *; …``) was a round trip on
    every release — as many as the statements themselves."""


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresStore:
    """The :class:`app.persistence.store.CheckoutStore` on Postgres (see the module docstring)."""

    def __init__(self, pool: asyncpg.Pool, counter: StatementCounter, origin: str = "-") -> None:
        self._pool = pool
        self.counter = counter
        self._origin = origin  # names this process in its notifications (ChangeHub.origin)

    @classmethod
    async def open(
        cls, url: str, *, size: int, counter: StatementCounter, origin: str = "-"
    ) -> PostgresStore:
        pool = await asyncpg.create_pool(
            asyncpg_dsn(url),
            min_size=min(2, size),
            max_size=size,
            init=_init_connection,
            reset=_nothing_to_reset,
            # A server-side idle timeout or a database restart kills connections: asyncpg
            # discards a broken one on release and opens a fresh one on the next acquire.
            max_inactive_connection_lifetime=300,
        )
        return cls(pool, counter, origin)

    async def close(self) -> None:
        await self._pool.close()

    # ---- plumbing -----------------------------------------------------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.counter.statement()
        return await self._run(sql, args)

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        self.counter.statement()
        rows = await self._run(sql, args)
        return rows[0] if rows else None

    async def _write(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """A writing statement in autocommit: its own transaction."""
        self.counter.statement(write=True)
        return await self._run(sql, args)

    async def _run(self, sql: str, args: Sequence[Any]) -> list[asyncpg.Record]:
        """One statement on a pooled connection. A connection the statement found broken (the
        database restarted or dropped it; asyncpg may then report a confused protocol state)
        is closed before it goes back, so the pool replaces it instead of lending it again."""
        async with self._pool.acquire() as connection:
            try:
                rows: list[asyncpg.Record] = await connection.fetch(sql, *args)
            except _BROKEN_CONNECTION:
                connection.terminate()
                raise
            return rows

    # ---- loads --------------------------------------------------------------------------------

    async def load_checkout(
        self,
        checkout_id: str,
        *,
        inbox_id: int | None = None,
        request: tuple[str, str] | None = None,
    ) -> LoadedCheckout | None:
        scope, key = request if request is not None else (None, None)
        row = await self._fetchrow(LOAD_CHECKOUT, checkout_id, inbox_id, scope, key)
        return _loaded(row) if row is not None else None

    async def load_by_reference(
        self, msn: str, reference: str, *, inbox_id: int | None = None
    ) -> LoadedCheckout | None:
        row = await self._fetchrow(LOAD_BY_REFERENCE, msn, reference, inbox_id)
        return _loaded(row) if row is not None else None

    async def load_till(
        self, till_id: str, *, create_key: str | None, waiting_until: datetime
    ) -> LoadedTill | None:
        row = await self._fetchrow(LOAD_TILL, till_id, create_key, waiting_until)
        if row is None:
            return None
        loaded = _loaded_till(row)
        if row["keyed_id"] is not None:
            loaded.keyed = await self.read_checkout(row["keyed_id"])
        if row["w_id"] is not None:
            loaded.waiting = WaitingCheckIn(
                row["w_id"], row["w_token"], row["w_initiated"], row["w_expires"]
            )
        return loaded

    async def load_till_by_qr(
        self, msn: str, merchant_qr_id: str, *, inbox_id: int | None = None
    ) -> LoadedTill | None:
        row = await self._fetchrow(LOAD_TILL_BY_QR, merchant_qr_id, msn, inbox_id)
        return _loaded_till(row) if row is not None else None

    async def read_checkout(self, checkout_id: str) -> CheckoutRecord | None:
        row = await self._fetchrow(READ_CHECKOUT, checkout_id)
        return CheckoutRecord.from_mapping(row, "c_") if row is not None else None

    async def read_checkout_and_unfinished(
        self, checkout_id: str
    ) -> tuple[CheckoutRecord, list[PendingCommand]] | None:
        row = await self._fetchrow(READ_CHECKOUT_AND_UNFINISHED, checkout_id)
        if row is None:
            return None
        return CheckoutRecord.from_mapping(row, "c_"), _pending(row["unfinished"])

    async def active_checkout(self, till_id: str) -> CheckoutRecord | None:
        row = await self._fetchrow(READ_ACTIVE, till_id)
        return CheckoutRecord.from_mapping(row, "c_") if row is not None else None

    async def changes_after(self, till_id: str, after: int, limit: int) -> list[ChangeRecord]:
        rows = await self._fetch(CHANGES_AFTER, till_id, after, limit)
        return [
            ChangeRecord(
                row["ch_id"],
                row["ch_kind"],
                row["ch_checkout_id"],
                row["ch_data"] or {},
                CheckoutRecord.from_mapping(row, "c_") if row["c_id"] is not None else None,
            )
            for row in rows
        ]

    async def last_change_id(self, till_id: str) -> int:
        row = await self._fetchrow(LAST_CHANGE, till_id)
        return int(row[0]) if row is not None else 0

    # ---- the decision's write -----------------------------------------------------------------

    async def save(self, write: TillWrite, now: datetime) -> Saved:
        sql = _Sql()
        till = sql.arg(write.till_id, "text")
        sql.cte(
            "guard",
            f"SELECT id FROM tills WHERE id = {till} AND revision = "
            f"{sql.arg(write.expected_revision, 'bigint')} FOR UPDATE",
        )
        head = ""
        if write.audit:
            last = write.audit[-1]
            head = (
                f", audit_seq = {sql.arg(last.seq, 'bigint')}"
                f", audit_head = {sql.arg(last.hash, 'text')}"
            )
        sql.cte(
            "bump",
            f"UPDATE tills SET revision = tills.revision + 1{head} FROM guard"
            " WHERE tills.id = guard.id",
        )
        checkout = write.inserted or write.updated
        if write.supersede_waiting:
            sql.cte(
                "superseded",
                f"UPDATE checkins SET status = '{CheckInStatus.SUPERSEDED.value}' FROM guard"
                f" WHERE checkins.till_id = guard.id"
                f" AND checkins.status = '{CheckInStatus.WAITING.value}'",
            )
        if write.inserted is not None:
            values = write.inserted.values()
            columns = ", ".join(CHECKOUT_COLUMNS)
            args = ", ".join(sql.arg(values[c], CHECKOUT_TYPES[c]) for c in CHECKOUT_COLUMNS)
            sql.cte("inserted", f"INSERT INTO checkouts ({columns}) SELECT {args} FROM guard")
        if write.updated is not None:
            values = write.updated.values()
            columns_set = DECISION_COLUMNS + (POLL_COLUMNS if write.schedule_poll else ())
            assignments = ", ".join(
                f"{c} = {sql.arg(values[c], CHECKOUT_TYPES[c])}" for c in columns_set
            )
            sql.cte(
                "updated",
                f"UPDATE checkouts SET {assignments} FROM guard"
                f" WHERE checkouts.id = {sql.arg(write.updated.id, 'text')}",
            )
        if write.commands:
            assert checkout is not None
            rows = []
            for command in write.commands:
                initial = OutboxStatus.IN_FLIGHT if command.claimed else OutboxStatus.PENDING
                rows.append(
                    f"({sql.arg(command.kind.value, 'text')},"
                    f" {sql.arg(command.idempotency_key, 'text')},"
                    f" {sql.arg(command.payload, 'jsonb')}, {sql.arg(initial.value, 'text')},"
                    f" {sql.arg(1 if command.claimed else 0, 'int')},"
                    f" {sql.arg(command.lease_until, 'timestamptz')})"
                )
            at = sql.arg(now, "timestamptz")
            sql.cte(
                "commands",
                "INSERT INTO outbox (checkout_id, till_id, kind, msn, reference, idempotency_key,"
                " payload, status, attempts, outcome_unknown, lease_until, next_attempt_at,"
                f" created_at, updated_at) SELECT {sql.arg(checkout.id, 'text')}, guard.id,"
                f" n.kind, {sql.arg(checkout.msn, 'text')}, {sql.arg(checkout.reference, 'text')},"
                f" n.key, n.payload, n.status, n.attempts, false, n.lease, {at}, {at}, {at}"
                f" FROM guard, (VALUES {', '.join(rows)}) AS n(kind, key, payload, status,"
                " attempts, lease) RETURNING id, idempotency_key",
            )
        if write.changes:
            at = sql.arg(now, "timestamptz")
            rows = [
                f"({sql.arg(change.checkout_id, 'text')}, {sql.arg(change.kind, 'text')},"
                f" {sql.arg(change.state, 'text')}, {sql.arg(change.data, 'jsonb')},"
                f" {sql.arg(index, 'int')})"
                for index, change in enumerate(write.changes)
            ]
            sql.cte(
                "changes",
                "INSERT INTO checkout_changes (till_id, checkout_id, kind, state, data, at)"
                f" SELECT guard.id, n.checkout_id, n.kind, n.state, n.data, {at}"
                f" FROM guard, (VALUES {', '.join(rows)}) AS n(checkout_id, kind, state, data,"
                " ord) ORDER BY n.ord RETURNING id",
            )
        if write.audit:
            rows = [
                f"({sql.arg(line.seq, 'bigint')}, {sql.arg(line.at, 'timestamptz')},"
                f" {sql.arg(line.actor, 'text')}, {sql.arg(line.action, 'text')},"
                f" {sql.arg(line.checkout_id, 'text')}, {sql.arg(line.amount_value, 'bigint')},"
                f" {sql.arg(line.detail, 'jsonb')}, {sql.arg(line.prev_hash, 'text')},"
                f" {sql.arg(line.hash, 'text')})"
                for line in write.audit
            ]
            sql.cte(
                "audit",
                "INSERT INTO audit_log (chain, seq, at, actor, action, till_id, checkout_id,"
                " amount_value, detail, prev_hash, hash) SELECT guard.id, n.seq, n.at, n.actor,"
                " n.action, guard.id, n.checkout_id, n.amount, n.detail, n.prev_hash, n.hash"
                f" FROM guard, (VALUES {', '.join(rows)}) AS n(seq, at, actor, action,"
                " checkout_id, amount, detail, prev_hash, hash)",
            )
        if write.checkin is not None:
            checkin = write.checkin
            sql.cte(
                "checkin",
                "INSERT INTO checkins (id, till_id, msn, merchant_qr_id, customer_token_enc,"
                " initiated_at, expires_at, status, checkout_id, inbox_id, created_at)"
                f" SELECT {sql.arg(checkin.id, 'text')}, guard.id, t.msn,"
                f" {sql.arg(checkin.merchant_qr_id, 'text')},"
                f" {sql.arg(checkin.customer_token_enc, 'text')},"
                f" {sql.arg(checkin.initiated_at, 'timestamptz')},"
                f" {sql.arg(checkin.expires_at, 'timestamptz')},"
                f" {sql.arg(checkin.status.value, 'text')},"
                f" {sql.arg(checkin.checkout_id, 'text')},"
                f" {sql.arg(checkin.inbox_id, 'bigint')}, {sql.arg(now, 'timestamptz')}"
                " FROM guard JOIN tills t ON t.id = guard.id",
            )
        if write.use_checkin is not None:
            checkin_id, checkout_id = write.use_checkin
            sql.cte(
                "used",
                f"UPDATE checkins SET status = '{CheckInStatus.USED.value}',"
                f" checkout_id = {sql.arg(checkout_id, 'text')} FROM guard"
                f" WHERE checkins.id = {sql.arg(checkin_id, 'text')}",
            )
        if write.inbox is not None:
            outcome = write.inbox
            sql.cte(
                "inbox",
                f"UPDATE webhook_inbox SET status = {sql.arg(outcome.status.value, 'text')},"
                f" outcome = {sql.arg(outcome.outcome, 'text')},"
                f" checkout_id = {sql.arg(outcome.checkout_id, 'text')},"
                f" processed_at = {sql.arg(now, 'timestamptz')}, last_error = NULL FROM guard"
                f" WHERE webhook_inbox.id = {sql.arg(outcome.inbox_id, 'bigint')}",
            )
        if write.command is not None:
            done = write.command
            status = sql.arg(done.status.value, "text")
            at = sql.arg(now, "timestamptz")
            sql.cte(
                "finished",
                f"UPDATE outbox SET status = {status},"
                f" last_error = {sql.arg(done.last_error, 'text')},"
                f" result = coalesce({sql.arg(done.result, 'jsonb')}, outbox.result),"
                f" next_attempt_at = coalesce({sql.arg(done.next_attempt_at, 'timestamptz')},"
                " outbox.next_attempt_at),"
                f" outcome_unknown = outbox.outcome_unknown OR"
                f" {sql.arg(done.outcome_unknown, 'bool')},"
                f" lease_until = NULL, updated_at = {at},"
                f" completed_at = CASE WHEN {status} IN ('{OutboxStatus.DONE.value}',"
                f" '{OutboxStatus.FAILED.value}') THEN {at} END"
                f" FROM guard WHERE outbox.id = {sql.arg(done.command_id, 'bigint')}",
            )
        if write.request is not None:
            request = write.request
            sql.cte(
                "request",
                "INSERT INTO idempotent_requests (scope, key, request_hash, created_at)"
                f" SELECT {sql.arg(request.scope, 'text')}, {sql.arg(request.key, 'text')},"
                f" {sql.arg(request.request_hash, 'text')}, {sql.arg(now, 'timestamptz')}"
                " FROM guard",
            )
        selects = [
            "(SELECT array_agg(id ORDER BY id) FROM commands)" if write.commands else "NULL",
            "(SELECT array_agg(id ORDER BY id) FROM changes)" if write.changes else "NULL",
            "(SELECT array_agg(idempotency_key ORDER BY id) FROM commands)"
            if write.commands
            else "NULL",
        ]
        for announced, version in write.announce:
            notice = ChangeHub.payload(
                write.till_id, announced, version, self._origin, write.expected_revision + 1
            )
            selects.append(f"pg_notify({sql.arg(CHANNEL, 'text')}, {sql.arg(notice, 'text')})")
        text = "WITH " + ",\n".join(sql.ctes) + "\nSELECT " + ", ".join(selects) + " FROM guard"
        try:
            result = await self._write(text, *sql.args)
        except asyncpg.UniqueViolationError as exc:
            raise Duplicate(exc.constraint_name or "") from exc
        if not result:
            raise RevisionConflict(write.till_id)
        first = result[0]
        ids: list[int] = list(first[0] or [])
        keys: list[str] = list(first[2] or [])
        if ids:
            by_key = dict(zip(keys, ids, strict=True))
            ids = [by_key[c.idempotency_key] for c in write.commands]
        change_ids: list[int] = list(first[1] or [])
        return Saved(ids, change_ids)

    # ---- the inbox ----------------------------------------------------------------------------

    async def store_inbox(
        self, events: Sequence[NewInboxEvent], now: datetime, lease_until: datetime
    ) -> list[StoredInboxEvent]:
        columns: list[list[Any]] = [[] for _ in range(11)]
        for event in events:
            for index, value in enumerate(
                (
                    event.dedup_key,
                    event.msn,
                    event.event_type,
                    event.reference,
                    event.merchant_qr_id,
                    event.body,
                    event.body_encrypted,
                    event.event_time,
                    event.disposition,
                    event.outcome,
                    event.last_error,
                )
            ):
                columns[index].append(value)
        rows = await self._write(STORE_INBOX, *columns, now, lease_until)
        return [
            StoredInboxEvent(
                row["id"], row["dedup_key"], InboxStatus(row["status"]), row["checkout_id"]
            )
            for row in rows
        ]

    async def finish_inbox(self, outcome: InboxOutcome, now: datetime) -> None:
        await self._write(
            FINISH_INBOX,
            outcome.inbox_id,
            outcome.status.value,
            outcome.outcome,
            outcome.checkout_id,
            now,
        )

    async def fail_inbox(
        self, inbox_id: int, error: str, now: datetime, *, base_seconds: float, cap_seconds: float
    ) -> float | None:
        rows = await self._write(FAIL_INBOX, inbox_id, error, base_seconds, cap_seconds, now)
        return float(rows[0][0]) if rows else None

    async def claim_inbox(self, now: datetime, lease: timedelta, limit: int) -> list[InboxRecord]:
        rows = await self._write(CLAIM_INBOX, now, now + lease, limit)
        return sorted(
            (
                InboxRecord(
                    row["id"],
                    row["msn"],
                    row["event_type"],
                    row["reference"],
                    row["body"],
                    row["body_encrypted"],
                    InboxStatus(row["status"]),
                    row["attempts"],
                    row["received_at"],
                )
                for row in rows
            ),
            key=lambda record: record.id,
        )

    # ---- the outbox ---------------------------------------------------------------------------

    async def claim_outbox(
        self, now: datetime, lease: timedelta, limit: int
    ) -> list[CommandRecord]:
        rows = await self._write(CLAIM_OUTBOX, now, now + lease, limit)
        return sorted((_command(row) for row in rows), key=lambda command: command.id)

    async def finish_command(self, outcome: CommandOutcome, now: datetime) -> None:
        """Record an attempt of a command that has no checkout (or whose checkout is gone)."""
        await self._write(
            FINISH_COMMAND,
            outcome.command_id,
            outcome.status.value,
            outcome.last_error,
            outcome.result,
            outcome.next_attempt_at,
            outcome.outcome_unknown,
            now,
        )

    # ---- the reconciler -----------------------------------------------------------------------

    async def schedule_poll(
        self, checkout_id: str, now: datetime, every: float, *, slow_after: int, slow_every: float
    ) -> None:
        await self._write(SCHEDULE_POLL, checkout_id, now, every, slow_after, slow_every)


def _pending(value: Any) -> list[PendingCommand]:
    return [
        PendingCommand(int(item[0]), CommandKind(item[1]), int(item[2]) if item[2] else None)
        for item in value or ()
    ]


def _till(row: asyncpg.Record) -> TillRecord:
    return TillRecord(
        id=row["t_id"],
        store_id=row["t_store_id"],
        msn=row["t_msn"],
        merchant_qr_id=row["t_qr"],
        api_key_id=row["t_key_id"],
        status=TillStatus(row["t_status"]),
        revision=row["t_revision"],
        audit_seq=row["t_audit_seq"],
        audit_head=row["t_audit_head"],
    )


def _policy(row: asyncpg.Record) -> StorePolicy:
    if row["s_club_policy"] is None:
        return StorePolicy()
    return StorePolicy(
        ClubPolicy(row["s_club_policy"]), bool(row["s_hold"]), int(row["s_hold_seconds"])
    )


def _loaded(row: asyncpg.Record) -> LoadedCheckout:
    inbox = row["inbox_status"]
    return LoadedCheckout(
        checkout=CheckoutRecord.from_mapping(row, "c_"),
        till=_till(row),
        policy=_policy(row),
        unfinished=_pending(row["unfinished"]),
        inbox_status=InboxStatus(inbox) if inbox is not None else None,
        seen_request=row["seen_request"],
    )


def _loaded_till(row: asyncpg.Record) -> LoadedTill:
    inbox = row["inbox_status"]
    active = None
    if row["c_id"] is not None:
        active = LoadedCheckout(
            checkout=CheckoutRecord.from_mapping(row, "c_"),
            till=_till(row),
            policy=_policy(row),
            unfinished=_pending(row["unfinished"]),
        )
    return LoadedTill(
        till=_till(row),
        policy=_policy(row),
        active=active,
        inbox_status=InboxStatus(inbox) if inbox is not None else None,
    )


def _command(row: asyncpg.Record) -> CommandRecord:
    return CommandRecord(
        id=row["id"],
        checkout_id=row["checkout_id"],
        till_id=row["till_id"],
        kind=CommandKind(row["kind"]),
        msn=row["msn"],
        reference=row["reference"],
        idempotency_key=row["idempotency_key"],
        payload=row["payload"] or {},
        attempts=row["attempts"],
        outcome_unknown=row["outcome_unknown"],
        customer_token_enc=row["customer_token_enc"],
        customer_token_expires_at=row["customer_token_expires_at"],
        mutating_calls=row["mutating_calls"],
        scanned_at=row["scanned_at"],
        store_id=row["store_id"],
        checkout_found=row["checkout_found"],
    )
