"""Putting a partial (touched) backup's tables back: the SQL around a data-only pg_restore that
the host runs in ONE psql transaction next to the server (dbops/ops/touched.py putback()).

    putback.sql   prelude (lock, drop FKs into/out of the tables, disable their user triggers,
                  TRUNCATE) and postlude (FKs re-added and so re-validated, triggers back, every
                  table's row count checked against the manifest: an exception rolls back)
"""

from __future__ import annotations

from psycopg import sql

from dbops.agent.lock import require_lock
from dbops.agent.protocol import AgentFailure, handler


def _ident(q: str) -> sql.Composable:
    schema, name = q.split(".", 1)
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


@handler("putback.sql")
def putback_sql(ctx, tables: dict, sequences: list, lock_timeout: str = "2s") -> dict:
    """The SQL around a data-only restore of ``tables`` (name -> manifest row count), run in one
    transaction by the host: lock, drop the foreign keys into/out of them (re-added, and so
    re-validated, at the end), disable their enabled user triggers (the rows are the backup's,
    not new writes), TRUNCATE; after the data: constraints back, triggers back, and every
    table's row count checked against the manifest (an exception rolls everything back)."""
    require_lock(ctx)
    conn = ctx.conn
    names = sorted(tables)
    missing = [
        q
        for q in names
        if conn.execute("SELECT to_regclass(%s)", [_ident(q).as_string(conn)]).fetchone()[0] is None
    ]
    if missing:
        raise AgentFailure(
            f"the live database has no table {', '.join(missing)}: it is not at the "
            f"backup's schema",
            kind="schema",
            missing=missing,
        )
    oids = [
        conn.execute("SELECT %s::regclass::oid", [_ident(q).as_string(conn)]).fetchone()[0]
        for q in names
    ]
    with conn.transaction():  # an empty search_path: pg_get_constraintdef qualifies every name
        conn.execute("SET LOCAL search_path = ''")
        fks = _foreign_keys(conn, oids)
    triggers = conn.execute(
        """
        SELECT format('%%I.%%I', n.nspname, c.relname), t.tgname FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE t.tgrelid = ANY(%s) AND NOT t.tgisinternal AND t.tgenabled <> 'D'
          AND t.tgparentid = 0 ORDER BY 1, 2""",
        [oids],
    ).fetchall()
    rel = ", ".join(_ident(q).as_string(conn) for q in names)
    return _putback_sql(conn, names, tables, sequences, lock_timeout, fks, triggers, rel)


def _foreign_keys(conn, oids) -> list:
    return conn.execute(
        """
        SELECT format('%%I.%%I', n.nspname, c.relname), k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE k.contype = 'f' AND k.conparentid = 0  -- a partition's clone goes with its parent's
          AND (k.conrelid = ANY(%s) OR k.confrelid = ANY(%s))
        ORDER BY 1, 2""",
        [oids, oids],
    ).fetchall()


def _putback_sql(conn, names, tables, sequences, lock_timeout, fks, triggers, rel) -> dict:
    pre = [
        sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)).as_string(conn),
        f"LOCK TABLE {rel} IN ACCESS EXCLUSIVE MODE",
    ]
    post = []
    for table, con, definition in fks:
        pre.append(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}")
            .format(sql.SQL(table), sql.Identifier(con))
            .as_string(conn)
        )
        post.append(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}")
            .format(sql.SQL(table), sql.Identifier(con), sql.SQL(definition))
            .as_string(conn)
        )
    for table, tg in triggers:
        pre.append(
            sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}")
            .format(sql.SQL(table), sql.Identifier(tg))
            .as_string(conn)
        )
        post.append(
            sql.SQL("ALTER TABLE {} ENABLE TRIGGER {}")
            .format(sql.SQL(table), sql.Identifier(tg))
            .as_string(conn)
        )
    pre.append(f"TRUNCATE {rel}")
    for q in names:
        post.append(
            sql.SQL(
                "DO $dbops$ DECLARE n bigint; BEGIN SELECT count(*) INTO n FROM {t}; IF n <> "
                "{want} THEN RAISE EXCEPTION 'dbops: % has % rows after the put-back, the "
                "manifest says %', {name}, n, {want}; END IF; END $dbops$"
            )
            .format(t=_ident(q), want=sql.Literal(int(tables[q])), name=sql.Literal(q))
            .as_string(conn)
        )
    return {
        "prelude": ";\n".join(pre) + ";",
        "postlude": ";\n".join(post) + ";" if post else "",
        "tables": names,
        "sequences": sequences,
    }
