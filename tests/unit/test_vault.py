"""The vault's cryptography (docs/pii.md), pure: no database, no environment."""

import base64

import pytest

from etl.crypto import vault
from etl.errors import ConfigError, TerminalError

TOKEN = "k1:" + "a" * 64
OTHER_TOKEN = "k1:" + "b" * 64


@pytest.fixture
def keypair() -> tuple[str, str]:
    return vault.new_keypair()


def writer(public_text: str) -> tuple[vault.Vault, bytes]:
    return vault.new_writer(vault.parse_public_key(public_text))


def test_round_trip_through_a_sealed_data_key(keypair: tuple[str, str]) -> None:
    private_text, public_text = keypair
    w, sealed = writer(public_text)
    stored = w.encrypt("ip", TOKEN, "2001:db8::1")
    assert "2001:db8::1" not in stored and stored.startswith(w.key_id + ":")
    private = vault.parse_private_keys(private_text)
    recipient = vault.fingerprint(vault.parse_public_key(public_text))
    opened = vault.open_sealed(private, w.key_id, sealed, recipient)
    assert vault.decrypt({w.key_id: opened}, "ip", TOKEN, stored) == "2001:db8::1"


def test_each_value_gets_a_fresh_nonce() -> None:
    v = vault.Vault("s0", vault.new_data_key())
    assert v.encrypt("ip", TOKEN, "x") != v.encrypt("ip", TOKEN, "x")


def test_a_chunks_values_each_get_their_own_nonce_and_open_in_their_own_place() -> None:
    v = vault.Vault("s1", vault.new_data_key())
    entries = [(("ip", f"{TOKEN}{i}"), f"198.51.100.{i % 7}") for i in range(500)]
    stored = v.encrypt_many(entries)
    assert [(f, t) for f, t, _ in stored] == [k for k, _ in entries]
    nonces = {base64.urlsafe_b64decode(c.split(":", 1)[1])[:12] for _, _, c in stored}
    assert len(nonces) == len(entries)
    assert [v.decrypt(f, t, c) for f, t, c in stored] == [value for _, value in entries]


@pytest.mark.parametrize(("field", "token"), [("ip", OTHER_TOKEN), ("device_id", TOKEN)])
def test_a_ciphertext_moved_to_another_token_or_field_fails(field: str, token: str) -> None:
    v = vault.Vault("s0", vault.new_data_key())
    stored = v.encrypt("ip", TOKEN, "198.51.100.7")
    assert v.decrypt("ip", TOKEN, stored) == "198.51.100.7"
    with pytest.raises(TerminalError):
        v.decrypt(field, token, stored)


def test_a_wrong_data_key_fails() -> None:
    stored = vault.Vault("s0", vault.new_data_key()).encrypt("ip", TOKEN, "198.51.100.7")
    with pytest.raises(TerminalError):
        vault.Vault("s0", vault.new_data_key()).decrypt("ip", TOKEN, stored)


def test_a_ciphertext_naming_an_unknown_data_key_fails() -> None:
    v = vault.Vault("s0", vault.new_data_key())
    with pytest.raises(TerminalError):
        vault.decrypt({"s1": v}, "ip", TOKEN, v.encrypt("ip", TOKEN, "x"))


def test_every_tampered_byte_fails() -> None:
    v = vault.Vault("s0", vault.new_data_key())
    stored = v.encrypt("ip", TOKEN, "198.51.100.7")
    raw = base64.urlsafe_b64decode(stored.split(":", 1)[1])
    for i in range(len(raw)):
        flipped = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
        with pytest.raises(TerminalError):
            v.decrypt("ip", TOKEN, "s0:" + base64.urlsafe_b64encode(flipped).decode())
    for junk in ("s0", "s0:", "s0:!!!", "s0:" + base64.urlsafe_b64encode(raw[:20]).decode()):
        with pytest.raises(TerminalError):
            v.decrypt("ip", TOKEN, junk)


