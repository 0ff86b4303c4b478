"""The PII service: reveal, erase, both key rotations and the audit checks.

The one place that opens the vault for reading (with the officer's private key) and the only
caller of the store functions that write audit rows. Workers only seal new entries
(``writer_vault``: the public key, never the private one). The CLI parses and prints.
"""

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from etl.crypto import auditchain, vault
from etl.crypto.masking import Masker
from etl.errors import ConfigError, EtlError, Forbidden, TerminalError
from etl.model import events
from etl.pii import anchor
from etl.progress import Progress
from etl.settings import Settings
from etl.store import Connection
from etl.store import pii as tables
from etl.store.migrations.finality import REASON_MAX

ROTATE_BATCH = 500  # vault entries per transaction in a rotation
FIELDS = ("ip", "device_id")
MAX_TOKENS = 10_000  # per reveal (etl_reveal_request refuses more)
TOKEN = re.compile(r"k[0-9]+:[0-9a-f]{64}")  # crypto.masking's tokens: k<key version>:<hex HMAC>
# Controls, format characters (bidi overrides, zero-width), line/paragraph separators, surrogates
# (bytes the terminal could not decode): nothing a reader of the audit log should have to guess at.
_HIDDEN = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))


def _unprintable(text: str) -> bool:
    return any(unicodedata.category(c) in _HIDDEN for c in text)


class Refused(EtlError):
    """A PII operation the caller may not do; the refusal is recorded in the audit log."""


def writer_vault(config: Settings, conn: Connection) -> vault.Vault | None:
    """A fresh data key for this process, its sealed copy stored (None when the vault is off)."""
    if not config.vault_public_key:
        return None
    public = vault.parse_public_key(config.vault_public_key)
    writer, sealed = vault.new_writer(public)
    tables.add_sealed_key(conn, writer.key_id, sealed, vault.fingerprint(public))
    return writer


def _privates(config: Settings) -> list[X25519PrivateKey]:
    if not config.vault_private_key:
        raise ConfigError("ETL_VAULT_PRIVATE_KEY is not set: the vault cannot be opened (officers' tooling only)")
    return vault.parse_private_keys(config.vault_private_key)


def _public_key_opens(config: Settings) -> None:
    """Before a rotation writes anything: the public key it seals to must belong to one of the
    private keys at hand, or the re-sealed vault could never be opened again."""
    if not config.vault_public_key:
        raise ConfigError("ETL_VAULT_PUBLIC_KEY is not set: nothing to seal to")
    public = vault.fingerprint(vault.parse_public_key(config.vault_public_key))
    if public not in {vault.fingerprint(p.public_key()) for p in _privates(config)}:
        raise ConfigError(
            f"ETL_VAULT_PUBLIC_KEY ({public}) belongs to none of the keys in ETL_VAULT_PRIVATE_KEY: re-sealing to"
            " it could lock the vault for good; nothing was changed. Put the new key pair's private key first"
            " in ETL_VAULT_PRIVATE_KEY, the old ones after it"
        )


def _open(config: Settings, key_id: str, material: bytes, recipient: str | None) -> vault.Vault:
    if recipient is not None:
        return vault.open_sealed(_privates(config), key_id, material, recipient)
    if not config.vault_key:  # a legacy entry: its data key is wrapped by the old master key
        raise TerminalError(f"data key {key_id} is a legacy key: set ETL_VAULT_KEY to open it")
    return vault.Vault(key_id, vault.unwrap(vault.parse_master_key(config.vault_key), material))


@dataclass(frozen=True)
class Revealed:
    token: str
    value: str | None
    outcome: str  # revealed | not found | failed

    def json(self) -> str:
        """One JSON line: control characters in a value come out escaped, never raw."""
        return json.dumps({"token": self.token, "value": self.value, "outcome": self.outcome})


def check_request(field: str, tokens: Sequence[str], reason: str) -> None:
    """Refuse a malformed reveal before any SQL: PostgreSQL logs a failing statement with its
    values, so a raw value typed where a token belongs must never reach it. Names no value."""
    if field not in FIELDS:
        raise ConfigError(f"field must be one of {', '.join(FIELDS)}")
    bad = sum(not TOKEN.fullmatch(t) for t in tokens)
    if bad:
        raise ConfigError(
            f"{bad} of {len(tokens)} tokens are not tokens (k<version>:<64 hex>, as `etl report` and the rows"
            " show them); nothing was sent to the database"
        )
    if len(tokens) > MAX_TOKENS:
        raise ConfigError(f"at most {MAX_TOKENS} tokens per reveal ({len(tokens)} given); split the list")
    check_reason(reason)


def check_reason(reason: str) -> None:
    """A reason goes into the append-only audit log for good: 1 to REASON_MAX printable characters."""
    if not reason.strip():
        raise ConfigError("a reason is required: it is recorded in the audit log")
    if len(reason) > REASON_MAX or _unprintable(reason):
        raise ConfigError(
            f"a reason is at most {REASON_MAX} characters on one line, without control or invisible characters"
            f" ({len(reason)} given); it is kept for good in the audit log, so name a ticket, not data"
        )


