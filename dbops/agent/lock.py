"""One advisory lock per database for backup, migrate, restore, rollback and stamp.

Taken on a dedicated connection to the maintenance database (``postgres``), keyed by
the target database's name: a session lock there survives ``autocommit_block()``
commits in migrations, and does not stop a restore from renaming the database.

A session lock means nothing through a pooler in transaction or statement mode (PgBouncer):
the next statement may run on another server connection, and the lock stays behind on one
that other clients now use. ``pooled()`` finds out before the lock is taken, and the agent
refuses, naming DBOPS_DIRECT_HOST (which points every dbops connection at the server itself).
In order: the server sees this very socket (direct: done); two client connections seen on one
backend (proof of pooling, tried 3 times); else PgBouncer's admin database answers and its
pool mode is read (or cannot be: refused too, session mode cannot be proven).
"""

from __future__ import annotations

import os
import zlib

from dbops.agent import db
from dbops.agent.protocol import AgentFailure, handler

LOCK_CLASS = 0x0DB0_0DB0 & 0x7FFFFFFF


def lock_key(database: str, scope: str | None = None) -> tuple[int, int]:
    """The key of the database's lock; a ``scope`` (e.g. "drill") gives a separate lock for
    work that must not run twice at once but does not exclude backups or migrations."""
    name = database if not scope else f"{database}\0{scope}"
    objid = zlib.crc32(name.encode()) & 0x7FFFFFFF
    return LOCK_CLASS, objid


def maintenance_db() -> str:
    return os.environ.get("DBOPS_MAINTENANCE_DB") or "postgres"


HOLDER_SQL = """
SELECT a.pid, a.application_name, a.usename, coalesce(host(a.client_addr), 'local') AS client,
       to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS since
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 2
"""


def holder(conn, database: str, scope: str | None = None) -> dict | None:
    row = conn.execute(HOLDER_SQL, lock_key(database, scope)).fetchone()
    if row is None:
        return None
    pid, app, user, client, since = row
    return {"pid": pid, "application_name": app, "user": user, "client": client, "since": since}


def describe_holder(h: dict | None) -> str:
    if not h:
        return "another dbops operation (it has just finished or is finishing)"
    return (
        f"pid {h['pid']} '{h['application_name']}' (user {h['user']} from {h['client']}, "
        f"since {h['since']})"
    )


def _pid(conn) -> int:
    return conn.execute("SELECT pg_backend_pid()", prepare=False).fetchone()[0]


def _server_sees_this_socket(conn) -> bool:
    """True when the server's view of the client (address, port) is this TCP socket: no
    proxy of any kind in between. (Unix sockets, NAT and proxies: False, then look further.)"""
    import socket

    try:
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return False
            mine = sock.getsockname()[:2]
        addr, port = conn.execute(
            "SELECT host(inet_client_addr()), inet_client_port()", prepare=False
        ).fetchone()
    except Exception:  # noqa: BLE001
        return False
    return (addr, port) == (mine[0], mine[1])


def _two_clients_one_backend(conn, dbname: str) -> str | None:
    """Proof of transaction/statement pooling: on a direct (or session-pooled) connection
    ``conn`` keeps its backend and no other client connection runs on it. Through transaction
    pooling ``conn``'s backend goes back to the pool after each statement: a second client's
    open transaction may get that very backend, or ``conn``'s next statement runs elsewhere.
    Statement pooling refuses the transaction. (No proof does not prove the opposite: a busy
    pool may hand ``conn`` the same backend again by chance.)"""
    first = _pid(conn)
    try:
        other = db.connect(dbname, application_name="dbops:pooler probe", autocommit=False)
    except Exception:  # noqa: BLE001 - no second connection (connection limit): no proof
        return None
    try:
        try:
            held = _pid(other)  # inside a transaction: this backend is pinned to `other`
        except Exception as exc:  # noqa: BLE001
            return "statement" if "pooling mode" in str(exc) else None
        again = _pid(conn)
        return "transaction" if held == first or again != first else None
    finally:
        try:
            other.rollback()
        except Exception:  # noqa: BLE001 - statement pooling closes it after its error
            pass
        other.close()


