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


# --- the put-back after a rollback: merge, never replace --------------------------------
STAGE = "dbops_putback_{}"  # pg_temp.<stage>: one temp table per table, dropped at COMMIT


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _notice(*parts: str) -> str:
    """RAISE NOTICE 'dbops-putback|a|b|…' with each part a PL/pgSQL expression."""
    return "RAISE NOTICE '{}', {};".format(
        "|".join(["dbops-putback"] + ["%"] * len(parts)), ", ".join(parts)
    )


@handler("putback.merge")
def putback_merge(ctx, tables: dict, counts: dict, lock_timeout: str = "2s") -> dict:
    """The SQL around a data-only restore of the backup's rows of ``tables`` (name -> {"insert",
    "columns": {col: value the downgrade left, or None = the column's default}, "pk",
    "printed"}) into temp tables (pg_temp.dbops_putback_N; the host rewrites each COPY's target),
    run in ONE transaction by the host:
      - every staged table's row count equals the backup manifest's ``counts`` (else rollback);
      - a re-created table: the backup's rows missing by primary key are inserted (ON CONFLICT
        DO NOTHING); without a primary key only into a table still empty; live count >= the
        backup's after; its serial/identity sequences moved past the rows put back;
      - a column: UPDATE by primary key, only where the live row still holds the value the
        downgrade left; rows inserted or changed since keep theirs.
    User triggers of these tables are disabled meanwhile (the values are the backup's)."""
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
            f"the live database has no table {', '.join(missing)} after the downgrade",
            kind="schema",
            missing=missing,
        )
    pre = [sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)).as_string(conn)]
    post = [  # pg_restore's preamble set both for the session: the notices carry the counts
        sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)).as_string(conn),
        "SET LOCAL client_min_messages = notice",
    ]
    enable: list[str] = []
    mapping: list[str] = []
    for i, q in enumerate(names):
        spec = tables[q]
        stage = STAGE.format(i)
        live = _ident(q).as_string(conn)
        mapping.append(f"{stage} {spec['printed']}")
        pre.append(f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT * FROM {live} WITH NO DATA")
        name = sql.Literal(q).as_string(conn)
        want = int(counts[q])
        post.append(
            f"DO $dbops$ DECLARE n bigint; BEGIN SELECT count(*) INTO n FROM pg_temp.{stage}; "
            f"IF n <> {want} THEN RAISE EXCEPTION 'dbops: the backup gave % rows of %, its "
            f"manifest says %', n, {name}, {want}; END IF; END $dbops$"
        )
        post.append(f"LOCK TABLE {live} IN SHARE ROW EXCLUSIVE MODE")
        oid = conn.execute("SELECT %s::regclass::oid", [live]).fetchone()[0]
        for (tg,) in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal "
            "AND tgenabled <> 'D' AND tgparentid = 0 ORDER BY 1",
            [oid],
        ).fetchall():
            post.append(f"ALTER TABLE {live} DISABLE TRIGGER {_q(tg)}")
            enable.append(f"ALTER TABLE {live} ENABLE TRIGGER {_q(tg)}")
        cols = conn.execute(
            "SELECT attname, pg_get_expr(d.adbin, d.adrelid), "
            "pg_get_serial_sequence(%s, attname) FROM pg_attribute a "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped "
            "AND a.attgenerated = '' ORDER BY a.attnum",
            [live, oid],
        ).fetchall()
        pk = spec.get("pk") or []
        match = " AND ".join(f"l.{_q(c)} = s.{_q(c)}" for c in pk)
        if spec["insert"]:
            collist = ", ".join(_q(c) for c, _, _ in cols)
            if pk:
                body = (
                    f"INSERT INTO {live} AS l ({collist}) OVERRIDING SYSTEM VALUE "
                    f"SELECT {collist} FROM pg_temp.{stage} ON CONFLICT DO NOTHING; "
                    f"GET DIAGNOSTICS n = ROW_COUNT; "
                )
            else:
                body = (
                    f"IF EXISTS (SELECT 1 FROM {live}) THEN RAISE EXCEPTION 'dbops: % has no "
                    f"primary key and rows already: its backup rows cannot be matched', {name}; "
                    f"END IF; INSERT INTO {live} ({collist}) OVERRIDING SYSTEM VALUE "
                    f"SELECT {collist} FROM pg_temp.{stage}; GET DIAGNOSTICS n = ROW_COUNT; "
                )
            body += (
                f"SELECT count(*) INTO k FROM {live}; IF k < {want} THEN RAISE EXCEPTION "
                f"'dbops: % has % rows after the put-back, fewer than the backup''s %', "
                f"{name}, k, {want}; END IF; " + _notice("'inserted'", name, "n", "k")
            )
            for c, _, seq in cols:
                if seq:
                    body += (
                        f" PERFORM setval({sql.Literal(seq).as_string(conn)}, m) FROM (SELECT "
                        f"max({_q(c)})::bigint AS m FROM {live}) x WHERE m IS NOT NULL AND m > "
                        f"(SELECT last_value FROM {seq});"
                    )
            post.append(f"DO $dbops$ DECLARE n bigint; k bigint; BEGIN {body} END $dbops$")
        defaults = {c: d for c, d, _ in cols}
        for col, left in sorted(spec["columns"].items() if pk else []):
            if col not in defaults:
                continue
            was = left if left is not None else (defaults[col] or "NULL")
            c = _q(col)
            post.append(
                f"DO $dbops$ DECLARE n bigint; k bigint; BEGIN "
                f"UPDATE {live} l SET {c} = s.{c} FROM pg_temp.{stage} s WHERE {match} "
                f"AND l.{c} IS NOT DISTINCT FROM ({was}) AND s.{c} IS DISTINCT FROM l.{c}; "
                f"GET DIAGNOSTICS n = ROW_COUNT; "
                f"SELECT count(*) INTO k FROM {live} l JOIN pg_temp.{stage} s ON {match} "
                f"WHERE l.{c} IS DISTINCT FROM s.{c}; "
                + _notice("'updated'", name, sql.Literal(col).as_string(conn), "n", "k")
                + " END $dbops$"
            )
    post += enable
    return {
        "prelude": ";\n".join(pre) + ";",
        "postlude": ";\n".join(post) + ";",
        "map": "\n".join(mapping),
        "tables": names,
    }