def check_user_id(user_id: str) -> None:
    """A user id as ingest accepts it (etl.model.events: 1 to 128 characters, not blank, no NUL,
    valid Unicode), checked before any SQL: every user whose rows the table holds can be named
    here, format and control characters included (output shows them escaped: report.printable)."""
    if events.check_user_id(user_id) is not None:
        raise ConfigError("a user id is 1 to 128 characters, not blank, without NUL, as the table holds them")


def select_tokens(
    conn: Connection, field: str, token: str | None, tokens: Sequence[str], user_id: str | None
) -> list[str]:
    """The tokens a reveal names: one, a list, or every token of one user (never free SQL)."""
    if field not in FIELDS:
        raise ConfigError(f"field must be one of {', '.join(FIELDS)}")
    if user_id is not None:
        check_user_id(user_id)
        try:
            return tables.user_tokens(conn, field, user_id)
        except Forbidden:  # not even the rows: ask anyway, so the refusal is audited
            return []
    return list(dict.fromkeys([*([token] if token else []), *tokens]))


def reveal(config: Settings, conn: Connection, field: str, tokens: Sequence[str], reason: str) -> list[Revealed]:
    """Original values behind ``tokens``. Every attempt is audited, with its outcome.

    1. the request commits, with one audit row per token that the database decides: ``released``
       (it has a vault entry: count it as revealed) or ``not found`` (refused ones too: then
       Refused is raised);
    2. the database releases the ciphertexts of the released tokens of that request, to its
       requester only and only once step 1 has committed;
    3. each is decrypted here with the private key, and ``revealed`` or ``failed`` audited beside it.
    Nothing is sent to the database for a malformed request or without the private key.
    """
    check_request(field, tokens, reason)
    _privates(config)  # no private key: nothing to ask for
    request = tables.reveal_request(conn, field, tokens, reason)
    if request is None:
        raise Refused("refused: the database user is not a pii_officer (recorded in the audit log)")
    released = {t: (c, k, m, r) for t, c, k, m, r in tables.reveal_release(conn, request)}
    vaults: dict[str, vault.Vault] = {}
    results = []
    for t in tokens:
        if t not in released:
            results.append(Revealed(t, None, "not found"))  # the database audited it so at step 1
            continue
        stored, key_id, material, recipient = released[t]
        try:
            if key_id not in vaults:
                vaults[key_id] = _open(config, key_id, material, recipient)
            results.append(Revealed(t, vault.decrypt(vaults, field, t, stored), "revealed"))
        except (TerminalError, ConfigError):
            results.append(Revealed(t, None, "failed"))
        tables.reveal_outcome(conn, request, t, results[-1].outcome)
    return results


@dataclass(frozen=True)
class Erased:
    tokens: int
    kept_shared: int
    erased: int
    rejected: int
    rows: int
    erased_before: datetime | None  # an earlier erasure of the same user (None: never)

    @property
    def found_nothing(self) -> bool:
        return not (self.tokens or self.rows or self.rejected)


def erase(conn: Connection, user_id: str, reason: str) -> Erased:
    """Erase a user: unshared vault entries, tokens and rejected bodies, with the audit, in one
    transaction, and a tombstone so that none of it comes back with a late delivery of a message
    sent before now."""
    check_reason(reason)
    check_user_id(user_id)
    result = tables.erase(conn, user_id, reason)
    if result is None:
        raise Refused("refused: the database user is not a pii_officer (recorded in the audit log)")
    return Erased(**result)


class _Vaults(dict[str, vault.Vault]):
    """Data keys opened on first use (rotations: the admin login, with the private key(s)).

    Lazy, so one unusable key (a junk row a writer inserted, a key sealed to a retired key pair)
    fails only the entries that name it, never the whole job.
    """

    def __init__(self, config: Settings, conn: Connection) -> None:
        super().__init__()
        self._config = config
        self._sealed, self._legacy = tables.data_keys(conn)

    def __missing__(self, key_id: str) -> vault.Vault:
        if key_id in self._sealed:
            material, recipient = self._sealed[key_id]
            opened = _open(self._config, key_id, material, recipient)
        elif key_id in self._legacy:
            opened = _open(self._config, key_id, self._legacy[key_id], None)
        else:
            raise TerminalError(f"no data key {key_id}")
        self[key_id] = opened
        return opened

    def get(self, key_id: str, default: object = None) -> vault.Vault | None:  # type: ignore[override]
        try:
            return self[key_id]
        except (TerminalError, ConfigError):
            return None


