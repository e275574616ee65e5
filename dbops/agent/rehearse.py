"""DB side of a rehearsal (invoke rehearse): the pending revisions run on a scratch copy of the
live database restored from a backup, exactly as migrate runs them (this agent, the project's
env.py pointed at the copy, one revision per alembic run, the same PGOPTIONS), instrumented
per statement (dbops/agent/statement_trace.py) while a probe (a second connection) plays
the application: per table, a one-row read and a rolled-back one-row write, each with a short
lock_timeout, in a loop; the longest stretch each could not get through is what readers and
writers would feel.

    rehearse.scratch    sweeps dead rehearsals' copies, creates a new empty one (whose
                        maker holds a lock on its name: how a live one is told apart, scratch.py)
    rehearse.leftovers  the copies left by killed rehearsals (doctor names them)
    rehearse.run        runs the revisions on the copy, returns the facts per revision
    rehearse.drop       drops a copy
Never connects to the live database except to read the script directory's state.
"""

from __future__ import annotations

import os
import re
import threading
import time
import zlib

import psycopg
from psycopg import sql

from dbops.agent import db, guard, scratch, version_table
from dbops.agent.db import one_line
from dbops.agent.protocol import AgentFailure, handler
from dbops.agent.statement_trace import StatementTrace

PREFIX = f"{scratch.PREFIX}rehearse_"
PROBE_TIMEOUT_MS = 100
PROBE_TABLES = 50  # the largest user tables are probed

TABLES_SQL = """
SELECT c.oid, n.nspname || '.' || c.relname, c.relkind, c.relfilenode,
       pg_table_size(c.oid), greatest(c.reltuples, 0)::bigint,
       (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
          AND NOT a.attisdropped AND a.attgenerated = '' AND a.attidentity <> 'a'
        ORDER BY a.attnum LIMIT 1)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
"""


def _tag(database: str) -> str:
    return (
        f"{re.sub(r'[^a-z0-9]', '', database.lower())[:16]}"
        f"{zlib.crc32(database.encode()) & 0xFFFF:04x}"
    )


def prefix_for(database: str) -> str:
    return f"{PREFIX}{_tag(database)}_"


def _own(name: str) -> None:
    if not name.startswith(prefix_for(db.database())):
        raise AgentFailure(
            f"internal: {name!r} is not a rehearsal copy of {db.database()}", kind="internal"
        )


def leftovers(database: str | None = None) -> list[dict]:
    """Rehearsal copies (of ``database``, else of every database) no live rehearsal uses."""
    return [
        {"name": x["name"], "bytes": x["bytes"] or 0}
        for x in scratch.leftovers(prefix_for(database) if database else PREFIX)
        if not x["in_use"]
    ]


@handler("rehearse.leftovers")
def list_leftovers(_ctx, all_databases: bool = False) -> dict:
    return {"leftovers": leftovers(None if all_databases else db.database())}


@handler("rehearse.scratch")
def create(_ctx) -> dict:
    database = db.database()
    swept = []
    for item in leftovers(database):
        scratch.drop(item["name"])
        swept.append(item["name"])
    name = scratch.create(f"rehearse_{_tag(database)}")  # held until dropped or the agent ends
    return {"name": name, "swept": swept}


@handler("rehearse.drop")
def drop(_ctx, name: str) -> dict:
    _own(name)
    scratch.drop(name)
    return {"dropped": name}


