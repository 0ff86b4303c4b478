"""HMAC-SHA256 keyed once (RFC 2104), for keys used for many messages (pure).

``Keyed`` holds the two SHA-256 states that have absorbed the padded key XOR ipad / opad; each
``hexdigest`` copies them instead of re-deriving them (``hmac.new``) or copying a whole HMAC object
(hmac's ``copy()`` builds Python objects around them): about half the CPU of either. The digests
are ``hmac.new(key, msg, sha256)``'s, byte for byte (tests/unit/test_masking.py, every key length;
tests/unit/test_sigv4.py against botocore's signer).
"""

import hashlib

_BLOCK = 64  # SHA-256's block size in bytes
_IPAD = bytes(b ^ 0x36 for b in range(256))  # byte translations: the padded key XOR ipad / opad
_OPAD = bytes(b ^ 0x5C for b in range(256))


class Keyed:
    """HMAC-SHA256 under one key."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def __repr__(self) -> str:
        return "Keyed(...)"  # never the key

    def hexdigest(self, msg: bytes) -> str:
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()
