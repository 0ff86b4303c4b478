"""Every migration, in order: append-only (a released migration is never edited; add a new one).

Split by what they build, each file a run of consecutive numbers; a new migration goes into a new
file (or the last one while it stays small) and is appended to MIGRATIONS here.
"""

from etl.store.migrations.core import CORE, USER_LOGINS_DDL
from etl.store.migrations.finality import FINALITY
from etl.store.migrations.incarnations import INCARNATIONS
from etl.store.migrations.streams import STREAMS
from etl.store.migrations.timeouts import TIMEOUTS
from etl.store.migrations.vault import VAULT

MIGRATIONS: list[tuple[int, str, str]] = [*CORE, *VAULT, *STREAMS, *FINALITY, *INCARNATIONS, *TIMEOUTS]
assert [m[0] for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1)), "migrations are numbered 1, 2, 3, ..."

__all__ = ["MIGRATIONS", "USER_LOGINS_DDL"]
