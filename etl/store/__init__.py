"""Postgres: the only package that imports psycopg2. One module per concern:

* ``connection``: connect, transactions, driver errors -> etl.errors kinds, ``query``;
* ``migrations``: every migration, in order (append-only); ``schema``: applying them, and the
  database roles with their grants;
* ``ingest``: the chunk write (rows, rejections, vault entries in one transaction);
* ``reports``: stats, rejections and their replays, the analysts' report;
* ``pii``: vault entries, data keys and the audit log (used by etl.pii.service only);
* ``streams``: Kinesis shard checkpoints and the committed ranges behind them.

The names most callers need are re-exported here: ``from etl import store``.
"""

from etl.store.connection import Connection, connect, connection, query, transaction
from etl.store.connection import where as connection_where
from etl.store.ingest import WriteResult, write_chunk
from etl.store.reports import rejected_summary, rejected_to_replay, replay_batch, report, stats
from etl.store.schema import create_roles, migrate

__all__ = [
    "Connection",
    "WriteResult",
    "connect",
    "connection",
    "connection_where",
    "create_roles",
    "migrate",
    "query",
    "rejected_summary",
    "rejected_to_replay",
    "replay_batch",
    "report",
    "stats",
    "transaction",
    "write_chunk",
]
