"""Masking and detection of personal data and credentials in text meant for logs.

Pure functions, standard library only, so the log pipeline, the API layer and test suites share one
definition of what counts as PII.

What is detected
----------------
*Phone numbers (MSISDNs).* Vipps MobilePay sends and expects MSISDNs as bare digits with the
country code and no ``+`` (``4712345678``). A number counts as a phone number when it is

- ``+`` followed by 10–15 digits (any country; single spaces or hyphens between digits allowed,
  e.g. ``+47 123 45 678``), or
- a bare or ``00``-prefixed run for the markets the service sells in: ``45`` or ``47`` plus exactly
  8 digits (Denmark, Norway: 10 digits) or ``358`` plus 7–10 digits (Finland: 10–13 digits).

A bare run only counts when it stands alone: no letter or digit directly before or after it and no
``digit.`` before it. That rule keeps false positives low:

- epoch seconds (``17…``, 10 digits) and epoch milliseconds (``17…``, 13 digits) do not start with
  a country code; a bare ``45…``/``47…``/``358…`` epoch value lies after the year 2080;
- microsecond/nanosecond epochs (16/19 digits) are longer than any bare pattern;
- digits inside identifiers — hex digests, base64 tokens, ``s123-pos2-0042``-style references —
  touch letters or are too short;
- the fractional part of a float (``0.4712345678``) follows ``digit.``.

National numbers without a country code (``12345678``) are not detected: they are
indistinguishable from amounts, counters and references, and the service only handles MSISDNs.
A Vipps ``pspReference`` or other 10-digit id that happens to start with ``45``/``47`` is
masked and flagged; that is the accepted cost of the rule.

*Credentials in free text.* ``Bearer <token>`` and ``Basic <credentials>`` (e.g. a logged
``Authorization`` header) are detected and redacted.

*Opaque values.* Vipps customer tokens, access tokens and secrets have no recognisable shape, so
they are never guessed at: the log pipeline redacts them by key name (:func:`classify_key`), and
:func:`find_pii` finds them by value when the caller passes the ones it knows.

Invariant shared by :func:`mask_text` and :func:`find_pii`: ``find_pii(mask_text(s))`` reports no
phone number and no bearer credential, for every ``s``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from enum import StrEnum
from urllib.parse import quote

__all__ = [
    "MASK_CHAR",
    "REDACTED",
    "KeyKind",
    "classify_key",
    "find_pii",
    "is_msisdn",
    "mask_phone",
    "mask_text",
    "redact",
]

REDACTED = "[redacted]"
MASK_CHAR = "*"

# A known secret shorter than this would match by chance in ordinary text.
_MIN_KNOWN_SECRET_LENGTH = 6

_BOUNDARY_BEFORE = r"(?<![0-9A-Za-z+])(?<![0-9]\.)"
_BOUNDARY_AFTER = r"(?![0-9A-Za-z])"
_NORDIC = r"(?:4[57][0-9]{8}|358[0-9]{7,10})"

_PHONE_RE = re.compile(
    # ``+`` and 10-15 digits, any country, optionally grouped by single spaces or hyphens.
    rf"(?<![0-9A-Za-z+])\+(?:[0-9][ -]?){{9,14}}[0-9]{_BOUNDARY_AFTER}"
    # Denmark, Norway, Finland without ``+``: bare (the Vipps wire format) or ``00``-prefixed.
    rf"|{_BOUNDARY_BEFORE}(?:00)?{_NORDIC}{_BOUNDARY_AFTER}"
)
_FULL_MSISDN_RE = re.compile(rf"(?:\+|00)?{_NORDIC}|\+[0-9]{{10,15}}")

# The credential must contain a digit or be 20+ characters long, so that prose such as "Basic
# authentication failed" is not taken for one; JWTs and base64 credentials always qualify.
_CREDENTIAL_CHARS = r"[A-Za-z0-9\-._~+/]"
_CREDENTIAL_RE = re.compile(
    r"\b(Bearer|Basic)\s+"
    rf"(?:(?=[A-Za-z\-._~+/]*[0-9]){_CREDENTIAL_CHARS}{{8,}}|{_CREDENTIAL_CHARS}{{20,}})=*"
)


class KeyKind(StrEnum):
    """How the log pipeline treats the value under a key."""

    PHONE = "phone"
    CREDENTIAL = "credential"


# Compared against the key lower-cased with ``_`` and ``-`` removed, so ``customerToken``,
# ``customer_token`` and ``Customer-Token`` are the same key.
_PHONE_KEY_SUFFIXES = ("phone", "msisdn", "phonenumber", "mobilenumber")
_SECRET_KEY_SUFFIXES = (
    "token",
    "tokens",
    "secret",
    "secrets",
    "password",
    "passwd",
    "apikey",
    "subscriptionkey",  # Ocp-Apim-Subscription-Key
    "authorization",
    "encryptionkey",
    "clientid",
    "privatekey",
    "cookie",
    "credential",
    "credentials",
)


def classify_key(key: object) -> KeyKind | None:
    """Say whether a mapping key names a phone number, a credential, or neither.

    Matching is on the key's suffix after normalisation, so ``access_token``, ``customerToken``,
    ``client_secret``, ``x-api-key`` and ``Ocp-Apim-Subscription-Key`` are credentials and
    ``phone_number``/``msisdn`` are phone numbers, while ``token_expires_at`` is neither.
    """
    normalised = str(key).lower().replace("_", "").replace("-", "")
    if normalised.endswith(_SECRET_KEY_SUFFIXES):
        return KeyKind.CREDENTIAL
    if normalised.endswith(_PHONE_KEY_SUFFIXES):
        return KeyKind.PHONE
    return None


def mask_phone(msisdn: str | int) -> str:
    """Mask a phone number so that at most its last 2 digits remain: ``********78``.

    Everything but digits is dropped (``+``, spaces); each masked digit becomes one ``*``. Numbers
    of fewer than 4 digits are masked entirely, since 2 of 3 digits would be most of the number.
    Input without any digit gives :data:`REDACTED` (never echoed back), and the empty string stays
    empty.
    """
    text = str(msisdn)
    if not text:
        return ""
    digits = [c for c in text if c.isascii() and c.isdigit()]
    if not digits:
        return REDACTED
    if len(digits) < 4:
        return MASK_CHAR * len(digits)
    return MASK_CHAR * (len(digits) - 2) + "".join(digits[-2:])


def redact(value: object) -> str:
    """Replace a credential by :data:`REDACTED`, whatever it is.

    Neither a prefix nor the length is kept: both help guessing, and a customer token's prefix is
    no aid to debugging. Log a stable reference (checkout id, MSN) next to it instead.
    """
    del value
    return REDACTED


def is_msisdn(value: str) -> bool:
    """True when *value* as a whole is a phone number by the module's rule (see module doc)."""
    return _FULL_MSISDN_RE.fullmatch(value) is not None


