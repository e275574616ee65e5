"""The touched set of a migration: every relation the pending revisions write, alter, lock
for writing or drop, found by RUNNING them on a schema-only scratch copy of the live
database and reading, after every statement and before every commit, the relation locks
the migration's own backend holds (pg_locks). RowExclusive or stronger = touched; a
table a revision only READS counts too (a data migration in Python reads the empty copy,
finds no rows and so issues no UPDATE: what it reads is what it may write on real data).

The set is then closed, conservatively, over
  - foreign keys: a table whose FK references a touched table with ON DELETE/UPDATE
    CASCADE / SET NULL / SET DEFAULT (a write to the parent writes it),
  - partitions and inheritance children of a touched table,
  - triggers on touched tables: every table named in the trigger function's body (and in
    the bodies of user functions it names); a trigger function in another language than
    SQL / PL/pgSQL, or one that runs dynamic SQL (EXECUTE), makes the answer "full",
  - sequences owned by, or used in column defaults of, touched tables.
When in doubt (the migration fails on the empty copy, a trigger cannot be read) the answer
is full, with the reason.

    touched.scratch   a new empty scratch database (the host loads the schema into it)
    touched.trace     stamps it at the live revision, runs the revisions, returns the set
    touched.drop      drops the scratch database
Putting a touched backup's tables back: dbops/agent/putback.py.
"""

from __future__ import annotations

import re

from psycopg import sql

from dbops.agent import db, guard, scratch, version_table
from dbops.agent.db import one_line
from dbops.agent.lock import maintenance_db, require_lock
from dbops.agent.pglocks import READ_MODES, WRITE_MODES
from dbops.agent.protocol import AgentFailure, handler
from dbops.agent.statement_trace import StatementTrace

SCRATCH_PREFIX = "dbops_scratch_touched_"

