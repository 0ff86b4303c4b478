"""Authenticated encryption of raw message bodies outside SQS (pure, no I/O).

Raw bodies hold plaintext ip and device_id. Wherever they leave SQS - chunks on the Redis
broker, rejected bodies kept in Postgres for replay - they travel sealed with Fernet
(AES-128-CBC + HMAC-SHA256) under ETL_PAYLOAD_KEY. Several comma-separated keys may be given:
the first seals, all of them open, so keys can be rotated without losing queued work.
"""

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from etl.errors import ConfigError, TerminalError


class Sealer:
    """Seals and opens byte strings with one or more Fernet keys."""

    __slots__ = ("_fernet",)

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ConfigError("at least one payload key is required")
        try:
            self._fernet = MultiFernet([Fernet(k.encode("ascii")) for k in keys])
        except (ValueError, UnicodeEncodeError):
            raise ConfigError("a payload key is not a valid Fernet key (32 url-safe base64 bytes)") from None

    def __repr__(self) -> str:
        return "Sealer(<keys redacted>)"

    def seal(self, data: bytes) -> str:
        return self._fernet.encrypt(data).decode("ascii")

    def open(self, token: str) -> bytes:
        try:
            return self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            raise TerminalError("sealed payload cannot be opened with the configured payload keys") from None


def new_key() -> str:
    """A fresh random payload key."""
    return Fernet.generate_key().decode("ascii")
