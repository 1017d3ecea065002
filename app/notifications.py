"""Wake-ups for long-polls, SSE streams and workers, on this replica and across replicas.

A state change commits first, then signals. Waiters always re-read the database after waking,
so a spurious or duplicate wake-up is harmless and a lost one costs at most the waiter's timeout.

* In-process: one :class:`asyncio.Event` per key (``till:<id>``, ``checkout:<id>``), replaced on
  every signal and held weakly, so idle keys cost nothing.
* Across replicas (Postgres only): the committing transaction runs ``pg_notify`` on
  :data:`CHANNEL`; every replica keeps one ``LISTEN`` connection and signals its local waiters.
  On SQLite there is only one process, so the local signal is all there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any

import asyncpg
import structlog
from sqlalchemy.engine import make_url

CHANNEL = "vipps_pos_changes"
log = structlog.get_logger("app.notifications")


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

    @staticmethod
    def payload(till_id: str, checkout_id: str | None) -> str:
        return f"{till_id} {checkout_id or '-'}"

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        till_id, _, checkout_id = payload.partition(" ")
        self.signal_change(till_id, None if checkout_id in ("", "-") else checkout_id)

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
            for key in list(self._events.keys()):
                self.signal(key)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
