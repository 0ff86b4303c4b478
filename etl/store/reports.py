"""What the operators and analysts read: counts, rejections (and their replays), reports."""

from collections.abc import Callable, Sequence
from typing import Any

from psycopg2.extras import execute_values

from etl.store.connection import Connection, query, transaction


def stats(conn: Connection, message_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Row and rejection counts, rejections by reason, and tokens shared by several rows.

    With ``message_ids``, only those messages count (the demo's own run).
    """
    where, params = ("WHERE message_id = ANY(%s)", (list(message_ids),)) if message_ids is not None else ("", ())
    rows = query(conn, f"SELECT count(*) FROM user_logins {where}", params)[0][0]
    by_reason = dict(
        query(
            conn, f"SELECT reason, count(*) FROM rejected_messages {where} GROUP BY reason ORDER BY 2 DESC, 1", params
        )
    )
    shared = {}
    for column in ("masked_ip", "masked_device_id"):
        shared[column] = query(
            conn,
            f"SELECT count(*), coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM user_logins {where} "
            f"GROUP BY {column} HAVING count(*) > 1) AS dup",
            params,
        )[0]
    return {
        "rows": rows,
        "rejected": sum(by_reason.values()),
        "rejected_by_reason": by_reason,
        "shared_ip_tokens": shared["masked_ip"][0],
        "rows_with_shared_ip": int(shared["masked_ip"][1]),
        "shared_device_tokens": shared["masked_device_id"][0],
        "rows_with_shared_device": int(shared["masked_device_id"][1]),
    }


def rejected_summary(conn: Connection) -> list[tuple[Any, ...]]:
    """Per reason: count, how many were replayed, first and last rejection, and the details."""
    return query(
        conn,
        """
        SELECT r.reason, count(*), count(DISTINCT p.message_id), min(r.rejected_at), max(r.rejected_at),
               (SELECT array_agg(d ORDER BY d) FROM (SELECT DISTINCT detail AS d FROM rejected_messages
                WHERE reason = r.reason LIMIT 5) AS details)
        FROM rejected_messages r LEFT JOIN rejected_replays p USING (message_id)
        GROUP BY r.reason ORDER BY count(*) DESC, r.reason
        """,
    )


_TO_REPLAY = """
SELECT message_id, sealed_body FROM rejected_messages r
WHERE (%s::text IS NULL OR reason = %s)
  AND sealed_body <> ''  -- a withheld body (too_large, broker_refused) was never kept
  AND NOT EXISTS (SELECT 1 FROM rejected_replays p WHERE p.message_id = r.message_id)
ORDER BY rejected_at, message_id LIMIT %s
"""


def rejected_to_replay(conn: Connection, reason: str | None, limit: int) -> list[tuple[str, str]]:
    """(message_id, sealed_body) of rejections never replayed, oldest first."""
    return [(str(m), str(b)) for m, b in query(conn, _TO_REPLAY, (reason, reason, limit))]


def replay_batch(conn: Connection, reason: str | None, limit: int, send: Callable[[list[str]], list[str]]) -> int:
    """Hand up to ``limit`` rejections never replayed to ``send`` (sealed bodies in, new message ids
    out) and record each replay, in ONE transaction that holds erasures back: an erasure waits
    until the replayed messages are sent (so they predate it and its tombstone covers them), and
    a body it deleted is never sent. Returns how many were replayed."""
    with transaction(conn, "replay") as cur:
        cur.execute("LOCK TABLE pii_erasures IN SHARE MODE")
        cur.execute(_TO_REPLAY, (reason, reason, limit))
        batch = [(str(m), str(b)) for m, b in cur.fetchall()]
        if batch:
            new_ids = send([sealed for _, sealed in batch])
            execute_values(
                cur,
                "INSERT INTO rejected_replays (message_id, new_message_id) VALUES %s",
                [(old, new) for (old, _), new in zip(batch, new_ids, strict=True)],
            )
    return len(batch)


def report(conn: Connection, limit: int) -> dict[str, list[tuple[Any, ...]]]:
    """What analysts come for, from the views of migration 6 (tokens, never raw values)."""
    return {
        "shared_devices": query(
            conn, "SELECT * FROM shared_device_tokens ORDER BY users DESC, logins DESC LIMIT %s", (limit,)
        ),
        "shared_ips": query(conn, "SELECT * FROM shared_ip_tokens ORDER BY users DESC, logins DESC LIMIT %s", (limit,)),
        "per_day": query(
            conn,
            "SELECT create_date, sum(logins)::bigint, sum(users)::bigint FROM logins_per_day "
            "GROUP BY create_date ORDER BY create_date DESC LIMIT %s",
            (limit,),
        ),
        "versions": query(
            conn,
            "SELECT app_version, sum(logins)::bigint FROM logins_per_day GROUP BY app_version, app_version_code "
            "ORDER BY app_version_code DESC LIMIT %s",
            (limit,),
        ),
        "locales": query(conn, "SELECT * FROM top_locales ORDER BY logins DESC, locale LIMIT %s", (limit,)),
    }
