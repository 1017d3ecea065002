"""Merchant-initiated (CIBA) login: the small types the client's login methods return.

Polling the token endpoint has four non-token answers defined by OpenID CIBA core §11; the client
maps them onto a result instead of exceptions, because two of them mean "keep going":

* :class:`CibaPending` — ``authorization_pending`` (keep polling every ``interval`` seconds) or
  ``slow_down`` (``slow_down=True``: add 5 seconds to the interval, RFC 8628 §3.5);
* :class:`CibaEnded` — ``access_denied`` (the user declined) or ``expired_token`` (the login
  request timed out). Start a new login if wanted.

Any other error (``invalid_grant``, ``invalid_client``, ...) is raised as a
:class:`~app.vipps.errors.VippsError`. Callers ``match`` on the union and end with
``assert_never``.

Login uses ``client_secret_basic`` with the sales unit's ``client_id``/``client_secret``; it does
not use the platform access token or the subscription key (REFERENCE.md §8.1).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr

from app.vipps.schemas import CibaTokens

CIBA_GRANT_TYPE = "urn:openid:params:grant-type:ciba"
# Shown on both the till and the phone (REFERENCE.md §8.2).
_BINDING_MESSAGE = re.compile(r"^[A-Z0-9\-]{5,8}$")
_MSISDN = re.compile(r"^\d{10,15}$")
PENDING_ERRORS = frozenset({"authorization_pending", "slow_down"})
ENDED_ERRORS = frozenset({"access_denied", "expired_token"})


@dataclass(frozen=True)
class CibaPending:
    """The user has not answered yet. ``slow_down``: poll less often from now on."""

    slow_down: bool = False


@dataclass(frozen=True)
class CibaEnded:
    """The login is over without tokens: declined by the user, or expired."""

    reason: Literal["access_denied", "expired_token"]
    detail: str | None = None


CibaPollResult = CibaTokens | CibaPending | CibaEnded


def basic_auth(client_id: SecretStr, client_secret: SecretStr) -> str:
    """``Authorization`` value for ``client_secret_basic`` as Vipps documents it."""
    raw = f"{client_id.get_secret_value()}:{client_secret.get_secret_value()}"
    return "Basic " + base64.b64encode(raw.encode("utf-8")).decode("ascii")


def msisdn_login_hint(msisdn: str) -> str:
    """``urn:msisdn:4712345678`` — the documented way to name the user (REFERENCE.md §8.2)."""
    if not _MSISDN.match(msisdn):
        raise ValueError("an MSISDN is 10-15 digits, country code first, no '+'")
    return f"urn:msisdn:{msisdn}"


def validate_binding_message(message: str) -> str:
    if not _BINDING_MESSAGE.match(message):
        raise ValueError("binding_message must match ^[A-Z0-9-]{5,8}$")
    return message
