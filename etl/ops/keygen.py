"""Fresh keys for a new deployment: the workers' env file, and the officers' private key apart.

``etl keygen --env-file .env`` (or ``etl keygen > .env``) must give a file workers can start
with as printed, so the private key (which a worker refuses to hold) never goes there: it is
written to a file of its own, readable by its owner only (mode 0600), which the officers' tooling
reads through ``ETL_VAULT_PRIVATE_KEY_FILE``. Neither file is ever overwritten: a second run of
the setup recipe must not replace the masking key (every token would change).
"""

import os
import secrets

from etl.crypto import vault
from etl.crypto.sealing import new_key
from etl.errors import ConfigError

DEFAULT_PRIVATE_KEY_FILE = "vault-private.key"


def workers_env(private_key_file: str) -> tuple[str, str]:
    """(the workers' env file text, the vault's private key) for fresh keys."""
    private, public = vault.new_keypair()
    text = "\n".join(
        (
            "# Workers' secrets from `etl keygen`: keep them out of version control and logs.",
            f"ETL_MASKING_KEY={secrets.token_urlsafe(48)}",
            f"ETL_PAYLOAD_KEY={new_key()}",
            "# Workers hold only the vault's public key: they seal entries, never open them.",
            f"ETL_VAULT_PUBLIC_KEY={public}",
            f"# The private key is in {private_key_file} (mode 0600), for the PII officers' tooling only:",
            f"# officers set ETL_VAULT_PRIVATE_KEY_FILE={private_key_file}; a worker refuses to start with it.",
            "",
        )
    )
    return text, private


def write_both(env_file: str, text: str, private_key_file: str, key: str) -> None:
    """The workers' env file and the private key, both new: where either exists, neither is
    left written (the private key made here is removed again if the env file cannot be made)."""
    write_private_key(private_key_file, key)
    try:
        write_new(env_file, text, "--env-file")
    except BaseException:
        os.unlink(private_key_file)  # ours, just made: no private key without its workers' env
        raise


def write_private_key(path: str, key: str) -> None:
    """Write ``key`` to a new file at ``path``, mode 0600; never overwrite (ConfigError if it exists)."""
    write_new(path, key + "\n", "--private-key-file")


def write_new(path: str, text: str, option: str) -> None:
    """Write ``text`` to a new file at ``path``, mode 0600 whatever the umask; never overwrite
    (ConfigError naming ``option``, the flag that picks another path, if it exists)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"{path} exists already: keygen never overwrites keys; keep it, or move it away or pass {option} NEW_PATH"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}; pass {option} PATH") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)