def mask_text(text: str) -> str:
    """Mask every phone number in *text* to its last 2 digits and redact bearer credentials.

    Idempotent: masked output contains no further match, so masking twice changes nothing.
    """
    if not any(c.isdigit() for c in text) and "Bearer" not in text and "Basic" not in text:
        return text
    masked = _PHONE_RE.sub(lambda m: mask_phone(m.group(0)), text)
    return _CREDENTIAL_RE.sub(lambda m: f"{m.group(1)} {REDACTED}", masked)


def find_pii(text: str, *, known_secrets: Iterable[str] = ()) -> list[str]:
    """Report every phone number, bearer credential and known secret in *text*.

    Meant for tests that scan captured log output: ``assert find_pii(output, known_secrets=...)
    == []``. Each finding names the kind and the character offset, and shows phone numbers masked
    and secrets by their position in *known_secrets* only, so an assertion message never repeats
    what it found.

    A known secret (customer token, access token, client secret, webhook secret) is found in its
    raw form, as a JSON string escapes it, and URL-encoded. Empty entries are ignored; entries
    shorter than 6 characters raise :class:`ValueError`, since they would match by chance.
    """
    findings: list[str] = []
    for match in _PHONE_RE.finditer(text):
        findings.append(f"phone number {mask_phone(match.group(0))} at {match.start()}")
    for match in _CREDENTIAL_RE.finditer(text):
        findings.append(f"{match.group(1)} credential at {match.start()}")
    for index, secret in enumerate(known_secrets):
        if not secret:
            continue
        if len(secret) < _MIN_KNOWN_SECRET_LENGTH:
            raise ValueError(
                f"known secret #{index} is shorter than {_MIN_KNOWN_SECRET_LENGTH} characters"
            )
        for form in _encoded_forms(secret):
            start = text.find(form)
            while start != -1:
                findings.append(f"known secret #{index} at {start}")
                start = text.find(form, start + 1)
    return findings


def _encoded_forms(secret: str) -> set[str]:
    """The shapes a secret takes in log output: raw, inside a JSON string, URL-encoded."""
    return {secret, json.dumps(secret)[1:-1], quote(secret, safe="")}
