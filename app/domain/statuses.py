"""The statuses of what the service stores, as types. Values are what the database holds.

Pure: the standard library only. The checkout's own states are in :mod:`app.domain.state_machine`.
"""

from __future__ import annotations

from enum import StrEnum


class TillStatus(StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"


class QrStatus(StrEnum):
    """Whether Vipps knows the till's merchant callback QR as we do."""

    PENDING = "PENDING"
    SYNCED = "SYNCED"
    FAILED = "FAILED"


class ClubPolicy(StrEnum):
    """A store's customer-club step at the till."""

    OFF = "off"  # pay straight away
    LOOKUP = "lookup"  # recognise members
    ENROLL = "enroll"  # also ask non-members to join


class InboxStatus(StrEnum):
    PENDING = "PENDING"  # stored, not yet applied
    PROCESSED = "PROCESSED"
    UNMATCHED = "UNMATCHED"  # no till or checkout of ours: kept for operators
    FAILED = "FAILED"  # not understood, or processing failed (retried with backoff)


UNPROCESSED_INBOX = (InboxStatus.PENDING, InboxStatus.FAILED)


class OutboxStatus(StrEnum):
    PENDING = "PENDING"  # waiting for a worker (first attempt or a retry)
    IN_FLIGHT = "IN_FLIGHT"  # claimed under a lease; a call may be under way
    DONE = "DONE"
    FAILED = "FAILED"  # Vipps refused it; the checkout recorded why
    CANCELLED = "CANCELLED"


UNFINISHED_OUTBOX = (OutboxStatus.PENDING, OutboxStatus.IN_FLIGHT)


class CheckInStatus(StrEnum):
    """What became of a ``user.checked-in.v1`` matched to a till."""

    WAITING = "WAITING"  # no checkout yet: waits for the till's next one
    USED = "USED"
    SUPERSEDED = "SUPERSEDED"  # a newer scan at the same idle till
    EXPIRED = "EXPIRED"
    IGNORED_BUSY = "IGNORED_BUSY"  # the till was busy with another sale
    IGNORED_INACTIVE_TILL = "IGNORED_INACTIVE_TILL"


class RegistrationStatus(StrEnum):
    """A webhook registration at Vipps, as we hold it."""

    REGISTERING = "REGISTERING"  # written just before the register call; turns ACTIVE after
    ACTIVE = "ACTIVE"
    RETIRING = "RETIRING"  # deleted at Vipps; its secret still verifies for a grace period