# user relations: tables, partitioned tables, sequences (not catalogs, not extension members)
RELATIONS_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
"""


def qname(schema: str, name: str) -> str:
    return f"{schema}.{name}"


def relations(conn) -> dict[int, tuple[str, str]]:
    """oid -> (qualified name, relkind)."""
    return {r[0]: (qname(r[1], r[2]), r[3]) for r in conn.execute(RELATIONS_SQL).fetchall()}


DESTRUCTIVE = re.compile(r"\b(DROP|TRUNCATE)\b|\bALTER\s+COLUMN\b.*\bTYPE\b", re.I | re.S)
DML = re.compile(r"^\s*(WITH\b.*?\)\s*)?(UPDATE|DELETE|INSERT|MERGE)\b", re.I | re.S)
# the table a statement names: UPDATE t / DELETE FROM t / INSERT INTO t / ALTER TABLE t /
# DROP TABLE t
TARGET = re.compile(
    r"\b(?:UPDATE(?:\s+ONLY)?|DELETE\s+FROM(?:\s+ONLY)?|INSERT\s+INTO|MERGE\s+INTO|"
    r"ALTER\s+TABLE(?:\s+IF\s+EXISTS)?(?:\s+ONLY)?|DROP\s+TABLE(?:\s+IF\s+EXISTS)?|"
    r"TRUNCATE(?:\s+TABLE)?(?:\s+ONLY)?)\s+((?:\"[^\"]+\"|\w+)(?:\.(?:\"[^\"]+\"|\w+))?)",
    re.I,
)


class LockTrace(StatementTrace):
    """The touched set's view of the statement trace (dbops/agent/statement_trace.py): per
    revision (``revision`` is set by the caller) which relations its statements wrote rows of
    (a new RowExclusive lock, or an UPDATE/DELETE/INSERT naming them) and which they may have
    destroyed data of (DROP, TRUNCATE, ALTER COLUMN … TYPE locking or naming them)."""

    def __init__(self):
        super().__init__()
        self.revision = ""
        self.wrote: dict[str, set] = {}  # revision -> oids or names its DML wrote
        self.destroyed: dict[str, set] = {}  # revision -> oids or names its DDL destroyed
        self.read: dict[str, set] = {}  # revision -> oids it read (an ORM loop on no rows)

    def on_statement(
        self, statement: str, pairs: set[tuple[int, str]], new: set[tuple[int, str]]
    ) -> None:
        wrote = self.wrote.setdefault(self.revision, set())
        wrote.update(oid for oid, mode in new if mode == "RowExclusiveLock")
        self.read.setdefault(self.revision, set()).update(
            oid for oid, mode in new if mode in READ_MODES
        )
        named = {m.group(1) for m in TARGET.finditer(statement)}
        if DML.match(statement):
            wrote.update(named)
        if DESTRUCTIVE.search(statement):
            self.destroyed.setdefault(self.revision, set()).update({oid for oid, _ in new} | named)


def _resolve(items: set, before: dict[int, tuple[str, str]], names: dict[str, str]) -> set[str]:
    """oids (from pg_locks) and names (from statement text) -> qualified names of live tables."""
    out = set()
    by_bare: dict[str, list[str]] = {}
    for q in names:
        by_bare.setdefault(q.split(".", 1)[1].lower(), []).append(q)
    for item in items:
        if isinstance(item, int):
            if item in before and before[item][0] in names:
                out.add(before[item][0])
        else:
            parts = [x.strip('"') if x.startswith('"') else x.lower() for x in item.split(".")]
            if len(parts) == 2 and ".".join(parts) in names:
                out.add(".".join(parts))
            elif len(parts) == 1:
                out.update(by_bare.get(parts[0].lower(), []))  # every schema: conservative
    return out


def closure(conn, touched: dict[str, str], names: dict[str, str]) -> str | None:
    """Grow ``touched`` (name -> why) in place over FKs, partitions, triggers and sequences,
    on the schema ``conn`` points at. Returns a reason to fall back to a full backup, or None."""
    fks = conn.execute("""
        SELECT pn.nspname || '.' || p.relname, cn.nspname || '.' || c.relname, k.conname,
               k.confdeltype, k.confupdtype
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace cn ON cn.oid = c.relnamespace
        JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
        WHERE k.contype = 'f'""").fetchall()
    children = conn.execute(
        """
        SELECT pn.nspname || '.' || p.relname, cn.nspname || '.' || c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_namespace cn ON cn.oid = c.relnamespace
        JOIN pg_class p ON p.oid = i.inhparent """
        """JOIN pg_namespace pn ON pn.oid = p.relnamespace"""
    ).fetchall()
    triggers = conn.execute("""
        SELECT n.nspname || '.' || c.relname, t.tgname, l.lanname, f.prosrc,
               fn.nspname || '.' || f.proname
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_proc f ON f.oid = t.tgfoid
        JOIN pg_namespace fn ON fn.oid = f.pronamespace JOIN pg_language l ON l.oid = f.prolang
        WHERE NOT t.tgisinternal""").fetchall()
    functions = {
        r[0]: (r[1], r[2])
        for r in conn.execute("""
        SELECT p.proname, l.lanname, p.prosrc FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_%'""").fetchall()
    }
    seqs = conn.execute(
        """
        SELECT tn.nspname || '.' || t.relname, sn.nspname || '.' || s.relname
        FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
        JOIN pg_namespace sn ON sn.oid = s.relnamespace
        JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.deptype IN ('a', 'i')
        UNION
        SELECT tn.nspname || '.' || t.relname, sn.nspname || '.' || s.relname
        FROM pg_attrdef ad JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass
             AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass
        JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
        JOIN pg_namespace sn ON sn.oid = s.relnamespace
        JOIN pg_class t ON t.oid = ad.adrelid """
        """JOIN pg_namespace tn ON tn.oid = t.relnamespace"""
    ).fetchall()
    by_bare: dict[str, list[str]] = {}
    for q in names:
        by_bare.setdefault(q.split(".", 1)[1].lower(), []).append(q)

    def named_in(body: str, depth: int = 0, seen: set | None = None) -> tuple[set[str], str | None]:
        seen = seen if seen is not None else set()
        found: set[str] = set()
        if re.search(r"\bEXECUTE\b", body, re.I):
            return found, "runs dynamic SQL (EXECUTE)"
        for word in set(re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", body)):
            low = word.lower()
            found.update(by_bare.get(low, []))
            if low in functions and low not in seen and depth < 5:
                seen.add(low)
                lang, src = functions[low]
                if lang not in ("plpgsql", "sql"):
                    return found, f"calls {word}, a {lang} function"
                more, why = named_in(src, depth + 1, seen)
                found |= more
                if why:
                    return found, why
        return found, None

    changed = True
    while changed:
        changed = False

        def add(name: str, why: str) -> None:
            nonlocal changed
            if name not in touched and name in names:
                touched[name] = why
                changed = True

        for parent, child, con, on_del, on_upd in fks:
            if parent in touched and (on_del in "cnd" or on_upd in "cnd"):
                add(child, f"cascades from {parent} ({con})")
        for parent, child in children:
            if parent in touched:
                add(child, f"partition/child of {parent}")
        for table, tg, lang, src, fname in triggers:
            if table not in touched:
                continue
            if lang not in ("plpgsql", "sql"):
                return (
                    f"trigger {tg} on {table} runs {fname}, written in {lang}: "
                    "what it writes cannot be read"
                )
            found, why = named_in(src)
            if why:
                return f"trigger {tg} on {table} ({fname}) {why}: what it writes cannot be read"
            for name in sorted(found):
                add(name, f"named by trigger {tg} on {table} ({fname})")
        for table, seq in seqs:
            if table in touched:
                add(seq, f"sequence of {table}")
    return None


def _scratch_purpose() -> str:
    """touched_<db>_<crc>: per database, so that under THIS database's lock the leftovers of a
    killed run (and only those) can be swept."""
    import zlib

    database = db.database()
    return (
        f"touched_{re.sub(r'[^a-z0-9]', '', database.lower())[:16]}"
        f"{zlib.crc32(database.encode()) & 0xFFFF:04x}"
    )


@handler("touched.scratch")
def scratch_create(ctx) -> dict:
    require_lock(ctx)
    prefix = f"dbops_scratch_{_scratch_purpose()}_"
    swept = []
    with db.connect(maintenance_db(), application_name=f"dbops:touched {ctx.operator}") as m:
        for (name,) in m.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix]
        ).fetchall():
            scratch.drop(name)  # we hold the lock: a leftover of a killed run
            swept.append(name)
    return {"name": scratch.create(_scratch_purpose()), "swept": swept}


