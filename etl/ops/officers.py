"""The PII officers' commands: reveal, audit verify/anchor, erase, and the key rotations.

Part of the ``etl`` command (etl.ops.cli registers them): each parses, calls the one PII service
(etl.pii.service), prints. Which login runs each: docs/pii.md ("Roles").
"""

import argparse
import sys
from pathlib import Path
from typing import Any

from etl import settings, store
from etl.ops import report
from etl.pii import service as pii
from etl.progress import Bar


def cmd_reveal(args: argparse.Namespace, s: settings.Settings) -> int:
    """Original values for a pii_officer holding the private key, as JSON lines; every attempt audited."""
    listed: list[str] = []
    if args.tokens_file:
        try:
            listed = [line.strip() for line in Path(args.tokens_file).read_text().splitlines() if line.strip()]
        except OSError as exc:
            print(f"etl reveal: cannot read {args.tokens_file}: {exc.strerror}", file=sys.stderr)
            return 2
    # malformed tokens or reason: refused here, before any SQL (the server would log the values)
    pii.check_request(args.field, [*([args.token] if args.token else []), *listed], args.reason)
    with store.connection(s.database_url) as conn:
        tokens = pii.select_tokens(conn, args.field, args.token, listed, args.user_id)
        try:
            revealed = pii.reveal(s, conn, args.field, tokens, args.reason)
        except pii.Refused as exc:
            print(f"etl reveal: {exc}", file=sys.stderr)
            return 1
    for r in revealed:
        print(r.json())
    counts = {o: sum(r.outcome == o for r in revealed) for o in ("revealed", "not found", "failed")}
    print(", ".join(f"{n} {o}" for o, n in counts.items()) + " (each recorded in the audit log)", file=sys.stderr)
    if args.user_id is not None and not tokens:
        print(
            f"etl reveal: no {args.field} token in any row of that user id (no rows, or all erased):"
            " check the id (the request is recorded in the audit log)",
            file=sys.stderr,
        )
        return 1
    return 0 if not counts["failed"] else 1


def cmd_audit_verify(args: argparse.Namespace, s: settings.Settings) -> int:
    with store.connection(s.database_url) as conn:
        check = pii.verify_audit(conn, s.audit_anchor)
    if check.problems:
        print("audit chain BROKEN:\n  " + "\n  ".join(check.problems))
        return 1
    anchored = (
        " and consistent with its anchors" if s.audit_anchor else " (no ETL_AUDIT_ANCHOR: not checked outside Postgres)"
    )
    print(f"audit chain intact: {check.rows} rows{anchored}")
    return 0


def cmd_audit_anchor(args: argparse.Namespace, s: settings.Settings) -> int:
    with store.connection(s.database_url) as conn:
        head, where = pii.anchor_head(conn, s.audit_anchor)
    print(f"anchored audit row {head.id} ({head.hash[:16]}…) at {where}")
    return 0


def cmd_erase(args: argparse.Namespace, s: settings.Settings) -> int:
    with store.connection(s.database_url) as conn:
        try:
            result = pii.erase(conn, args.user_id, args.reason)
        except pii.Refused as exc:
            print(f"etl erase: {exc}", file=sys.stderr)
            return 1
    if result.found_nothing and result.erased_before is None:
        print(
            "etl erase: no rows and no rejected messages of that user id: check the id. The erasure is recorded"
            " anyway (audited): a message of that id sent before now that arrives later keeps no value",
            file=sys.stderr,
        )
        return 1
    before = f" (erased before on {result.erased_before:%Y-%m-%d %H:%M:%S %Z})" if result.erased_before else ""
    print(
        f"user {report.printable(args.user_id)}{before}: {result.tokens} tokens, {result.erased} vault entries"
        f" erased, {result.kept_shared} kept because other users share them; {result.rows} rows re-tokenized"
        f" with random stand-ins; {result.rejected} rejected bodies deleted (one transaction, audited);"
        " messages sent before now that arrive later keep no value"
    )
    return 0


def cmd_rotate_masking_key(args: argparse.Namespace, s: settings.Settings) -> int:
    """Re-tokenize every row whose token predates the active masking key, from the vault."""
    with store.connection(s.database_url) as conn, Bar("token") as bar:
        tokens, rows = pii.rotate_masking_key(s, conn, args.reason, bar)
    print(f"re-tokenized {tokens} tokens in {rows} rows to masking key version {s.masking_key_version}")
    return 0


def cmd_rotate_vault_key(args: argparse.Namespace, s: settings.Settings) -> int:
    """Re-seal every vault entry to the current public key (new key pair, or legacy migration)."""
    with store.connection(s.database_url) as conn, Bar("entry") as bar:
        entries, recipient = pii.rotate_vault_key(s, conn, args.reason, bar)
    print(f"re-sealed {entries} vault entries to public key {recipient}")
    return 0


def add_commands(sub: Any) -> None:
    """Register the officers' subcommands on the ``etl`` parser's subparsers."""
    reveal = sub.add_parser(
        "reveal", help="recover original values as JSON lines (pii_officer + private key; every attempt audited)"
    )
    reveal.add_argument("--field", required=True, choices=list(pii.FIELDS))
    which = reveal.add_mutually_exclusive_group(required=True)
    which.add_argument("--token", help="one token")
    which.add_argument("--tokens-file", help="a file with one token per line")
    which.add_argument("--user-id", help="every token of this user's rows")
    reveal.add_argument("--reason", required=True, help="why: recorded in the audit log")
    reveal.set_defaults(func=cmd_reveal)

    audit = sub.add_parser("audit", help="the PII audit log")
    asub = audit.add_subparsers(dest="action", required=True)
    verify = asub.add_parser("verify", help="check the hash chain (and its anchors): exit 1 if tampered with")
    verify.set_defaults(func=cmd_audit_verify)
    anchor = asub.add_parser("anchor", help="write the chain's head outside Postgres (ETL_AUDIT_ANCHOR)")
    anchor.set_defaults(func=cmd_audit_anchor)

    erase = sub.add_parser("erase", help="erase a user's personal data (right to erasure; atomic, audited)")
    erase.add_argument("--user-id", required=True)
    erase.add_argument("--reason", required=True)
    erase.set_defaults(func=cmd_erase)

    rot = sub.add_parser("rotate-masking-key", help="re-tokenize old rows to the active ETL_MASKING_KEY (resumable)")
    rot.add_argument("--reason", default="scheduled rotation", help="recorded in the audit log")
    rot.set_defaults(func=cmd_rotate_masking_key)
    rotv = sub.add_parser(
        "rotate-vault-key", help="re-seal every vault entry to ETL_VAULT_PUBLIC_KEY (new key pair, legacy migration)"
    )
    rotv.add_argument("--reason", default="scheduled rotation", help="recorded in the audit log")
    rotv.set_defaults(func=cmd_rotate_vault_key)
