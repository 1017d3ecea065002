"""Vipps MobilePay webhook signatures (HMAC-SHA256), exactly per REFERENCE.md §6.3.

String to sign, three lines joined by LF, no trailing newline::

    POST
    <path and query of the *registered* URL>
    <x-ms-date>;<host of the registered URL>;<base64 sha256 of the raw body>

The key is the UTF-8 bytes of the registration's ``secret`` *as returned* — never base64-decoded,
even though it looks like base64. The whole ``Authorization`` header is compared in constant time.

Vipps documents no maximum age for ``x-ms-date``; we reject dates further than ``max_age`` from
our clock in either direction and rely on the inbox for duplicates inside the window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

SIGNED_HEADERS = "x-ms-date;host;x-ms-content-sha256"
_AUTH_PREFIX = f"HMAC-SHA256 SignedHeaders={SIGNED_HEADERS}&Signature="


class WebhookSignatureError(Exception):
    """The delivery is not provably from Vipps. ``reason`` is safe to log (no secret inside)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def content_hash(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def _signature(secret: str, path_and_query: str, host: str, ms_date: str, body_hash: str) -> str:
    to_sign = f"POST\n{path_and_query}\n{ms_date};{host};{body_hash}"
    digest = hmac.new(secret.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def format_ms_date(moment: datetime) -> str:
    """RFC 7231 date as Vipps sends it in ``x-ms-date``: ``Thu, 30 Mar 2023 08:38:32 GMT``."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def sign_webhook(
    secret: str, *, path_and_query: str, host: str, body: bytes, ms_date: str
) -> dict[str, str]:
    """The headers Vipps sends with a delivery. Used by the simulator and by tests."""
    body_hash = content_hash(body)
    signature = _signature(secret, path_and_query, host, ms_date, body_hash)
    return {
        "x-ms-date": ms_date,
        "x-ms-content-sha256": body_hash,
        "Authorization": _AUTH_PREFIX + signature,
        "Host": host,
    }


def verify_webhook(
    secrets: Iterable[str],
    *,
    path_and_query: str,
    host: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
    max_age: timedelta,
) -> str:
    """Check a delivery; return the secret that verified it, else raise WebhookSignatureError.

    ``secrets`` holds every secret currently valid for the MSN — two during a rotation overlap.
    ``path_and_query`` and ``host`` come from the registered URL (configuration), never from what
    the app server sees behind a proxy. ``headers`` must be case-insensitive or lower-case.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    ms_date = lowered.get("x-ms-date")
    claimed_hash = lowered.get("x-ms-content-sha256")
    authorization = lowered.get("authorization")
    if not ms_date or not claimed_hash or not authorization:
        raise WebhookSignatureError("missing signature headers")
    try:
        sent_at = parsedate_to_datetime(ms_date)
    except (TypeError, ValueError) as exc:
        raise WebhookSignatureError("unparseable x-ms-date") from exc
    if sent_at.tzinfo is None:
        raise WebhookSignatureError("x-ms-date without time zone")
    if abs(now - sent_at) > max_age:
        raise WebhookSignatureError("x-ms-date outside the accepted window")
    body_hash = content_hash(body)
    if not hmac.compare_digest(body_hash.encode(), claimed_hash.encode()):
        raise WebhookSignatureError("body does not match x-ms-content-sha256")
    matched: str | None = None
    for secret in secrets:
        expected = _AUTH_PREFIX + _signature(secret, path_and_query, host, ms_date, body_hash)
        # Compare against every secret (no early exit) so timing says nothing about which matched.
        if hmac.compare_digest(expected.encode(), authorization.encode()) and matched is None:
            matched = secret
    if matched is None:
        raise WebhookSignatureError("signature mismatch")
    return matched
