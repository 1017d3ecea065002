"""Wake-ups for long-polls, SSE streams and workers, on this replica and across replicas.

A state change commits first, then signals. Waiters always re-read the database after waking,
so a spurious or duplicate wake-up is harmless and a lost one costs at most the waiter's timeout.

* In-process: one :class:`asyncio.Event` per key (``till:<id>``, ``checkout:<id>``), replaced on
  every signal and held weakly, so idle keys cost nothing.
* Across replicas (Postgres only): the committing statement runs ``pg_notify`` on
  :data:`CHANNEL` with ``"<till> <checkout> <version>"``; every replica keeps one ``LISTEN``
  connection and signals its local waiters. On SQLite there is only one process, so the local
  signal is all there is.
* What waiters can be told, they are told: :meth:`ChangeHub.latest` holds, per checkout, the
  newest version announced and — when this process committed it — the checkout as committed, so
  a long-poll that wakes up returns without reading the database. A version learnt from another
  replica carries no checkout: the waiter reads it once. After the ``LISTEN`` connection was lost
  everything known is forgotten (notifications may have been missed) and every waiter re-reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from app.persistence.records import CheckoutRecord, PendingCommand

CHANNEL = "vipps_pos_changes"
# A notification that a till's credentials were revoked (key rotated, till deactivated).
_REVOKED = "!revoked"
# Checkouts whose newest committed version is remembered (most recently changed first out).
LATEST_KEPT = 4096
log = structlog.get_logger("app.notifications")


@dataclass(frozen=True, slots=True)
class Latest:
    """The newest announced version of a checkout; ``checkout`` as committed, when known here."""

    version: int
    checkout: CheckoutRecord | None = None
    unfinished: Sequence[PendingCommand] | None = None


def _setter(event: asyncio.Event) -> Any:
    def on_termination(_connection: Any) -> None:
        event.set()

    return on_termination


def till_key(till_id: str) -> str:
    return f"till:{till_id}"


def checkout_key(checkout_id: str) -> str:
    return f"checkout:{checkout_id}"


class ChangeHub:
    def __init__(self) -> None:
        self._events: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        self.outbox_wakeup = asyncio.Event()
        self.inbox_wakeup = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._latest: OrderedDict[str, Latest] = OrderedDict()
        # Names this process in its notifications: it hears its own back over LISTEN, possibly
        # before its own save has returned; the local publish already told its waiters more.
        self.origin = secrets.token_hex(4)
        # Called with a till id when its credentials are revoked (here or on another replica),
        # with ``None`` when revocations may have been missed (every cached credential goes).
        self.on_revoked: list[Callable[[str | None], None]] = []

    def event_for(self, key: str) -> asyncio.Event:
        """The event the next signal of ``key`` sets. Take it *before* re-reading the database."""
        event = self._events.get(key)
        if event is None:
            event = asyncio.Event()
            self._events[key] = event
        return event

    def signal(self, *keys: str) -> None:
        for key in keys:
            event = self._events.pop(key, None)
            if event is not None:
                event.set()

    def signal_change(self, till_id: str, checkout_id: str | None) -> None:
        keys = [till_key(till_id)]
        if checkout_id:
            keys.append(checkout_key(checkout_id))
        self.signal(*keys)

    def publish(
        self,
        till_id: str,
        checkout_id: str | None,
        version: int | None,
        checkout: CheckoutRecord | None = None,
        unfinished: Sequence[PendingCommand] | None = None,
    ) -> None:
        """A change committed: remember the newest version (and the checkout, when given) and
        wake the till's and the checkout's waiters. An older version never replaces a newer."""
        if checkout_id is not None and version is not None:
            known = self._latest.get(checkout_id)
            if (
                known is None
                or version > known.version
                or (version == known.version and known.checkout is None and checkout is not None)
            ):
                self._latest[checkout_id] = Latest(version, checkout, unfinished)
                self._latest.move_to_end(checkout_id)
                while len(self._latest) > LATEST_KEPT:
                    self._latest.popitem(last=False)
        self.signal_change(till_id, checkout_id)

    def latest(self, checkout_id: str) -> Latest | None:
        return self._latest.get(checkout_id)

    def forget_all(self) -> None:
        """Notifications may have been missed: forget what is known and wake every waiter."""
        self._latest.clear()
        for callback in self.on_revoked:
            callback(None)
        for key in list(self._events.keys()):
            self.signal(key)

    def revoked(self, till_id: str) -> None:
        """The till's credentials changed: drop what was cached for them, wake its streams."""
        for callback in self.on_revoked:
            callback(till_id)
        self.signal(till_key(till_id))

    @staticmethod
    def payload(
        till_id: str, checkout_id: str | None, version: int | None = None, origin: str = "-"
    ) -> str:
        """``"<till> <checkout|-> <version|-> <origin>"``: what a change tells other replicas."""
        return f"{till_id} {checkout_id or '-'} {version if version is not None else '-'} {origin}"

    @staticmethod
    def revocation_payload(till_id: str) -> str:
        return f"{_REVOKED} {till_id}"

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        parts = payload.split(" ")
        if parts[0] == _REVOKED and len(parts) == 2:
            self.revoked(parts[1])
            return
        if len(parts) > 3 and parts[3] == self.origin:
            return  # our own change: published here when it was saved
        till_id = parts[0]
        checkout_id = parts[1] if len(parts) > 1 and parts[1] not in ("", "-") else None
        version = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
        self.publish(till_id, checkout_id, version)

    async def start_listening(self, database_url: str) -> None:
        """Listen for other replicas' changes (Postgres only); reconnects until stopped."""
        url = make_url(database_url)
        if url.get_backend_name() != "postgresql":
            return
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(dsn, ready), name="change-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), timeout=5)

    async def _listen(self, dsn: str, ready: asyncio.Event) -> None:
        delay = 0.5
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(dsn)
                await connection.add_listener(CHANNEL, self._on_notify)
                ready.set()
                delay = 0.5
                log.info("notifications.listening", channel=CHANNEL)
                lost = asyncio.Event()
                connection.add_termination_listener(_setter(lost))
                await lost.wait()
                log.warning("notifications.connection_lost")
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("notifications.listen_failed", error=type(exc).__name__)
            finally:
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
            # Missed notifications while disconnected: wake everyone so they re-read.
            self.forget_all()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
