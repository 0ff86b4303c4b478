"""`etl keygen`: its stdout is a workers' env file; the private key goes to a 0600 file, never stdout."""

import re
import stat
from pathlib import Path

import pytest

from etl import settings
from etl.ops import cli


def test_keygen_prints_a_workers_env_and_writes_the_private_key_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["keygen"]) == 0
    out = capsys.readouterr().out
    key = (tmp_path / "vault-private.key").read_text().strip()
    assert stat.S_IMODE((tmp_path / "vault-private.key").stat().st_mode) == 0o600
    assert key not in out and not re.search("^ETL_VAULT_PRIVATE_KEY", out, re.M)
    loaded = settings.load(dict(re.findall(r"^([A-Z_0-9]+)=(.*)$", out, re.M)))
    loaded.require_keys()  # what a worker checks at start
    assert loaded.vault_public_key and not loaded.vault_private_key
    officer = settings.load(
        {
            **dict(re.findall(r"^([A-Z_0-9]+)=(.*)$", out, re.M)),
            "ETL_VAULT_PRIVATE_KEY_FILE": "vault-private.key",
        }
    )
    assert officer.vault_private_keys == (key,)


def test_keygen_never_overwrites_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "officers.key"
    target.write_text("old key\n")
    assert cli.main(["keygen", "--private-key-file", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "exists already" in captured.err and "--private-key-file" in captured.err
    assert target.read_text() == "old key\n"


def test_env_example_never_overrides_keygens_keys() -> None:
    example = (Path(__file__).parents[2] / ".env.example").read_text()
    assert not re.search(r"^(ETL_MASKING_KEY|ETL_PAYLOAD_KEY|ETL_VAULT_\w+)=", example, re.M)


def test_keygen_env_file_is_new_private_and_never_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's recipe run twice: the second keygen refuses (exit 2) and the first .env stays whole."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["keygen", "--env-file", ".env"]) == 0
    env = tmp_path / ".env"
    first = env.read_text()
    assert stat.S_IMODE(env.stat().st_mode) == 0o600 and "ETL_MASKING_KEY=" in first
    assert capsys.readouterr().out == ""
    (tmp_path / "vault-private.key").unlink()  # only .env in the way now
    assert cli.main(["keygen", "--env-file", ".env"]) == 2
    assert "exists already" in capsys.readouterr().err and env.read_text() == first
    assert not (tmp_path / "vault-private.key").exists()


def test_keygen_env_file_is_not_made_when_the_private_key_is_in_the_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vault-private.key").write_text("old key\n")
    assert cli.main(["keygen", "--env-file", ".env"]) == 2
    assert "--private-key-file" in capsys.readouterr().err
    assert not (tmp_path / ".env").exists() and (tmp_path / "vault-private.key").read_text() == "old key\n"