def rotate_masking_key(config: Settings, conn: Connection, reason: str, progress: Progress) -> tuple[int, int]:
    """Re-tokenize every entry (and its rows) whose token predates the active masking key.

    Batches of ROTATE_BATCH, each one transaction: an interrupted run resumes where it stopped.
    Returns (tokens, rows) moved.
    """
    check_reason(reason)
    config.require_keys()
    _public_key_opens(config)
    masker = Masker(config.masking_key, config.masking_key_version)
    vaults = _Vaults(config, conn)
    writer = writer_vault(config, conn)
    if writer is None:
        raise ConfigError("ETL_VAULT_PUBLIC_KEY is not set: re-tokenized entries could not be sealed")
    version = config.masking_key_version
    left = tables.count_old_tokens(conn, version)
    progress.start(left, f"re-tokenizing to k{version}")
    rows = failed = 0
    after = ("", "")
    while batch := tables.old_tokens(conn, version, ROTATE_BATCH, after):
        changes = []
        for field, token, stored in batch:
            try:
                value = vault.decrypt(vaults, field, token, stored)
            except TerminalError:
                failed += 1  # left as it is, and said below
                continue
            new = masker.token(field, value)
            changes.append((field, token, new, writer.encrypt(field, new, value)))
        if changes:
            rows += tables.retokenize(conn, changes)
        after = batch[-1][:2]
        progress.advance(len(batch))
    outcome = f"{left - failed} tokens, {rows} rows" + (f", {failed} entries could not be opened" if failed else "")
    tables.audit(conn, "rotate-masking-key", None, None, None, reason, outcome)
    if failed:
        raise TerminalError(f"{failed} vault entries could not be opened and keep their old tokens (see the audit log)")
    return left, rows


def rotate_vault_key(config: Settings, conn: Connection, reason: str, progress: Progress) -> tuple[int, str]:
    """Re-seal every entry not yet under a data key sealed to the current public key.

    Covers a new key pair (old private keys listed after the new one in ETL_VAULT_PRIVATE_KEY)
    and the migration of legacy entries (ETL_VAULT_KEY set). Resumable: sealed entries are skipped.
    Returns (entries re-sealed, the public key's fingerprint).
    """
    check_reason(reason)
    _public_key_opens(config)
    vaults = _Vaults(config, conn)
    writer = writer_vault(config, conn)
    if writer is None:
        raise ConfigError("ETL_VAULT_PUBLIC_KEY is not set: nothing to re-seal to")
    recipient = vault.fingerprint(vault.parse_public_key(config.vault_public_key))
    left = tables.count_not_sealed_to(conn, recipient)
    progress.start(left, f"re-sealing to public key {recipient}")
    failed = 0
    after = ("", "")
    while batch := tables.not_sealed_to(conn, recipient, ROTATE_BATCH, after):
        changes = []
        for f, t, c in batch:
            try:
                changes.append((f, t, writer.encrypt(f, t, vault.decrypt(vaults, f, t, c))))
            except TerminalError:
                failed += 1
        if changes:
            tables.reencrypt(conn, changes)
        after = batch[-1][:2]
        progress.advance(len(batch))
    outcome = f"{left - failed} entries re-sealed to {recipient}" + (
        f", {failed} could not be opened" if failed else ""
    )
    tables.audit(conn, "rotate-vault-key", None, None, None, reason, outcome)
    if failed:
        raise TerminalError(f"{failed} vault entries could not be opened and were left as they are (see the audit log)")
    return left - failed, recipient


@dataclass(frozen=True)
class ChainCheck:
    rows: int
    problems: list[str]  # empty when the chain and its anchors agree


def verify_audit(conn: Connection, anchor_url: str = "") -> ChainCheck:
    """Recompute the hash chain here, and hold it against the anchors written outside Postgres."""
    rows = tables.audit_rows(conn)
    problems = []
    broken = auditchain.first_break(rows)
    if broken is not None:
        problems.append(f"row {broken} does not chain: a row was edited, inserted or removed by hand")
    if anchor_url:
        heads = {r.id: r.hash for r in rows}
        problems += anchor.check(heads, max(heads, default=None), anchor.read_all(anchor_url))
    return ChainCheck(len(rows), problems)


def anchor_head(conn: Connection, anchor_url: str) -> tuple[anchor.Anchor, str]:
    """Write the chain's newest (id, hash) outside Postgres, if the chain verifies; returns it and where."""
    if not anchor_url:
        raise ConfigError("ETL_AUDIT_ANCHOR is not set (file:///dir or s3://bucket/prefix)")
    check = verify_audit(conn, anchor_url)
    if check.problems:
        raise TerminalError("the audit chain does not verify; not anchoring it: " + "; ".join(check.problems))
    rows = tables.audit_rows(conn)
    if not rows:
        raise ConfigError("the audit log is empty: nothing to anchor yet")
    head = anchor.Anchor(id=rows[-1].id, hash=rows[-1].hash, at=datetime.now(UTC).isoformat())
    return head, anchor.write(anchor_url, head)