class Probe(threading.Thread):
    """The application's view: per table a one-row read and a rolled-back one-row write, with
    a short lock_timeout, round and round. A stretch of attempts that could not get their
    lock (or waited long) is a blocked stretch; the longest per table and kind is kept."""

    def __init__(self, dbname: str, tables: list[tuple[str, str | None]]):
        super().__init__(daemon=True, name="dbops-probe")
        self.dbname = dbname
        self.tables = tables
        self.stopping = threading.Event()
        self.worst: dict[str, dict[str, float]] = {
            q: {"read": 0.0, "write": 0.0} for q, _ in tables
        }
        self.errors: dict[str, str] = {}
        self.rounds = 0

    def _queries(self, q: str, col: str | None) -> dict[str, sql.Composable]:
        schema, name = q.split(".", 1)
        t = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
        out = {"read": sql.SQL("SELECT 1 FROM {} LIMIT 1").format(t)}
        if col:
            c = sql.Identifier(col)
            out["write"] = sql.SQL(
                "UPDATE {t} SET {c} = {c} WHERE ctid = (SELECT ctid FROM {t} LIMIT 1)"
            ).format(t=t, c=c)
        return out

    def run(self) -> None:
        try:
            conn = db.connect(self.dbname, application_name="dbops:rehearse probe")
        except psycopg.Error as exc:
            self.errors["*"] = one_line(exc)
            return
        plans = {q: self._queries(q, col) for q, col in self.tables}
        since: dict[tuple[str, str], float] = {}
        with conn:
            conn.execute(f"SET lock_timeout = '{PROBE_TIMEOUT_MS}ms'")
            while not self.stopping.is_set():
                for q, queries in plans.items():
                    for kind, query in queries.items():
                        start = time.monotonic()
                        blocked = False
                        try:
                            if kind == "write":
                                with conn.transaction(force_rollback=True):
                                    conn.execute(query)
                            else:
                                conn.execute(query)
                        except psycopg.errors.LockNotAvailable:
                            blocked = True
                        except (
                            psycopg.Error
                        ) as exc:  # the table was dropped, retyped...: not a wait
                            self.errors[q] = one_line(exc)
                        end = time.monotonic()
                        key = (q, kind)
                        if blocked:
                            since.setdefault(key, start)
                            continue
                        began = since.pop(key, None)
                        took = end - (began if began is not None else start)
                        if began is not None or took > PROBE_TIMEOUT_MS / 1000:
                            self.worst[q][kind] = max(self.worst[q][kind], took)
                    if self.stopping.is_set():
                        break
                self.rounds += 1
                time.sleep(0.01)
        now = time.monotonic()
        for (q, kind), began in since.items():  # still blocked when the revision ended
            self.worst[q][kind] = max(self.worst[q][kind], now - began)

    def stop(self) -> dict:
        self.stopping.set()
        self.join(timeout=30)
        return {
            q: {"read_blocked_s": round(w["read"], 3), "write_blocked_s": round(w["write"], 3)}
            for q, w in self.worst.items()
        }


COPY_TABLES_SQL = """
SELECT format('%s %s', CASE c.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
              c.oid::regclass)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
"""


def prepare_copy(conn) -> None:
    """Before the run: autovacuum off on every table of the copy, then ANALYZE (a restore
    leaves no row estimates).

    A freshly restored copy is what autovacuum visits first (every table was just inserted),
    and its VACUUM/ANALYZE holds SHARE UPDATE EXCLUSIVE: a plain ANALYZE, and any lock the
    revision asks for, waits deadlock_timeout (1 s) before autovacuum is cancelled, and the
    launcher comes back for the next table. ``autovacuum_enabled = off`` (a reloption: not in
    the schema fingerprint; the copy is dropped after) keeps it off the copy for the whole
    rehearsal; as a superuser the session's deadlock_timeout is lowered so the cancel of a
    worker already at work takes milliseconds instead of a second."""
    try:
        conn.execute("SET deadlock_timeout = '10ms'")
        lowered = True
    except psycopg.errors.InsufficientPrivilege:
        lowered = False  # a worker already on a table costs 1 s once; none comes back
    for (target,) in conn.execute(COPY_TABLES_SQL).fetchall():
        try:
            conn.execute(f"ALTER {target} SET (autovacuum_enabled = off)")
        except psycopg.errors.InsufficientPrivilege:
            pass  # not the table's owner: ANALYZE skips it too
    conn.execute("ANALYZE")
    if lowered:
        conn.execute("RESET deadlock_timeout")


def _tables(conn) -> dict[int, dict]:
    return {
        r[0]: {
            "name": r[1],
            "kind": r[2],
            "relfilenode": r[3],
            "bytes": int(r[4] or 0),
            "rows": int(r[5] or 0),
            "first_column": r[6],
        }
        for r in conn.execute(TABLES_SQL).fetchall()
    }


def _names(conn) -> dict[int, str]:
    return {
        r[0]: r[1]
        for r in conn.execute(
            "SELECT c.oid, n.nspname || '.' || c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'm')"
        ).fetchall()
    }


@handler("rehearse.run")
def run(
    ctx,
    name: str,
    revisions: list,
    lock_timeout: str = "2s",
    statement_timeout: str = "0",
    probe: bool = True,
) -> dict:
    """Apply ``revisions`` in order on the copy ``name``; per revision the facts the host
    judges (dbops/ops/rehearse_verdict.py). Stops at the first that fails. Every connection
    is checked to reach the copy and the live database is read back (guard.scratch_step)."""
    _own(name)
    with guard.scratch_step(name, "rehearse"):
        return _run(ctx, name, revisions, lock_timeout, statement_timeout, probe)


