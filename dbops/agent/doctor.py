"""DB-side facts for invoke doctor: invalid indexes, sessions, locks, pg_dump running. (Issue 5.)

Read-only. Every part is measured on its own: one that fails is reported in ``errors``
and the others are still answered (doctor must never crash at 3 a.m.).
"""

from __future__ import annotations

import io
import re

from alembic import command
from alembic.config import Config

from dbops.agent import db
from dbops.agent.db import one_line
from dbops.agent.protocol import handler
from dbops.agent.recover import quiet_alembic
from dbops.agent.status import status as status_handler

SESSIONS_SQL = """
SELECT pid, application_name, usename, coalesce(host(client_addr), 'local'), state,
       extract(epoch FROM now() - xact_start)::int, extract(epoch FROM now() - query_start)::int,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 120), wait_event_type, wait_event
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend'
  AND (state LIKE 'idle in transaction%%'
       OR (state = 'active' AND now() - query_start > make_interval(secs => %s)))
ORDER BY xact_start NULLS LAST
"""

LOCKS_SQL = """
SELECT l.pid, n.nspname, c.relname, l.mode, l.granted, a.application_name, a.state,
       extract(epoch FROM now() - a.xact_start)::int
FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid <> pg_backend_pid() AND c.relname = ANY(%s)
  AND a.application_name NOT LIKE 'dbops:%%'
ORDER BY l.pid, c.relname
"""

PG_DUMP_SQL = """
SELECT pid, application_name, datname, usename,
       to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
       extract(epoch FROM now() - backend_start)::int
FROM pg_stat_activity
WHERE application_name IN ('pg_dump', 'pg_dumpall', 'pg_restore') AND pid <> pg_backend_pid()
ORDER BY backend_start
"""

# Tables a statement touches: ALTER/CREATE/DROP/LOCK/TRUNCATE TABLE x, CREATE INDEX … ON x,
# REFERENCES x (an FK locks its target too), DML on x.
_TABLE_RE = re.compile(
    r"""(?:ALTER\s+TABLE(?:\s+IF\s+EXISTS)?(?:\s+ONLY)?|CREATE\s+(?:UNLOGGED\s+)?TABLE(?:\s+IF\s+NOT\s+EXISTS)?
        |DROP\s+TABLE(?:\s+IF\s+EXISTS)?|LOCK\s+TABLE|TRUNCATE(?:\s+TABLE)?|REFERENCES|UPDATE
        |INSERT\s+INTO|DELETE\s+FROM
        |CREATE\s+(?:UNIQUE\s+)?INDEX(?:\s+CONCURRENTLY)?(?:\s+IF\s+NOT\s+EXISTS)?\s+\S+\s+ON(?:\s+ONLY)?)
        \s+((?:"[^"]+"|\w+)(?:\.(?:"[^"]+"|\w+))?)""", re.IGNORECASE | re.VERBOSE)


def tables_in_sql(text: str) -> list[str]:
    found = set()
    for m in _TABLE_RE.finditer(text):
        name = m.group(1).split(".")[-1].strip('"')
        if name.lower() != "alembic_version":
            found.add(name)
    return sorted(found)


def pending_sql(ctx, current: list[str]) -> str:
    buf = io.StringIO()
    cfg = Config(ctx.ini, stdout=io.StringIO(), output_buffer=buf)
    spec = f"{current[0]}:heads" if len(current) == 1 else "heads"
    with quiet_alembic():
        command.upgrade(cfg, spec, sql=True)
    return buf.getvalue()


@handler("doctor.facts")
def facts(ctx, long_query_seconds: int = 300) -> dict:
    out: dict = {"errors": {}, "error_kinds": {}}

    def part(name, fn):
        try:
            out[name] = fn()
        except Exception as exc:
            out[name] = None
            out["errors"][name] = one_line(exc)
            out["error_kinds"][name] = getattr(exc, "kind", "internal")

    with quiet_alembic():
        part("status", lambda: status_handler(ctx))
    st = out.get("status") or {}

    def pending_tables():
        if not st or not st.get("pending") or st.get("unknown_current"):
            return []
        return tables_in_sql(pending_sql(ctx, st["current"]))

    part("pending_tables", pending_tables)

    def invalid_indexes():
        return [{**i, "index": i["name"] if i["schema"] == "public" else f"{i['schema']}.{i['name']}"}
                for i in db.invalid_indexes(ctx.conn)]

    part("invalid_indexes", invalid_indexes)

    def sessions():
        rows = ctx.conn.execute(SESSIONS_SQL, (long_query_seconds,)).fetchall()
        return [{"pid": p, "application_name": app, "user": u, "client": cl, "state": stt,
                 "xact_seconds": xs, "query_seconds": qs, "query": q,
                 "waiting": f"{wt}:{we}" if wt else None}
                for p, app, u, cl, stt, xs, qs, q, wt, we in rows]

    part("sessions", sessions)

    def locks():
        tables = out.get("pending_tables") or []
        if not tables:
            return []
        rows = ctx.conn.execute(LOCKS_SQL, (tables,)).fetchall()
        return [{"pid": p, "table": t if s == "public" else f"{s}.{t}", "mode": m,
                 "granted": g, "application_name": app, "state": stt, "xact_seconds": xs}
                for p, s, t, m, g, app, stt, xs in rows]

    part("locks", locks)

    def pg_dumps():
        return [{"pid": p, "application_name": app, "database": d, "user": u, "since": since,
                 "seconds": secs}
                for p, app, d, u, since, secs in ctx.conn.execute(PG_DUMP_SQL).fetchall()]

    part("pg_dump", pg_dumps)
    out["database"] = db.database()
    return out
