"""DB-side facts for invoke doctor: the connection (classified by cause), the server's role
(primary / standby / read-only), the dbops lock holder, invalid indexes, sessions, the locks
they hold against the modes the pending revisions need, pg_dump running; ``doctor.models``
compares the models with the live schema (alembic's autogenerate, read-only). (Issues 5, 15.)

Read-only. Every part is measured on its own: one that fails is reported in ``errors``
and the others are still answered (doctor must never crash at 3 a.m.).
"""

from __future__ import annotations

import contextlib
import io
import re

from alembic import command
from alembic.config import Config

from dbops.agent import db, lock, pglocks, version_table
from dbops.agent.classify import CONNECT_CAUSES, connect_cause  # noqa: F401 (re-exported)
from dbops.agent.db import one_line
from dbops.agent.protocol import AgentFailure, handler
from dbops.agent.recover import quiet_alembic, script_failure
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
       extract(epoch FROM now() - a.xact_start)::int,
       left(regexp_replace(a.query, '\\s+', ' ', 'g'), 120)
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
        \s+((?:"[^"]+"|\w+)(?:\.(?:"[^"]+"|\w+))?)""",
    re.IGNORECASE | re.VERBOSE,
)


def tables_in_sql(text: str) -> list[str]:
    found = set()
    for m in _TABLE_RE.finditer(text):
        name = m.group(1).split(".")[-1].strip('"')
        if not version_table.is_it(name):
            found.add(name)
    return sorted(found)


def pending_sql(ctx, current: list[str]) -> str:
    buf = io.StringIO()
    cfg = Config(ctx.ini, stdout=io.StringIO(), output_buffer=buf)
    spec = f"{current[0]}:heads" if len(current) == 1 else "heads"
    with quiet_alembic():
        command.upgrade(cfg, spec, sql=True)
    return buf.getvalue()


SERVER_SQL = """
SELECT pg_is_in_recovery(), current_setting('transaction_read_only'),
       (SELECT source FROM pg_settings WHERE name = 'default_transaction_read_only'),
       current_setting('default_transaction_read_only')
