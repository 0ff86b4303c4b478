"""Keyed tokens for personal fields (pure).

Token contract (README "Masking"): ``k<V>:<64 lowercase hex>`` where V is the masking key's
version and the hex is HMAC-SHA256(key, field || 0x1f || value). The same value in the same
field under the same key always gives the same token, so analysts find duplicates with
GROUP BY; without the key a token cannot be reversed or brute-forced (a plain SHA-256 of an IPv4
address can: 2^32 guesses). The field name is part of the MAC input, so an ip token can never be
matched against a device_id token.

IP addresses are canonicalised first (``ipaddress``): "2001:DB8::1" and "2001:db8:0::1" are the
same address and get the same token. Anything that is not an IP address is tokenised as sent.
"""

import hashlib
import hmac
import ipaddress

from etl.errors import ConfigError

MIN_KEY_LENGTH = 32


class Masker:
    """Turns raw personal values into tokens with one secret key."""

    __slots__ = ("_key", "_prefix")

    def __init__(self, key: str, version: int = 1) -> None:
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"masking key must be at least {MIN_KEY_LENGTH} characters")
        if version < 1:
            raise ConfigError("masking key version must be a positive integer")
        self._key = key.encode("utf-8")
        self._prefix = f"k{version}:"

    def __repr__(self) -> str:
        return f"Masker(version={self._prefix[1:-1]})"

    def token(self, field: str, value: str) -> str:
        """The token of ``value`` in ``field``."""
        mac = hmac.new(self._key, field.encode() + b"\x1f" + value.encode("utf-8"), hashlib.sha256)
        return self._prefix + mac.hexdigest()

    def mask_ip(self, ip: str) -> str:
        return self.token("ip", canonical_ip(ip))

    def mask_device_id(self, device_id: str) -> str:
        return self.token("device_id", device_id)


def canonical_ip(ip: str) -> str:
    """The canonical text of an IP address, or the input unchanged if it is not one."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip
