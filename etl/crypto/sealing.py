"""Authenticated encryption of raw message bodies outside SQS (pure, no I/O).

Raw bodies hold plaintext ip and device_id. Wherever they leave SQS - chunks on the Redis
broker, rejected bodies kept in Postgres for replay - they travel sealed with Fernet
(AES-128-CBC + HMAC-SHA256) under ETL_PAYLOAD_KEY. Several comma-separated keys may be given:
the first seals, all of them open, so keys can be rotated without losing queued work.

Chunks on their way through Redis are sealed with ``seal_bytes`` instead: AES-256-GCM on the raw
bytes, stored as bytes (no base64 either way: Fernet's encoding and HMAC cost ~13 ms a megabyte,
GCM ~0.2 ms), under a key derived from the same payload key (HKDF-SHA256, one key per purpose).
A token is ``0x81 | seal time (8 bytes) | key id (8) | nonce (12) | ciphertext | tag (16)``; the
first 17 bytes are authenticated with it, so its age can be trusted once it opens. The key id
(also derived by HKDF) says which key opens it without revealing anything of the key.

Each key is checked strictly (etl.crypto.keys.decode) before Fernet sees it: Fernet's own decoding
skips characters outside the base64 alphabet, so a key with junk in it would silently be a
different key from the one written down.
"""

import base64
import hmac
import os
import time

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from etl.crypto import keys as keycheck
from etl.errors import ConfigError, Expired, TerminalError

MAX_CLOCK_SKEW = 60  # seconds a sealing host's clock may run ahead (Fernet's own allowance)
KEY_BYTES = 32  # a Fernet key: 16 bytes of HMAC-SHA256 key, 16 of AES-128 key
BINARY = b"\x81"  # first byte of a ``seal_bytes`` token (a Fernet token is ASCII text)
_GCM_INFO = b"etl: chunks in the broker, AES-256-GCM key, v1"
_ID_INFO = b"etl: chunks in the broker, key id, v1"
_HEAD = 17  # version, seal time, key id: authenticated, not encrypted
_NONCE = 12
_TAG = 16
UNOPENABLE = "sealed payload cannot be opened with the configured payload keys"


class Sealer:
    """Seals and opens byte strings with one or more payload keys: as Fernet text (``seal``) or as
    AES-GCM bytes (``seal_bytes``)."""

    __slots__ = ("_fernet", "_gcm")

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ConfigError("at least one payload key is required")
        raw = [keycheck.decode(k, _name(i, len(keys)), length=KEY_BYTES) for i, k in enumerate(keys, 1)]
        # Fernet gets the canonical encoding of exactly the bytes that were checked.
        self._fernet = MultiFernet([Fernet(base64.urlsafe_b64encode(k)) for k in raw])
        self._gcm = [(_derive(k, _ID_INFO, 8), AESGCM(_derive(k, _GCM_INFO, 32))) for k in raw]

    def __repr__(self) -> str:
        return "Sealer(<keys redacted>)"

    def seal(self, data: bytes) -> str:
        return self._fernet.encrypt(data).decode("ascii")

    def open(self, token: str, max_age: float | None = None) -> bytes:
        """The sealed bytes; with ``max_age``, Expired for a token sealed longer ago than that."""
        try:
            data = self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            raise TerminalError(UNOPENABLE) from None
        if max_age is not None:
            # Authentic now (decrypt checked the HMAC): bytes 1-8 are the big-endian seal time.
            _check_age(int.from_bytes(base64.urlsafe_b64decode(token[:12])[1:9], "big"), max_age)
        return data

    def seal_bytes(self, data: bytes) -> bytes:
        """``data`` sealed as bytes (AES-256-GCM under the first key), for a store that keeps bytes."""
        key_id, aead = self._gcm[0]
        head = BINARY + int(time.time()).to_bytes(8, "big") + key_id
        nonce = os.urandom(_NONCE)
        return head + nonce + aead.encrypt(nonce, data, head)

    def open_bytes(self, token: bytes, max_age: float | None = None) -> bytes:
        """The bytes ``seal_bytes`` sealed; with ``max_age``, Expired for a token sealed longer ago."""
        if len(token) < _HEAD + _NONCE + _TAG or token[:1] != BINARY:
            raise TerminalError(UNOPENABLE)
        head = token[:_HEAD]
        aead = next((a for key_id, a in self._gcm if hmac.compare_digest(key_id, head[9:])), None)
        if aead is None:
            raise TerminalError(UNOPENABLE)
        try:
            data = aead.decrypt(token[_HEAD : _HEAD + _NONCE], token[_HEAD + _NONCE :], head)
        except InvalidTag:
            raise TerminalError(UNOPENABLE) from None
        if max_age is not None:
            _check_age(int.from_bytes(head[1:9], "big"), max_age)
        return data


def _check_age(sealed_at: int, max_age: float) -> None:
    age = time.time() - sealed_at
    if age > max_age:
        raise Expired(f"sealed {age:.0f}s ago, over the {max_age:.0f}s allowed")
    if age < -MAX_CLOCK_SKEW:  # stamped in the future: it would never expire
        raise Expired(f"sealed {-age:.0f}s in the future, over the {MAX_CLOCK_SKEW}s of clock skew allowed")


def _derive(key: bytes, info: bytes, length: int) -> bytes:
    """A key of its own for one purpose, from a payload key (HKDF-SHA256)."""
    return HKDF(algorithm=SHA256(), length=length, salt=None, info=info).derive(key)


def _name(index: int, count: int) -> str:
    return "ETL_PAYLOAD_KEY" if count == 1 else f"ETL_PAYLOAD_KEY (key {index} of {count})"


def new_key() -> str:
    """A fresh random payload key."""
    return Fernet.generate_key().decode("ascii")