@handler("touched.drop")
def scratch_drop(_ctx, name: str) -> dict:
    return scratch.drop_own(name, SCRATCH_PREFIX, "a touched-set scratch")


@handler("touched.trace")
def trace(ctx, name: str, to: str, current: list) -> dict:
    """Run the revisions up to ``to`` on the scratch copy ``name`` (schema loaded by the host)
    and return {"relations": {name: why}, "full": reason|None, "excluded": [...], ...}."""
    from alembic import command

    from dbops.agent.migration import quiet

    require_lock(ctx)
    if not name.startswith(SCRATCH_PREFIX):
        raise AgentFailure(f"internal: {name!r} is not a touched-set scratch", kind="internal")
    live_names = {q: k for q, k in relations(ctx.conn).values()}
    with db.connect(name, application_name=f"dbops:touched {ctx.operator}") as sc:
        if current:  # the schema copy has the version table but not its rows
            version_table.set_rows(sc, current)
        before = relations(sc)
    from dbops.agent.plan import _downgrade_body

    script = ctx.script()
    lower = current[0] if len(current) == 1 else (tuple(current) if current else "base")
    try:
        pending = list(reversed(list(script.iterate_revisions(to, lower))))
    except Exception as exc:  # noqa: BLE001 - migrate's preflight reports it properly
        raise AgentFailure(
            f"cannot list the revisions up to {to}: {one_line(exc)}", kind="bad_target"
        ) from None
    tracer = LockTrace()
    full = None
    error = None
    with guard.scratch_step(name, "the touched-set run of migrate"):
        try:
            with tracer, quiet(), db.pointed_at(name):
                for rev in pending:  # one at a time, as migrate runs them: each its own transaction
                    tracer.revision = rev.revision
                    with guard.aimed_config(ctx, name) as cfg:
                        command.upgrade(cfg, rev.revision)
        except Exception as exc:  # noqa: BLE001 - a migration that needs data to run
            error = one_line(exc)
            full = (
                f"the migration failed on the schema-only copy ({error}): "
                f"cannot tell what it writes"
            )
    touched: dict[str, str] = {}
    for oid, modes in tracer.seen.items():
        if oid not in before:
            continue  # created by the migration itself, or a catalog: no data to keep
        q, kind = before[oid]
        if q not in live_names or version_table.is_it(q):
            continue
        if modes & WRITE_MODES:
            touched[q] = "locked " + "/".join(sorted(modes & WRITE_MODES)).replace("Lock", "")
        elif modes & READ_MODES:
            touched[q] = (
                "read by a revision (a data migration on an empty copy "
                "writes nothing it could show)"
            )
    # Lost by the upgrade and not given back by the downgrade: what a rollback puts back.
    lossy: dict[str, str] = {}
    for rev in pending:
        for q in _resolve(tracer.destroyed.get(rev.revision, set()), before, live_names):
            lossy.setdefault(q, f"{rev.revision} drops or rewrites (DROP/TRUNCATE/ALTER TYPE)")
        if _downgrade_body(rev)[0] == "empty":
            for q in _resolve(tracer.wrote.get(rev.revision, set()), before, live_names):
                lossy.setdefault(q, f"{rev.revision} writes rows and its downgrade is empty")
            for q in _resolve(tracer.read.get(rev.revision, set()), before, live_names):
                lossy.setdefault(
                    q, f"{rev.revision} reads it (a data migration?) and its downgrade is empty"
                )
    lossy = {q: w for q, w in lossy.items() if q in touched and not version_table.is_it(q)}
    if full is None:
        full = closure(ctx.conn, touched, live_names)
    if full is None:
        with db.connect(name, application_name=f"dbops:touched {ctx.operator}") as sc:
            after_names = {q: k for q, k in relations(sc).values()}
            full = closure(sc, touched, {**after_names, **live_names})
        touched = {q: w for q, w in touched.items() if q in live_names}
        if lossy:  # a cascade / trigger / partition / sequence of a lossy table is lossy too
            closure(ctx.conn, lossy, {q: k for q, k in live_names.items() if q in touched})
    tables = sorted(q for q in touched if live_names[q] in ("r", "p"))
    size = ctx.conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) FROM unnest(%s::text[]) t",
        [[_ident(q).as_string(ctx.conn) for q in tables]],
    ).fetchone()[0]
    sequences = sorted(q for q in touched if live_names[q] == "S")
    excluded = sorted(
        q
        for q, k in live_names.items()
        if k in ("r", "p") and q not in touched and not version_table.is_it(q)
    )  # the revision stays in the backup
    return {
        "relations": touched,
        "tables": tables,
        "sequences": sequences,
        "excluded_tables": excluded,
        "full": full,
        "statements": tracer.statements,
        "bytes": int(size),
        "error": error,
        "lossy": {q: lossy[q] for q in sorted(lossy)},
        "revisions": [r.revision for r in pending],
    }


def _ident(q: str) -> sql.Composable:
    schema, name = q.split(".", 1)
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