def test_a_sealed_data_key_opens_only_with_its_private_key(keypair: tuple[str, str]) -> None:
    private_text, public_text = keypair
    other_private, _ = vault.new_keypair()
    data_key = vault.new_data_key()
    sealed = vault.seal_data_key(vault.parse_public_key(public_text), data_key, "s1")
    assert len(sealed) == vault.SEALED_LENGTH and data_key not in sealed
    assert vault.open_data_key(vault.parse_private_keys(private_text)[0], sealed, "s1") == data_key
    with pytest.raises(TerminalError):
        vault.open_data_key(vault.parse_private_keys(other_private)[0], sealed, "s1")


def test_open_sealed_refuses_without_the_recipients_private_key(keypair: tuple[str, str]) -> None:
    _, public_text = keypair
    other_private, _ = vault.new_keypair()
    w, sealed = writer(public_text)
    recipient = vault.fingerprint(vault.parse_public_key(public_text))
    with pytest.raises(TerminalError):
        vault.open_sealed(vault.parse_private_keys(other_private), w.key_id, sealed, recipient)


def test_a_sealed_key_moved_to_another_key_id_fails(keypair: tuple[str, str]) -> None:
    private_text, public_text = keypair
    sealed = vault.seal_data_key(vault.parse_public_key(public_text), vault.new_data_key(), "s1")
    with pytest.raises(TerminalError):
        vault.open_data_key(vault.parse_private_keys(private_text)[0], sealed, "s2")


def test_a_tampered_sealed_key_fails(keypair: tuple[str, str]) -> None:
    private_text, public_text = keypair
    private = vault.parse_private_keys(private_text)[0]
    sealed = vault.seal_data_key(vault.parse_public_key(public_text), vault.new_data_key(), "s1")
    for i in range(len(sealed)):
        flipped = sealed[:i] + bytes([sealed[i] ^ 0x01]) + sealed[i + 1 :]
        with pytest.raises(TerminalError):
            vault.open_data_key(private, flipped, "s1")
    with pytest.raises(TerminalError):  # a low-order point in place of the ephemeral key
        vault.open_data_key(private, bytes(32) + sealed[32:], "s1")


@pytest.mark.parametrize("length", [0, 32, vault.SEALED_LENGTH - 1, vault.SEALED_LENGTH + 1, 200])
def test_a_sealed_key_of_the_wrong_length_is_terminal(keypair: tuple[str, str], length: int) -> None:
    private = vault.parse_private_keys(keypair[0])[0]
    with pytest.raises(TerminalError, match="wrong length"):
        vault.open_data_key(private, bytes(length), "s1")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda k: k + "!",
        lambda k: '"' + k + '"',
        lambda k: k[:10] + "\n" + k[10:],
        lambda k: k[:10] + " " + k[10:],
        lambda k: k[:-2],  # too short
        lambda k: k + "AAAA",  # too long
        lambda k: "",
    ],
)
def test_key_parsing_is_strict(keypair: tuple[str, str], mangle) -> None:  # type: ignore[no-untyped-def]
    private_text, public_text = keypair
    with pytest.raises(ConfigError) as public_error:
        vault.parse_public_key(mangle(public_text))
    assert "ETL_VAULT_PUBLIC_KEY" in str(public_error.value) and public_text not in str(public_error.value)
    if mangle(private_text):  # an empty private-key list is just "no keys"
        with pytest.raises(ConfigError) as private_error:
            vault.parse_private_keys(mangle(private_text))
        assert "ETL_VAULT_PRIVATE_KEY" in str(private_error.value)
    with pytest.raises(ConfigError):
        vault.parse_master_key(mangle(vault.new_master_key()))


def test_well_formed_keys_parse_with_surrounding_whitespace(keypair: tuple[str, str]) -> None:
    private_text, public_text = keypair
    assert len(vault.parse_private_keys(f" {private_text} ,{vault.new_keypair()[0]}")) == 2
    vault.parse_public_key(f"  {public_text}\n")


def test_legacy_unwrap_with_the_wrong_master_key_is_a_config_error() -> None:
    data_key = vault.new_data_key()
    master = vault.parse_master_key(vault.new_master_key())
    assert vault.unwrap(master, vault.wrap(master, data_key)) == data_key
    with pytest.raises(ConfigError):
        vault.unwrap(vault.parse_master_key(vault.new_master_key()), vault.wrap(master, data_key))
