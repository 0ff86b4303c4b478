"""The PII service: reveal, erase, both key rotations and the audit check.

The one place that opens the vault for reading, and the only caller of the store functions
that write audit rows. The CLI parses arguments and prints; workers only encrypt new entries
(``writer_vault``).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from etl import vault
from etl.errors import ConfigError, EtlError
from etl.masking import Masker
from etl.progress import Progress
from etl.settings import KEYGEN_HINT, Settings
from etl.store import Connection, query
from etl.store import pii as tables

OFFICER_ROLE = "pii_officer"
ROTATE_BATCH = 500  # vault entries per transaction in a rotation


class Refused(EtlError):
    """A PII operation the caller may not do; it is recorded in the audit log."""


def _master_key(config: Settings) -> bytes:
    if not config.vault_key:
        raise ConfigError(f"ETL_VAULT_KEY is not set: the vault cannot be opened; {KEYGEN_HINT}")
    return vault.parse_master_key(config.vault_key)


def writer_vault(config: Settings, conn: Connection) -> vault.Vault | None:
    """The active data key for encrypting new entries (None when the vault is off)."""
    if not config.vault_key:
        return None
    master = _master_key(config)
    version, wrapped = tables.active_data_key(conn, lambda: vault.wrap(master, vault.new_data_key()))
    return vault.Vault(version, vault.unwrap(master, wrapped))


def _reader_vaults(master: bytes, conn: Connection) -> dict[int, vault.Vault]:
    return {v: vault.Vault(v, vault.unwrap(master, w)) for v, w in tables.data_keys(conn).items()}


@dataclass(frozen=True)
class Revealed:
    token: str
    value: str | None  # None: erased, or never stored


def reveal(
    config: Settings, conn: Connection, field: str, reason: str, token: str | None = None, sql: str | None = None
) -> list[Revealed]:
    """Original values behind one token, or behind the tokens ``sql`` selects; every attempt audited.

    Raises Refused (after auditing the refusal) when the caller is not a pii_officer or holds
    no master key.
    """
    tokens = [token] if token else [str(r[0]) for r in query(conn, sql or "") if r[0]]
    refusal = None
    if not tables.is_member(conn, OFFICER_ROLE):
        refusal = f"refused: the database user is not a {OFFICER_ROLE}"
    elif not config.vault_key:
        refusal = "refused: ETL_VAULT_KEY is not set"
    if refusal:
        for t in tokens:
            tables.audit(conn, "reveal", field, t, None, reason, refusal)
        raise Refused(f"{refusal} (recorded in the audit log)")
    master = _master_key(config)
    found = tables.reveal_lookup(conn, field, tokens, reason)
    vaults = _reader_vaults(master, conn)
    return [Revealed(t, vault.decrypt(vaults, field, t, found[t]) if t in found else None) for t in tokens]


def erase(conn: Connection, user_id: str, reason: str) -> dict[str, int]:
    """Crypto-shred the vault entries only ``user_id`` has, in one transaction with its audit row."""
    return tables.erase_user(conn, user_id, reason)


def rotate_masking_key(config: Settings, conn: Connection, reason: str, progress: Progress) -> tuple[int, int]:
    """Re-tokenize every entry (and its rows) whose token predates the active masking key.

    Batches of ROTATE_BATCH, each one transaction: an interrupted run resumes where it stopped.
    Returns (tokens, rows) moved.
    """
    config.require_keys()
    masker = Masker(config.masking_key, config.masking_key_version)
    vaults = _reader_vaults(_master_key(config), conn)
    active = vaults[max(vaults)]
    version = config.masking_key_version
    left = tables.count_old_tokens(conn, version)
    progress.start(left, f"re-tokenizing to k{version}")
    rows = 0
    while batch := tables.old_tokens(conn, version, ROTATE_BATCH):
        changes = []
        for field, token, stored in batch:
            value = vault.decrypt(vaults, field, token, stored)
            new = masker.token(field, value)
            changes.append((field, token, new, active.encrypt(field, new, value)))
        rows += tables.retokenize(conn, changes)
        progress.advance(len(batch))
    tables.audit(conn, "rotate-masking-key", None, None, None, reason, f"{left} tokens, {rows} rows")
    return left, rows


def rotate_vault_key(
    config: Settings, conn: Connection, reason: str, resume: bool, progress: Progress
) -> tuple[int, int]:
    """Make a new data key active (unless ``resume``) and re-encrypt every entry with it.

    Returns (entries re-encrypted, the new data key version).
    """
    master = _master_key(config)
    if not resume:
        tables.add_data_key(conn, vault.wrap(master, vault.new_data_key()))
    vaults = _reader_vaults(master, conn)
    version = max(vaults)
    left = tables.count_old_ciphertexts(conn, version)
    progress.start(left, f"re-encrypting to data key v{version}")
    while batch := tables.old_ciphertexts(conn, version, ROTATE_BATCH):
        new = vaults[version]
        tables.reencrypt(conn, [(f, t, new.encrypt(f, t, vault.decrypt(vaults, f, t, c))) for f, t, c in batch])
        progress.advance(len(batch))
    tables.audit(conn, "rotate-vault-key", None, None, None, reason, f"{left} entries to v{version}")
    return left, version


@dataclass(frozen=True)
class ChainCheck:
    rows: int
    broken_at: int | None  # the first row that does not chain, or None when intact


def verify_audit(conn: Connection) -> ChainCheck:
    """Recompute the audit log's hash chain: an edited, inserted or removed row breaks it."""
    chain = tables.audit_chain(conn)
    return ChainCheck(len(chain), _first_break(chain))


def _first_break(chain: Sequence[tuple[object, ...]]) -> int | None:
    genesis = "0" * 64
    for row_id, prev_hash, stored, recomputed, previous in chain:
        if stored != recomputed or prev_hash != (previous or genesis):
            return int(str(row_id))
    return None
