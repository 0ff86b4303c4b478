"""Keyed tokens for personal fields (pure).

Token contract (docs/reliability.md "Masking contract"): ``k<V>:<64 lowercase hex>`` where V is the masking key's
version and the hex is HMAC-SHA256(key, field || 0x1f || value). The same value in the same
field under the same key always gives the same token, so analysts find duplicates with
GROUP BY; without the key a token cannot be reversed or brute-forced (a plain SHA-256 of an IPv4
address can: 2^32 guesses). The field name is part of the MAC input, so an ip token can never be
matched against a device_id token.

IP addresses are canonicalised first (``ipaddress``): "2001:DB8::1" and "2001:db8:0::1" are the
same address and get the same token. Anything that is not an IP address is tokenised as sent.
"""

import ipaddress
import re

from etl.crypto.hmacs import Keyed
from etl.errors import ConfigError

MIN_KEY_LENGTH = 32


class Masker:
    """Turns raw personal values into tokens with one secret key."""

    __slots__ = ("_mac", "_prefix")

    def __init__(self, key: str, version: int = 1) -> None:
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"masking key must be at least {MIN_KEY_LENGTH} characters")
        if version < 1:
            raise ConfigError("masking key version must be a positive integer")
        self._mac = Keyed(key.encode("utf-8"))  # HMAC-SHA256 keyed once (etl.crypto.hmacs)
        self._prefix = f"k{version}:"

    def __repr__(self) -> str:
        return f"Masker(version={self._prefix[1:-1]})"

    def token(self, field: str, value: str) -> str:
        """The token of ``value`` in ``field``."""
        return self._prefix + self._mac.hexdigest(f"{field}\x1f{value}".encode())

    def mask_ip(self, ip: str) -> str:
        return self.token("ip", canonical_ip(ip))

    def mask_canonical_ip(self, canonical: str) -> str:
        """``mask_ip`` of an address already in its canonical form (``canonical_ip``'s result)."""
        return self.token("ip", canonical)

    def mask_device_id(self, device_id: str) -> str:
        return self.token("device_id", device_id)


# A dotted quad without leading zeros is already canonical (ipaddress refuses leading zeros in
# IPv4): returning it as is skips ipaddress's parse and str(), a third of a chunk's transform.
_CANONICAL_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)


def canonical_ip(ip: str) -> str:
    """The canonical text of an IP address, or the input unchanged if it is not one."""
    if _CANONICAL_IPV4.fullmatch(ip):
        return ip
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip
