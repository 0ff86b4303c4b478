"""What a login may do: its roles, and the privileges each of etl's roles needs, asked of PostgreSQL.

A process checks at start (a worker) or on request (``etl doctor``) that its login holds what its
work needs, so a missing grant is one line naming the role, not a refusal per chunk.
"""

from typing import Any

from etl.store.connection import Connection, query

# What each role of README "Roles" must be able to do, as PostgreSQL's has_*_privilege checks:
# (kind, object, privilege). "admin" is the tables' owner (the login that ran `etl init`).
NEEDS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "etl_writer": (("table", "user_logins", "INSERT"), ("table", "rejected_messages", "INSERT")),
    "analyst": (("table", "user_logins", "SELECT"), ("table", "shared_ip_tokens", "SELECT")),
    "pii_officer": (("table", "pii_audit", "SELECT"), ("function", "etl_reveal_release(bigint)", "EXECUTE")),
    "admin": (("table", "rejected_messages", "SELECT"), ("table", "user_logins", "UPDATE")),
}
ROLES = ("etl_writer", "analyst", "pii_officer", "etl_owner")


def login(conn: Connection) -> dict[str, Any]:
    """{"user": the login, "superuser": bool, "roles": the ROLES it is a member of}."""
    (user, superuser), *_ = query(
        conn, "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    roles = [
        r
        for (r,) in query(
            conn,
            "SELECT rolname::text FROM pg_roles WHERE rolname = ANY(%s) AND pg_has_role(current_user, oid, 'MEMBER')"
            " ORDER BY rolname",
            (list(ROLES),),
        )
    ]
    return {"user": user, "superuser": bool(superuser), "roles": roles}


def lacking(conn: Connection, role: str) -> list[str]:
    """What of NEEDS[role] this login lacks, as "INSERT on user_logins" (empty: it may do the work).

    Raises ConfigError (schema missing: run `etl init`) when the objects do not exist."""
    checks = NEEDS[role]
    sql = "SELECT " + ", ".join(f"has_{kind}_privilege(%s, %s)" for kind, _, _ in checks)
    (answers,) = query(conn, sql, [v for _, obj, priv in checks for v in (obj, priv)])
    return [f"{priv} on {obj}" for (_, obj, priv), ok in zip(checks, answers, strict=True) if not ok]
