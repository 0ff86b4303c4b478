"""Sealing chunks as bytes (AES-256-GCM under a key derived from the payload key)."""

import base64

import pytest

from etl.crypto.sealing import BINARY, Sealer, new_key
from etl.errors import TerminalError


def test_bytes_round_trip_and_rotate_keys() -> None:
    old, new = new_key(), new_key()
    token = Sealer([old]).seal_bytes(b"secret 192.0.2.1")
    assert token[:1] == BINARY and b"192.0.2.1" not in token
    assert Sealer([new, old]).open_bytes(token) == b"secret 192.0.2.1"  # the old key still opens
    assert Sealer([new, old]).seal_bytes(b"x")[9:17] != token[9:17]  # the first key seals
    with pytest.raises(TerminalError, match="cannot be opened"):
        Sealer([new]).open_bytes(token)


def test_the_bytes_key_is_not_the_payload_key_and_the_key_id_reveals_neither() -> None:
    key = new_key()
    token = Sealer([key]).seal_bytes(b"")
    raw = base64.urlsafe_b64decode(key)
    assert token[9:17] not in raw and raw[:8] != token[9:17]
    # two tokens of one key: one id, fresh nonces
    again = Sealer([key]).seal_bytes(b"")
    assert again[9:17] == token[9:17] and again[17:29] != token[17:29]


@pytest.mark.parametrize("where", [0, 1, 9, 17, 29, -1])
def test_any_changed_byte_is_refused(where: int) -> None:
    sealer = Sealer([new_key()])
    token = bytearray(sealer.seal_bytes(b"some chunk"))
    token[where] ^= 0x01
    with pytest.raises(TerminalError):
        sealer.open_bytes(bytes(token))


def test_short_or_text_tokens_are_refused() -> None:
    sealer = Sealer([new_key()])
    for token in (b"", BINARY, sealer.seal_bytes(b"x")[:40], sealer.seal(b"x").encode()):
        with pytest.raises(TerminalError):
            sealer.open_bytes(token)
