"""Migration 12: the PII functions give up on a lock after 5 s instead of waiting without end.

Any login with EXECUTE on a refused path (an analyst calling etl_erase or etl_reveal_request) writes
an audit row and so row-locks the audit chain's head; kept in an open transaction, that lock made
every erasure wait, and chunk writes queue behind a waiting erasure (its tombstone lock): the
pipeline stalled for as long as the erasure waited (60 s in the review). With lock_timeout set on
the functions themselves, a blocked officer's call fails in 5 s (55P03, retried as transient) and
the pipeline waits at most that long.
"""

# Append-only: a migration, once released, is never edited; add a new one instead.
TIMEOUTS: list[tuple[int, str, str]] = [
    (
        12,
        "PII functions: lock_timeout 5 s",
        """
        ALTER FUNCTION public.etl_audit(text, text, text, text, text, text) SET lock_timeout = '5s';
        ALTER FUNCTION public.etl_reveal_request(text, text[], text) SET lock_timeout = '5s';
        ALTER FUNCTION public.etl_reveal_release(bigint) SET lock_timeout = '5s';
        ALTER FUNCTION public.etl_reveal_outcome(bigint, text, text) SET lock_timeout = '5s';
        ALTER FUNCTION public.etl_erase(text, text) SET lock_timeout = '5s';
        ALTER FUNCTION public.etl_erasures_for(text[]) SET lock_timeout = '5s';
        """,
    ),
]
