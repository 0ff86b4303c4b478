"""Authenticated encryption of raw message bodies outside SQS (pure, no I/O).

Raw bodies hold plaintext ip and device_id. Wherever they leave SQS - chunks on the Redis
broker, rejected bodies kept in Postgres for replay - they travel sealed with Fernet
(AES-128-CBC + HMAC-SHA256) under ETL_PAYLOAD_KEY. Several comma-separated keys may be given:
the first seals, all of them open, so keys can be rotated without losing queued work.

Each key is checked strictly (etl.crypto.keys.decode) before Fernet sees it: Fernet's own decoding
skips characters outside the base64 alphabet, so a key with junk in it would silently be a
different key from the one written down.
"""

import base64
import time

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from etl.crypto import keys as keycheck
from etl.errors import ConfigError, Expired, TerminalError

MAX_CLOCK_SKEW = 60  # seconds a sealing host's clock may run ahead (Fernet's own allowance)
KEY_BYTES = 32  # a Fernet key: 16 bytes of HMAC-SHA256 key, 16 of AES-128 key


class Sealer:
    """Seals and opens byte strings with one or more Fernet keys."""

    __slots__ = ("_fernet",)

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ConfigError("at least one payload key is required")
        raw = [keycheck.decode(k, _name(i, len(keys)), length=KEY_BYTES) for i, k in enumerate(keys, 1)]
        # Fernet gets the canonical encoding of exactly the bytes that were checked.
        self._fernet = MultiFernet([Fernet(base64.urlsafe_b64encode(k)) for k in raw])

    def __repr__(self) -> str:
        return "Sealer(<keys redacted>)"

    def seal(self, data: bytes) -> str:
        return self._fernet.encrypt(data).decode("ascii")

    def open(self, token: str, max_age: float | None = None) -> bytes:
        """The sealed bytes; with ``max_age``, Expired for a token sealed longer ago than that."""
        try:
            data = self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            raise TerminalError("sealed payload cannot be opened with the configured payload keys") from None
        if max_age is not None:
            # Authentic now (decrypt checked the HMAC): bytes 1-8 are the big-endian seal time.
            sealed_at = int.from_bytes(base64.urlsafe_b64decode(token[:12])[1:9], "big")
            age = time.time() - sealed_at
            if age > max_age:
                raise Expired(f"sealed {age:.0f}s ago, over the {max_age:.0f}s allowed")
            if age < -MAX_CLOCK_SKEW:  # stamped in the future: it would never expire
                raise Expired(f"sealed {-age:.0f}s in the future, over the {MAX_CLOCK_SKEW}s of clock skew allowed")
        return data


def _name(index: int, count: int) -> str:
    return "ETL_PAYLOAD_KEY" if count == 1 else f"ETL_PAYLOAD_KEY (key {index} of {count})"


def new_key() -> str:
    """A fresh random payload key."""
    return Fernet.generate_key().decode("ascii")
