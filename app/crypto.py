"""Encryption of secrets and customer tokens at rest, and hashing of API keys and phone numbers.

* :class:`SecretBox` wraps Fernet (AES-128-CBC + HMAC-SHA256). Several keys rotate: the first
  encrypts, every key decrypts (``MultiFernet``).
* API keys are 256-bit random strings, so a plain SHA-256 is a safe stored form (no dictionary to
  attack); comparison is constant-time.
* Phone numbers are looked up by a keyed hash (HMAC-SHA256 under a key derived from the encryption
  key), so the members table never holds a searchable clear number. Each configured key derives
  its own hash key: after a rotation ("NEW,OLD") a number is looked up under every key's hash
  (:meth:`SecretBox.lookup_hashes`) and moved to the first key's on the way
  (app/loyalty/members.py, ``vipps-pos encryption-keys rotate``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr


class DecryptionFailed(Exception):
    """A stored ciphertext does not open with any configured key."""


class SecretBox:
    def __init__(self, keys: SecretStr) -> None:
        raw = [k.strip() for k in keys.get_secret_value().split(",") if k.strip()]
        if not raw:
            raise ValueError("at least one encryption key is required")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in raw])
        self._hash_keys = [
            hashlib.sha256(b"vipps-pos/lookup-hash/" + k.encode()).digest() for k in raw
        ]

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except InvalidToken as exc:
            raise DecryptionFailed("ciphertext does not open with any configured key") from exc

    def reencrypt(self, ciphertext: str) -> str:
        """The same plaintext encrypted under the first (current) key."""
        try:
            return self._fernet.rotate(ciphertext.encode("ascii")).decode("ascii")
        except InvalidToken as exc:
            raise DecryptionFailed("ciphertext does not open with any configured key") from exc

    def lookup_hash(self, value: str) -> str:
        """The hash ``value`` is stored under: the first (current) key's."""
        return self.lookup_hashes(value)[0]

    def lookup_hashes(self, value: str) -> list[str]:
        """``value``'s hash under every configured key, the current one first: what a lookup
        must try while rows hashed under a rotated-out key remain."""
        data = value.encode("utf-8")
        return [hmac.new(key, data, hashlib.sha256).hexdigest() for key in self._hash_keys]


TILL_KEY_PREFIX = "vpk"  # till API keys
ADMIN_KEY_PREFIX = "vpa"  # named admin keys


def new_api_key(prefix: str = TILL_KEY_PREFIX) -> tuple[str, str, str]:
    """A fresh API key ``<prefix>_<key id>_<secret>``: ``(key_id, full_key, stored_hash)``. The
    full key is shown once."""
    key_id = secrets.token_hex(8)
    full_key = f"{prefix}_{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, full_key, hash_api_key(full_key)


def hash_api_key(full_key: str) -> str:
    return hashlib.sha256(full_key.encode("utf-8")).hexdigest()


def api_key_id(full_key: str, prefix: str = TILL_KEY_PREFIX) -> str | None:
    """The public id in a key of the given kind, or ``None`` if it is not one."""
    parts = full_key.split("_", 2)
    if len(parts) != 3 or parts[0] != prefix or not 0 < len(parts[1]) <= 32:
        return None
    return parts[1]


def api_key_matches(full_key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(full_key), stored_hash)