def _run(ctx, name, revisions, lock_timeout, statement_timeout, probe) -> dict:
    from alembic import command

    from dbops.agent.migration import quiet

    app = f"dbops:rehearse {ctx.operator}"
    with db.connect(name, application_name=app) as sc:
        prepare_copy(sc)  # autovacuum off on the copy, then row estimates (ANALYZE)
        before_heads = db.version_rows(sc)
        before_fp = _fingerprint(sc)
    results = []
    for rev in revisions:
        with db.connect(name, application_name=app) as sc:
            base = _tables(sc)
        user = {oid: t for oid, t in base.items() if not version_table.is_it(t["name"])}
        probed = sorted(user.values(), key=lambda t: -t["bytes"])[:PROBE_TABLES]
        prober = Probe(name, [(t["name"], t["first_column"]) for t in probed]) if probe else None
        trace = StatementTrace(detail=True)
        trace.baseline = {oid: t["relfilenode"] for oid, t in base.items()}
        error = None
        saved_app = os.environ.get("PGAPPNAME")
        os.environ["PGAPPNAME"] = f"dbops:rehearse {rev}"[:63]
        if prober:
            prober.start()
        t0 = time.monotonic()
        try:
            with (
                trace,
                quiet(),
                db.pointed_at(name),
                db.pg_options(lock_timeout=lock_timeout, statement_timeout=statement_timeout),
            ):
                with guard.aimed_config(ctx, name) as cfg:
                    command.upgrade(cfg, rev)
        except Exception as exc:  # noqa: BLE001 - reported as the revision's failure
            error = one_line(exc)
        finally:
            seconds = time.monotonic() - t0
            trace.flush()
            blocked = prober.stop() if prober else {}
            if saved_app is None:
                os.environ.pop("PGAPPNAME", None)
            else:
                os.environ["PGAPPNAME"] = saved_app
        with db.connect(name, application_name=app) as sc:
            names = {**{oid: t["name"] for oid, t in base.items()}, **_names(sc)}
            heads = db.version_rows(sc)
        results.append(_facts(rev, seconds, error, trace, base, names, blocked, heads, prober))
        if error:
            break
    with db.connect(name, application_name=app) as sc:
        after_fp = _fingerprint(sc)
    return {
        "name": name,
        "before": before_heads,
        "revisions": results,
        "fingerprint_before": before_fp,
        "fingerprint_after": after_fp,
    }


def _fingerprint(conn) -> str:
    from dbops.agent.fingerprint import collect, digest

    return digest(collect(conn))


def _facts(rev, seconds, error, trace, base, names, blocked, heads, prober) -> dict:
    def rel(oid: int) -> str | None:
        return names.get(oid)

    statements = []
    for r in trace.records:
        statements.append(
            {
                **r,
                "locks": [
                    {"relation": rel(o), "mode": m, "new_table": o not in base}
                    for o, m in r["locks"]
                    if rel(o)
                ],
                "rewrites": [rel(o) for o in r["rewrites"] if rel(o)],
            }
        )
    locks = [
        {
            "relation": rel(h["oid"]),
            "mode": h["mode"],
            "held_s": h["seconds"],
            "statement": h["statement"],
            "new_table": h["oid"] not in base,
        }
        for h in trace.holds
        if rel(h["oid"]) and not version_table.is_it(rel(h["oid"]))
    ]
    rewrites = [
        {
            "relation": base[o]["name"],
            "bytes": base[o]["bytes"],
            "rows": base[o]["rows"],
            "statement": i,
        }
        for o, i in trace.rewrites.items()
        if o in base
    ]
    touched = {lk["relation"] for lk in locks if not lk["new_table"]}
    return {
        "revision": rev,
        "seconds": round(seconds, 3),
        "error": error,
        "heads": heads,
        "statements": statements,
        "locks": locks,
        "rewrites": rewrites,
        "max_transaction_rows": trace.max_tx_rows,
        "table_rows": {base[o]["name"]: base[o]["rows"] for o in base},
        "probe": {
            q: v
            for q, v in blocked.items()
            if q in touched or v["read_blocked_s"] or v["write_blocked_s"]
        },
        "probe_rounds": prober.rounds if prober else 0,
        "probe_errors": dict(prober.errors) if prober else {},
    }
