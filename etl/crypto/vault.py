"""The PII vault's cryptography (pure): workers can seal original values, only officers can open them.

Values are encrypted with AES-256-GCM under a random *data key* (a fresh 96-bit nonce per value;
the field and token are authenticated as associated data, so a ciphertext cannot be moved to
another token). Each worker process makes its own data key and stores it only **sealed to the
vault's public key** (X25519 key agreement with an ephemeral key, HKDF-SHA256, AES-256-GCM: the
HPKE base-mode construction, built from `cryptography`, which the project already uses, rather
than adding libsodium). A worker therefore holds the public key and the masking key, never
anything that opens the vault; the private key lives with the PII officer's tooling (an
environment variable or a mounted file; a KMS can hold it and unseal data keys instead). One
key exchange per process, not per value: sealing each value would cost more than the rest of
the pipeline.

Stored forms:
* ``s<16 hex key id>:<urlsafe base64 of nonce || ciphertext || tag>`` (sealed data keys);
* ``v<version>:...`` (legacy, before sealing: data keys wrapped by the symmetric ETL_VAULT_KEY;
  read only, to re-seal them with ``etl rotate-vault-key``).
"""

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Collection, Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from etl.crypto import keys
from etl.errors import ConfigError, TerminalError

_RAW = serialization.Encoding.Raw
_SEAL_INFO = b"etl vault data key v1"


_URLSAFE = bytes.maketrans(b"+/", b"-_")  # standard base64 to url-safe, as urlsafe_b64encode does