"""

PRIMARY_SQL = "SELECT sender_host, sender_port FROM pg_stat_wal_receiver"

INDEX_TABLE_SQL = """
SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
WHERE i.indexrelid = to_regclass(%s)
"""


def connection(ctx) -> dict:
    """Can the agent connect, and if not, why (the first question doctor answers)."""
    try:
        ctx.conn.execute("SELECT 1")
    except Exception as exc:
        message = db.one_line(exc)
        full = str(exc)
        return {
            "ok": False,
            "cause": connect_cause(exc),
            "error": message,
            "too_many_for_role": bool(re.search(r"too many connections for role", full)),
            "too_many_for_database": bool(re.search(r"too many connections for database", full)),
            "user": db.params().get("user"),
            "database": db.database(),
            "swap": _swap_state(ctx),
        }
    return {"ok": True}


def _swap_state(ctx) -> dict | None:
    """An interrupted restore swap (closed or renamed-away live database), read in the
    maintenance database; None when that cannot be read either."""
    from dbops.agent import swap

    try:
        return swap.state(ctx)
    except Exception:  # noqa: BLE001 - the server itself is unreachable: the cause says so
        return None


def server(ctx) -> dict:
    recovery, ro, ro_source, default_ro = ctx.conn.execute(SERVER_SQL).fetchone()
    out = {
        "in_recovery": recovery,
        "read_only": ro == "on",
        "default_read_only": default_ro == "on",
        "read_only_source": ro_source,
        "primary": None,
    }
    if recovery:
        row = ctx.conn.execute(PRIMARY_SQL).fetchone()
        if row and row[0]:
            out["primary"] = {"host": row[0], "port": row[1]}
    return out


def dbops_lock() -> dict | None:
    """Who holds this database's dbops lock (pid, application = dbops:<purpose> <operator>,
    user, client, since), or None."""
    conn = db.connect(lock.maintenance_db(), application_name="dbops:doctor lock check")
    try:
        h = lock.holder(conn, db.database())
        if h is not None:
            app = h.get("application_name") or ""
            m = re.match(r"dbops:(\S+)\s*(.*)", app)
            h["purpose"], h["operator"] = (m.group(1), m.group(2)) if m else (None, None)
        return h
    finally:
        conn.close()


def needed_locks(ctx, sql: str) -> dict[str, list[str]]:
    """{table: [modes]} the pending revisions' SQL takes (pglocks.modes_for_sql); a DROP INDEX
    is resolved to its table. The seam for a rehearsal record: when one exists for these
    revisions, its measured locks can replace this estimate."""
    out: dict[str, set[str]] = {}
    for key, modes in pglocks.modes_for_sql(sql).items():
        if key.startswith("index:"):
            row = ctx.conn.execute(INDEX_TABLE_SQL, (key.split(":", 1)[1],)).fetchone()
            if not row:
                continue
            key = row[0]
        out.setdefault(key, set()).update(modes)
    return {t: sorted(m, key=pglocks.MODES.index) for t, m in out.items()}


@handler("doctor.facts")
def facts(ctx, long_query_seconds: int = 300) -> dict:
    out: dict = {"errors": {}, "error_kinds": {}, "database": db.database()}
    out["connection"] = connection(ctx)
    if not out["connection"]["ok"]:
        out["status"] = None
        out["errors"]["status"] = out["connection"]["error"]
        out["error_kinds"]["status"] = "connect"
        return out

    def part(name, fn):
        try:
            out[name] = fn()
        except AgentFailure as exc:
            out[name] = None
            out["errors"][name] = exc.message
            out["error_kinds"][name] = exc.kind
            if exc.details:
                out.setdefault("error_details", {})[name] = exc.details
        except Exception as exc:
            out[name] = None
            out["errors"][name] = one_line(exc)
            out["error_kinds"][name] = getattr(exc, "kind", "internal")

    part("server", lambda: server(ctx))
    part("dbops_lock", lambda: dbops_lock())

    def status():
        try:
            list(ctx.script().walk_revisions())  # a revision file that does not parse
        except Exception as exc:
            raise script_failure(ctx, exc) from None
        with quiet_alembic():
            return status_handler(ctx)

    part("status", status)
    st = out.get("status") or {}
    sql = {}

    def pending():
        if not st or not st.get("pending") or st.get("unknown_current"):
            return []
        sql["text"] = pending_sql(ctx, st["current"])
        return tables_in_sql(sql["text"])

    part("pending_tables", pending)
    part("pending_locks", lambda: needed_locks(ctx, sql["text"]) if sql.get("text") else {})

    def invalid_indexes():
        return [
            {**i, "index": i["name"] if i["schema"] == "public" else f"{i['schema']}.{i['name']}"}
            for i in db.invalid_indexes(ctx.conn)
        ]

    part("invalid_indexes", invalid_indexes)

    def sessions():
        rows = ctx.conn.execute(SESSIONS_SQL, (long_query_seconds,)).fetchall()
        return [
            {
                "pid": p,
                "application_name": app,
                "user": u,
                "client": cl,
                "state": stt,
                "xact_seconds": xs,
                "query_seconds": qs,
                "query": q,
                "waiting": f"{wt}:{we}" if wt else None,
            }
            for p, app, u, cl, stt, xs, qs, q, wt, we in rows
        ]

    part("sessions", sessions)

    def locks():
        tables = sorted(set(out.get("pending_tables") or []) | set(out.get("pending_locks") or {}))
        if not tables:
            return []
        rows = ctx.conn.execute(LOCKS_SQL, (tables,)).fetchall()
        return [
            {
                "pid": p,
                "table": t if s == "public" else f"{s}.{t}",
                "mode": m,
                "granted": g,
                "application_name": app,
                "state": stt,
                "xact_seconds": xs,
                "query": q,
            }
            for p, s, t, m, g, app, stt, xs, q in rows
        ]

    part("locks", locks)

    def pg_dumps():
        return [
            {
                "pid": p,
                "application_name": app,
                "database": d,
                "user": u,
                "since": since,
                "seconds": secs,
            }
            for p, app, d, u, since, secs in ctx.conn.execute(PG_DUMP_SQL).fetchall()
        ]

    part("pg_dump", pg_dumps)
    return out


@handler("doctor.models")
def models(ctx) -> dict:
    """The models (env.py's target_metadata) against the live schema: alembic's autogenerate
    comparison, read-only. Only meaningful at head (alembic refuses otherwise)."""
    from dbops.agent.migration import model_diff, quiet

    with quiet():
        return {"diff": model_diff(ctx)}


@handler("doctor.env_target")
def env_target(ctx) -> dict:
    """Does env.py follow dbops' target? Probed on two scratch databases in turn (an env.py
    whose URL was fixed at import follows at most the first): env.py's online path runs with
    the Config dbops builds for a scratch step (``sqlalchemy.url``, the shared connection,
    POSTGRES_DB/DATABASE_URL/PGDATABASE pointed), migrating nothing (``dont_mutate``, no
    revision), every connection checked by the guard before its first statement and the live
    database read back. {"follows": True/False/None, "via", "connected_to", "error"}."""
    from pathlib import Path

    from alembic.runtime.environment import EnvironmentContext

    from dbops.agent import guard, scratch

    script = ctx.script()
    env_py = str(Path(script.dir) / "env.py")
    via = None
    with guard.live_unchanged("the probe of env.py"):  # read once around both probes
        for _ in range(2):
            seen: dict = {}
            try:
                made = scratch.scratch_database("probe")
                name = made.__enter__()
            except Exception as exc:  # a role without CREATEDB: not probed (schema says so too)
                return {
                    "follows": None,
                    "kind": "scratch",
                    "error": f"cannot create a scratch database to probe env.py: {one_line(exc)}",
                }
            with contextlib.ExitStack() as stack:
                stack.push(made)
                stack.enter_context(db.pointed_at(name))
                stack.enter_context(quiet_alembic())
                try:
                    with (
                        guard.expecting(name, "the probe of env.py"),
                        guard.aimed_config(ctx, name) as cfg,
                    ):

                        def capture(_rev, mc, cfg=cfg, seen=seen):
                            seen["shared"] = mc.connection is cfg.attributes.get("connection")
                            seen["where"] = mc.connection.exec_driver_sql(guard.IDENTITY_SQL).one()
                            return []

                        with EnvironmentContext(cfg, script, fn=capture, dont_mutate=True):
                            script.run_env()
                except guard.WrongDatabase as exc:
                    return {"follows": False, "error": exc.message, "env_py": env_py, **exc.details}
                except AgentFailure as exc:
                    return {"follows": None, "error": exc.message, "kind": exc.kind}
                except Exception as exc:  # env.py failed for a reason of its own
                    return {"follows": None, "error": f"env.py failed: {one_line(exc)}"}
            if "where" not in seen:
                return {"follows": None, "error": "env.py ran but never ran its migrations online"}
            if seen["where"][0] != name:  # a connection the guard never saw open (a reused one)
                return {
                    "follows": False,
                    "env_py": env_py,
                    "error": f"env.py ran on database {seen['where'][0]!r}, dbops meant "
                    f"{name!r}: {guard.README_FIX}",
                }
            via = "connection" if seen["shared"] else "url"
    return {"follows": True, "via": via}
