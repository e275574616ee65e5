"""DB side of a backup: versions, database size, an exported snapshot for pg_dump and
the per-table row counts read in that same snapshot. (Issue 3.)

    backup.begin   -> lock required; opens a REPEATABLE READ transaction on its own
                      connection, exports its snapshot, returns versions and size
    backup.counts  -> exact row counts of every user table, read in that snapshot
                      (called while pg_dump streams, so it costs no extra wall time)
    backup.end     -> ends the snapshot transaction
"""

from __future__ import annotations

from psycopg import sql

from dbops.agent import db
from dbops.agent.db import one_line
from dbops.agent.lock import require_lock
from dbops.agent.protocol import AgentFailure, handler

# Ordinary and partitioned-leaf tables that pg_dump dumps data for: no system schemas,
# no tables that belong to an extension (pg_dump leaves their data out by default).
TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


def table_names(conn) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in conn.execute(TABLES_SQL).fetchall()]


def count_rows(conn, tables: list[tuple[str, str]] | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for schema, name in tables if tables is not None else table_names(conn):
        q = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(name)
        )
        counts[f"{schema}.{name}"] = conn.execute(q).fetchone()[0]
    return counts


def server_facts(conn) -> dict:
    version, num, size, enc = conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
        "pg_database_size(current_database()), pg_encoding_to_char(encoding) "
        "FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    return {
        "server_version": version,
        "server_version_num": num,
        "database_size": size,
        "encoding": enc,
    }


def _end(ctx) -> None:
    conn = ctx.snapshot_conn
    ctx.snapshot_conn = None
    if conn is not None and not conn.closed:
        try:
            conn.rollback()
        finally:
            conn.close()


@handler("backup.begin")
def begin(ctx, lock_wait: str = "60s") -> dict:
    require_lock(ctx)
    _end(ctx)
    try:
        conn = db.connect(
            application_name=f"dbops:backup snapshot {ctx.operator}", autocommit=False
        )
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SELECT set_config('lock_timeout', %s, true)", [lock_wait])
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        heads = db.version_rows(conn)  # in the dump's own snapshot
        facts = server_facts(conn)
    except Exception as exc:
        raise AgentFailure(
            f"cannot start the backup of {db.database()}: {one_line(exc)}", kind="connect"
        ) from None
    ctx.snapshot_conn = conn
    return {"database": db.database(), "snapshot": snapshot, "revisions": heads, **facts}


@handler("backup.counts")
def counts(ctx, tables: list | None = None) -> dict:
    """Every table's rows, or only ``tables`` ("schema.name": a touched backup's)."""
    conn = ctx.snapshot_conn
    if conn is None or conn.closed:
        raise AgentFailure("internal: backup.counts needs backup.begin first", kind="internal")
    try:
        if tables is not None:
            return {"tables": count_rows(conn, [tuple(q.split(".", 1)) for q in tables])}
        return {"tables": count_rows(conn)}
    except Exception as exc:
        raise AgentFailure(
            f"counting rows in the backup's snapshot failed: {one_line(exc)}", kind="counts"
        ) from None


@handler("backup.end")
def end(ctx) -> dict:
    _end(ctx)
    return {"ended": True}