def _b64(data: bytes) -> str:
    """``base64.urlsafe_b64encode(data)`` as text, without its Python wrappers (per vault entry)."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).decode("ascii")


def new_keypair() -> tuple[str, str]:
    """A fresh (private, public) vault key pair, url-safe base64 (``etl keygen`` prints them)."""
    private = X25519PrivateKey.generate()
    return (
        _b64(private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())),
        _b64(private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)),
    )


def parse_public_key(text: str) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(keys.decode(text, "ETL_VAULT_PUBLIC_KEY", length=32))


def parse_private_keys(text: str) -> list[X25519PrivateKey]:
    """Comma-separated private keys: the current one first, older ones after (to re-seal)."""
    return [
        X25519PrivateKey.from_private_bytes(keys.decode(k, "ETL_VAULT_PRIVATE_KEY", length=32))
        for k in text.split(",")
        if k.strip()
    ]


def fingerprint(public: X25519PublicKey) -> str:
    """A short public name for a public key (stored beside each sealed data key)."""
    return hashlib.sha256(public.public_bytes(_RAW, serialization.PublicFormat.Raw)).hexdigest()[:16]


def _kek(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_SEAL_INFO).derive(shared)


SEALED_LENGTH = 92  # ephemeral public key (32) || nonce (12) || data key (32) || tag (16)


def seal_data_key(public: X25519PublicKey, data_key: bytes, key_id: str) -> bytes:
    """``data_key`` sealed to ``public``: ephemeral public key || nonce || AES-GCM(KEK, data key).

    The key id and the recipient are authenticated: a sealed key cannot be moved to another id.
    """
    ephemeral = X25519PrivateKey.generate()
    eph = ephemeral.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    recipient = public.public_bytes(_RAW, serialization.PublicFormat.Raw)
    nonce = os.urandom(12)
    aead = AESGCM(_kek(ephemeral.exchange(public), eph, recipient))
    return eph + nonce + aead.encrypt(nonce, data_key, key_id.encode() + recipient)


def open_data_key(private: X25519PrivateKey, sealed: bytes, key_id: str) -> bytes:
    """The data key inside ``sealed``; TerminalError for anything that is not one sealed to us."""
    if len(sealed) != SEALED_LENGTH:
        raise TerminalError(f"data key {key_id} is not a sealed key (wrong length)")
    eph, nonce, body = sealed[:32], sealed[32:44], sealed[44:]
    recipient = private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(eph))
        return AESGCM(_kek(shared, eph, recipient)).decrypt(nonce, body, key_id.encode() + recipient)
    except (InvalidTag, ValueError):  # ValueError: a low-order point instead of an ephemeral key
        raise TerminalError(f"data key {key_id} does not open with this private key") from None


# ---- legacy: data keys wrapped by a symmetric master key (read only, for migration) --------------


def parse_master_key(text: str) -> bytes:
    return keys.decode(text, "ETL_VAULT_KEY", length=32)


def new_master_key() -> str:
    return _b64(os.urandom(32))


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap(master: bytes, data_key: bytes) -> bytes:
    return aes_key_wrap(master, data_key)


def unwrap(master: bytes, wrapped: bytes) -> bytes:
    try:
        data_key: bytes = aes_key_unwrap(master, wrapped)
    except InvalidUnwrap:
        raise ConfigError(
            "the vault data key cannot be unwrapped with this master key (wrong ETL_VAULT_KEY?)"
        ) from None
    return data_key


# ---- values ---------------------------------------------------------------------------------------


class Vault:
    """Encrypts and decrypts vault values with one data key, named ``key_id`` (e.g. ``s1f..`` or ``v1``)."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, key_id: str, data_key: bytes) -> None:
        self.key_id = key_id
        self._aead = AESGCM(data_key)

    def __repr__(self) -> str:
        return f"Vault(key_id={self.key_id})"

    def encrypt(self, field: str, token: str, value: str) -> str:
        return self.encrypt_many([((field, token), value)])[0][2]

    def encrypt_many(self, secrets: Collection[tuple[tuple[str, str], str]]) -> list[tuple[str, str, str]]:
        """(field, token, ciphertext) for each ((field, token), value), in order (a chunk's
        ``dict.items()``): ``encrypt`` for each, the random 96-bit nonces drawn in one call
        (os.urandom per value was a third of the vault's CPU)."""
        nonces = os.urandom(12 * len(secrets))
        prefix, seal = f"{self.key_id}:", self._aead.encrypt
        out = []
        for i, ((field, token), value) in enumerate(secrets):
            nonce = nonces[12 * i : 12 * i + 12]
            sealed = nonce + seal(nonce, value.encode("utf-8"), f"{field}:{token}".encode())
            out.append((field, token, prefix + _b64(sealed)))
        return out

    def decrypt(self, field: str, token: str, stored: str) -> str:
        try:
            raw = base64.urlsafe_b64decode(stored.split(":", 1)[1])
            return self._aead.decrypt(raw[:12], raw[12:], f"{field}:{token}".encode()).decode("utf-8")
        except (InvalidTag, IndexError, ValueError):
            raise TerminalError("vault entry does not authenticate (tampered, moved, or another data key)") from None


def new_writer(public: X25519PublicKey) -> tuple[Vault, bytes]:
    """A fresh data key for one process: (its Vault, the key sealed to ``public``)."""
    data_key, key_id = new_data_key(), "s" + secrets.token_hex(8)
    return Vault(key_id, data_key), seal_data_key(public, data_key, key_id)


def key_id_of(stored: str) -> str:
    return stored.split(":", 1)[0]


def decrypt(vaults: Mapping[str, Vault], field: str, token: str, stored: str) -> str:
    """Decrypt a stored value with whichever data key it names."""
    found = vaults.get(key_id_of(stored))
    if found is None:
        raise TerminalError("vault entry names a data key that cannot be opened with the keys given")
    return found.decrypt(field, token, stored)


def open_sealed(privates: Sequence[X25519PrivateKey], key_id: str, sealed: bytes, recipient: str) -> Vault:
    """The Vault of a sealed data key, opened with whichever private key it was sealed to."""
    for private in privates:
        if fingerprint(private.public_key()) == recipient:
            return Vault(key_id, open_data_key(private, sealed, key_id))
    raise TerminalError(f"data key {key_id} was sealed to public key {recipient}, whose private key is not given")
