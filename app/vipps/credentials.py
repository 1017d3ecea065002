"""Which API keys to use for a sales unit: the credentials-provider seam of the Vipps client.

Vipps MobilePay issues keys in two ways that matter here ("API keys", Vipps knowledge base):

* **Sales unit keys** — each sales unit (MSN) has its own ``client_id``, ``client_secret`` and
  subscription key; they act for that MSN only, and Vipps answers 403 for any other.
* **Partner keys** — one set for all the merchants connected to a partner; the partner names the
  merchant in ``Merchant-Serial-Number`` on every call. On Login they authenticate with a platform
  access token as ``Bearer`` instead of ``client_secret_basic`` (Login API, "Partner keys").
  (Management keys reach the Management API only and cannot act for a merchant at all.)

The client asks a :class:`CredentialsProvider` for the keys of the MSN each call is for; where the
keys live (settings, a database table) is the provider's business, not the client's, which knows
nothing of either. Access tokens are cached per key set (:mod:`app.vipps.tokens`), so two sales
units with their own keys never share a token.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from pydantic import SecretStr

from app.vipps.errors import VippsAuthError

_KEY_VALUE = re.compile(r"[\x21-\x7e]{1,500}")


def key_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be an API key, or None. Keys travel in HTTP headers (``client_id``,
    ``client_secret``, ``Ocp-Apim-Subscription-Key``), so they are visible ASCII without spaces;
    the portal's are GUIDs and hex or base64 strings."""
    if _KEY_VALUE.fullmatch(value):
        return None
    return "must be 1-500 visible ASCII characters without spaces"


@dataclass(frozen=True)
class Credentials:
    """One key set. ``repr`` and :meth:`fingerprint` show nothing secret."""

    client_id: SecretStr
    client_secret: SecretStr
    subscription_key: SecretStr
    partner: bool = False

    def cache_key(self, base_url: str) -> tuple[str, str, str]:
        key_hash = hashlib.sha256(self.subscription_key.get_secret_value().encode()).hexdigest()
        return (base_url, self.client_id.get_secret_value(), key_hash)

    def fingerprint(self) -> str:
        """12 hex characters that tell key sets apart in listings and audit entries.

        A hash over all three values: it changes with any of them, and none can be recovered.
        """
        digest = hashlib.sha256()
        for part in (self.client_id, self.client_secret, self.subscription_key):
            digest.update(part.get_secret_value().encode())
            digest.update(b"\0")
        return digest.hexdigest()[:12]


class NoCredentials(VippsAuthError):
    """We hold no keys that cover this MSN: nothing was sent to Vipps.

    An authentication problem like a 403 from Vipps (retrying helps only once an operator adds
    keys), so callers that handle :class:`VippsAuthError` handle this too.
    """

    def __init__(self, msn: str | None, operation: str | None = None) -> None:
        what = f"sales unit {msn}" if msn else "this call"
        super().__init__(
            f"no Vipps API keys cover {what}: add the sales unit's keys or configure partner keys",
            operation=operation,
        )
        self.msn = msn


class CredentialsProvider(Protocol):
    """Gives the keys for a sales unit, or raises :class:`NoCredentials`."""

    async def credentials_for(self, msn: str) -> Credentials: ...


class StaticCredentials:
    """One key set: partner keys for every MSN, or one sales unit's keys for the listed MSNs.

    ``msns=None`` covers every MSN (partner keys; also what a single-merchant test wants).
    """

    def __init__(self, credentials: Credentials, msns: Iterable[str] | None = None) -> None:
        self._credentials = credentials
        self._msns = frozenset(msns) if msns is not None else None

    def covers(self, msn: str) -> bool:
        return self._msns is None or msn in self._msns

    async def credentials_for(self, msn: str) -> Credentials:
        if not self.covers(msn):
            raise NoCredentials(msn)
        return self._credentials
