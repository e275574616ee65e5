"""One advisory lock per database for backup, migrate, restore, rollback and stamp.

Taken on a dedicated connection to the maintenance database (``postgres``), keyed by
the target database's name: a session lock there survives ``autocommit_block()``
commits in migrations, and does not stop a restore from renaming the database.
"""

from __future__ import annotations

import os
import zlib

from dbops.agent import db
from dbops.agent.protocol import AgentFailure, handler

LOCK_CLASS = 0x0DB0_0DB0 & 0x7FFFFFFF


def lock_key(database: str) -> tuple[int, int]:
    objid = zlib.crc32(database.encode()) & 0x7FFFFFFF
    return LOCK_CLASS, objid


def maintenance_db() -> str:
    return os.environ.get("DBOPS_MAINTENANCE_DB") or "postgres"


HOLDER_SQL = """
SELECT a.pid, a.application_name, a.usename, coalesce(host(a.client_addr), 'local') AS client,
       to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS since
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 2
"""


def holder(conn, database: str) -> dict | None:
    row = conn.execute(HOLDER_SQL, lock_key(database)).fetchone()
    if row is None:
        return None
    pid, app, user, client, since = row
    return {"pid": pid, "application_name": app, "user": user, "client": client, "since": since}


def describe_holder(h: dict | None) -> str:
    if not h:
        return "another dbops operation (it has just finished or is finishing)"
    return (f"pid {h['pid']} '{h['application_name']}' (user {h['user']} from {h['client']}, "
            f"since {h['since']})")


@handler("lock.acquire")
def acquire(ctx, purpose: str = "dbops") -> dict:
    if ctx.lock_conn is not None and not ctx.lock_conn.closed:
        return {"held": True, "database": db.database()}
    database = db.database()
    ctx.purpose = purpose
    conn = db.connect(maintenance_db(), application_name=f"dbops:{purpose} {ctx.operator}")
    got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", lock_key(database)).fetchone()[0]
    if not got:
        h = holder(conn, database)
        conn.close()
        raise AgentFailure(f"database {database} is busy: another dbops operation holds its lock: "
                           f"{describe_holder(h)}", kind="locked", holder=h)
    ctx.lock_conn = conn
    return {"held": True, "database": database}


@handler("lock.release")
def release(ctx) -> dict:
    if ctx.lock_conn is not None and not ctx.lock_conn.closed:
        ctx.lock_conn.close()
    ctx.lock_conn = None
    return {"held": False}


def require_lock(ctx) -> None:
    if ctx.lock_conn is None or ctx.lock_conn.closed:
        raise AgentFailure("internal: this step needs the dbops lock (call lock.acquire first)",
                           kind="internal")