def pgbouncer_mode(dbname: str) -> str | None:
    """None when no PgBouncer answers at this address; else its pool mode for ``dbname``
    ("session", "transaction", "statement"), or "unknown" when its admin console refuses this
    user (not in admin_users/stats_users). PostgreSQL itself answers 'database "pgbouncer"
    does not exist' (or connects to a real database of that name, where SHOW fails)."""
    try:
        admin = db.connect("pgbouncer", application_name="dbops:pooler probe")
    except Exception as exc:  # noqa: BLE001
        return "unknown" if "not allowed" in str(exc) else None
    try:
        cur = admin.execute("SHOW DATABASES", prepare=False)
        cols = [d.name for d in cur.description]
        for row in cur.fetchall():
            rec = dict(zip(cols, row, strict=False))
            if rec.get("name") == dbname and rec.get("pool_mode"):
                return str(rec["pool_mode"])
        for key, value, *_ in admin.execute("SHOW CONFIG", prepare=False).fetchall():
            if key == "pool_mode":
                return str(value)
        return "unknown"
    except Exception:  # noqa: BLE001 - a PostgreSQL database that happens to be called pgbouncer
        return None
    finally:
        admin.close()


def pooled(conn, dbname: str) -> str | None:
    """ "transaction", "statement" or "unknown" when ``conn`` may not own one server session
    (a session advisory lock would not hold); None when it does. Never positive on a direct
    connection; through PgBouncer in transaction/statement mode never None."""
    if _server_sees_this_socket(conn):
        return None
    for _ in range(3):
        mode = _two_clients_one_backend(conn, dbname)
        if mode:
            return mode
    mode = pgbouncer_mode(dbname)
    return None if mode in (None, "session") else mode


def _pooler_refusal(mode: str) -> AgentFailure:
    p = db.params()
    where = f"{p.get('host') or 'localhost'}:{p.get('port')}"
    what = (
        f"a connection pooler in {mode} pooling mode (PgBouncer?)"
        if mode != "unknown"
        else "a PgBouncer whose pool mode this user cannot read (not in its stats_users)"
    )
    if os.environ.get("DBOPS_DIRECT_HOST"):
        return AgentFailure(
            f"DBOPS_DIRECT_HOST/DBOPS_DIRECT_PORT ({where}) lead to {what}, not to the PostgreSQL "
            f"server: point them at the server itself",
            kind="pooler",
            mode=mode,
        )
    return AgentFailure(
        f"{where} is {what}: the dbops lock and migrations need one server session; "
        f"set DBOPS_DIRECT_HOST (and DBOPS_DIRECT_PORT) to the PostgreSQL server itself",
        kind="pooler",
        mode=mode,
    )


@handler("lock.acquire")
def acquire(ctx, purpose: str = "dbops", scope: str | None = None) -> dict:
    if ctx.lock_conn is not None and not ctx.lock_conn.closed:
        return {"held": True, "database": db.database()}
    database = db.database()
    ctx.purpose = purpose
    conn = db.connect(maintenance_db(), application_name=f"dbops:{purpose} {ctx.operator}")
    mode = pooled(conn, maintenance_db())
    if mode:
        conn.close()
        raise _pooler_refusal(mode)
    got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", lock_key(database, scope)).fetchone()[
        0
    ]
    if not got:
        h = holder(conn, database, scope)
        conn.close()
        raise AgentFailure(
            f"database {database} is busy: another dbops operation holds its lock: "
            f"{describe_holder(h)}",
            kind="locked",
            holder=h,
        )
    ctx.lock_conn = conn
    ctx.lock_scope = scope
    return {"held": True, "database": database}


def require_lock(ctx) -> None:
    if ctx.lock_conn is None or ctx.lock_conn.closed or getattr(ctx, "lock_scope", None):
        raise AgentFailure(
            "internal: this step needs the dbops lock (call lock.acquire first)", kind="internal"
        )
