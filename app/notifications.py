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

Revocations travel the same way, as a payload of their own (:meth:`ChangeHub.revocation_payload`):
rotating a till's API key or deactivating the till revokes ``till-key:<key id>``; revoking a
named admin key revokes ``admin-key:<key id>``. The transaction that makes the change calls
``Work.revoke(subject)`` (app/service/context.py); after its commit, on every replica,
:meth:`ChangeHub.revoke` sets that subject's revocation event (streams and long-polls opened with
the credential hold it and end) and calls every callback registered with
:meth:`ChangeHub.on_revocation` (credential caches drop the key). A lost ``LISTEN`` connection may
have missed revocations: after a reconnect the callbacks get :data:`ALL_SUBJECTS` (forget every
cached credential), and open streams re-check their credential at their next keep-alive.
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
# A revocation's payload on CHANNEL: this prefix, then the subject. A change's payload starts with
# a till id, which never contains "!" (app/service/tills.py TILL_ID).
REVOCATION_PREFIX = "!revoke "
# Given to revocation callbacks when revocations may have been missed: forget every credential.
ALL_SUBJECTS = "*"
# Checkouts whose newest committed version is remembered (most recently changed first out).
LATEST_KEPT = 4096
log = structlog.get_logger("app.notifications")


@dataclass(frozen=True, slots=True)
class Latest:
    """The newest announced version of a checkout; ``checkout`` as committed, when known here."""

    version: int
    checkout: CheckoutRecord | None = None
    unfinished: Sequence[PendingCommand] | None = None
    # The till's revision after the save that made it: orders two saves of one version (a Vipps
    # call finished without a visible change still changes what is in flight).
    revision: int = 0


def _setter(event: asyncio.Event) -> Any:
    def on_termination(_connection: Any) -> None:
        event.set()

    return on_termination


def till_key(till_id: str) -> str:
    return f"till:{till_id}"


def checkout_key(checkout_id: str) -> str:
    return f"checkout:{checkout_id}"


def till_key_subject(key_id: str) -> str:
    """What revoking a till's API key (by rotation or deactivation of the till) revokes."""
    return f"till-key:{key_id}"


def admin_key_subject(key_id: str) -> str:
    """What revoking a named admin key revokes."""
    return f"admin-key:{key_id}"


async def wait_any(*events: asyncio.Event | None, within: float) -> bool:
    """Wait until one of ``events`` (``None`` entries are ignored) is set, at most ``within``
    seconds; ``True`` if one was set."""
    present = [e for e in events if e is not None]
    if any(e.is_set() for e in present):
        return True
    if len(present) == 1:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(present[0].wait(), within)
        return present[0].is_set()
    waiters = [asyncio.ensure_future(e.wait()) for e in present]
    try:
        done, _ = await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)


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
        self._revoked: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        self._revocation_callbacks: list[Callable[[str], None]] = []

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
        revision: int = 0,
    ) -> None:
        """A change committed: remember the newest (version, till revision) of the checkout —
        with the checkout as saved, when given — and wake the till's and the checkout's waiters.
        An older change never replaces a newer one."""
        if checkout_id is not None and version is not None:
            known = self._latest.get(checkout_id)
            if known is None or (version, revision) > (known.version, known.revision):
                self._latest[checkout_id] = Latest(version, checkout, unfinished, revision)
                self._latest.move_to_end(checkout_id)
                while len(self._latest) > LATEST_KEPT:
                    self._latest.popitem(last=False)
        self.signal_change(till_id, checkout_id)

    def latest(self, checkout_id: str) -> Latest | None:
        return self._latest.get(checkout_id)

    def forget_all(self) -> None:
        """Notifications may have been missed: forget what is known, let credential caches
        forget too, and wake every waiter."""
        self._latest.clear()
        self._tell_revocation_callbacks(ALL_SUBJECTS)
        for key in list(self._events.keys()):
            self.signal(key)

    @staticmethod
    def payload(
        till_id: str,
        checkout_id: str | None,
        version: int | None = None,
        origin: str = "-",
        revision: int = 0,
    ) -> str:
        """``"<till> <checkout|-> <version|-> <origin> <till revision>"``: what a change tells
        other replicas."""
        shown = version if version is not None else "-"
        return f"{till_id} {checkout_id or '-'} {shown} {origin} {revision}"

    # ---- revocations ----------------------------------------------------------------------

    def revocation_event(self, subject: str) -> asyncio.Event:
        """The event set when ``subject`` is next revoked, on this replica or any other.

        Take it *before* checking the credential against the database and keep a reference
        while the credential is in use (a stream, a long-poll, a cache entry): then a
        revocation that commits after the check still reaches the holder. Events are held
        weakly, so an idle subject costs nothing.
        """
        event = self._revoked.get(subject)
        if event is None:
            event = asyncio.Event()
            self._revoked[subject] = event
        return event

    def on_revocation(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(subject)`` on every revocation heard here, after the revoking
        transaction committed; ``subject`` is :data:`ALL_SUBJECTS` when revocations may have
        been missed. Callbacks run in the event loop and must not block or raise."""
        self._revocation_callbacks.append(callback)

    def revoke(self, *subjects: str) -> None:
        """Announce on this replica that ``subjects`` are revoked (other replicas hear it from
        the revoking transaction's NOTIFY): end their streams and long-polls, tell callbacks."""
        for subject in subjects:
            event = self._revoked.pop(subject, None)
            if event is not None:
                event.set()
            self._tell_revocation_callbacks(subject)

    def _tell_revocation_callbacks(self, subject: str) -> None:
        for callback in self._revocation_callbacks:
            try:
                callback(subject)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("notifications.revocation_callback_failed")

    @staticmethod
    def revocation_payload(subject: str) -> str:
        return REVOCATION_PREFIX + subject

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload.startswith(REVOCATION_PREFIX):
            self.revoke(payload.removeprefix(REVOCATION_PREFIX))
            return
        parts = payload.split(" ")
        if len(parts) > 3 and parts[3] == self.origin:
            return  # our own change: published here when it was saved
        till_id = parts[0]
        checkout_id = parts[1] if len(parts) > 1 and parts[1] not in ("", "-") else None
        version = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
        revision = int(parts[4]) if len(parts) > 4 and parts[4].isdigit() else 0
        self.publish(till_id, checkout_id, version, revision=revision)

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
        reconnecting = False
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(dsn)
                await connection.add_listener(CHANNEL, self._on_notify)
                if reconnecting:
                    # What other replicas announced between the loss and this LISTEN was
                    # never heard, and caches may have refilled meanwhile: forget again.
                    self.forget_all()
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
            # Missed notifications while disconnected: wake everyone so they re-read, and let
            # credential caches forget (streams re-check their credential at a keep-alive).
            self.forget_all()
            reconnecting = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
