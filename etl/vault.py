"""The PII vault's cryptography (pure): envelope encryption of original ip/device_id values.

A random 256-bit *data key* encrypts values with AES-GCM (a fresh 96-bit nonce per value; the
field and token are authenticated as associated data, so a ciphertext cannot be moved to
another token). The data key is stored only *wrapped* (AES key wrap, RFC 3394) by the *master
key* (ETL_VAULT_KEY): in production the master key can live in a KMS that does the wrapping.

Stored form: ``v<data key version>:<urlsafe base64 of nonce || ciphertext || tag>``.
"""

import base64
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from etl.errors import ConfigError, TerminalError


def new_master_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def parse_master_key(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        key = b""
    if len(key) != 32:
        raise ConfigError("the vault master key must be 32 bytes, url-safe base64 (etl keygen makes one)")
    return key


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap(master: bytes, data_key: bytes) -> bytes:
    return aes_key_wrap(master, data_key)


def unwrap(master: bytes, wrapped: bytes) -> bytes:
    try:
        return aes_key_unwrap(master, wrapped)
    except InvalidUnwrap:
        raise ConfigError(
            "the vault data key cannot be unwrapped with this master key (wrong ETL_VAULT_KEY?)"
        ) from None


class Vault:
    """Encrypts and decrypts vault values with one data key version."""

    __slots__ = ("_aead", "version")

    def __init__(self, version: int, data_key: bytes) -> None:
        self.version = version
        self._aead = AESGCM(data_key)

    def __repr__(self) -> str:
        return f"Vault(version={self.version})"

    def encrypt(self, field: str, token: str, value: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, value.encode("utf-8"), f"{field}:{token}".encode())
        return f"v{self.version}:" + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, field: str, token: str, stored: str) -> str:
        raw = base64.urlsafe_b64decode(stored.split(":", 1)[1])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], f"{field}:{token}".encode()).decode("utf-8")
        except InvalidTag:
            raise TerminalError("vault entry does not authenticate (tampered, or another data key)") from None


def version_of(stored: str) -> int:
    return int(stored.split(":", 1)[0][1:])


def decrypt(vaults: Mapping[int, Vault], field: str, token: str, stored: str) -> str:
    """Decrypt a stored value with whichever data key version it names."""
    return vaults[version_of(stored)].decrypt(field, token, stored)
