"""What a rollback's downgrades really do, found by RUNNING them on a schema-only scratch copy
of the live database (the statement trace of dbops/agent/statement_trace.py, as the touched set
of a migrate does) and comparing the catalog before and after every revision:

  the LOSS SET   what each downgrade destroys in the live database, each item with the
                 query that counts it there: a dropped table (rows), a dropped column or a
                 changed column type (non-NULL values), a TRUNCATE (rows), an UPDATE / DELETE
                 (the rows its WHERE selects; for UPDATE only those whose value changes),
                 writes by a statement dbops cannot read, a Python data migration (a SELECT on
                 a user table: on real rows it may write) -- the last two cannot be counted.
                 A DROP CONSTRAINT, an index, a rename, an ADD COLUMN lose nothing.
  the PUT-BACK   what the migrate's backup can give back after the downgrade without replacing
                 anything written since: tables the downgrade re-creates (their backup rows are
                 inserted where missing by primary key) and columns it re-adds or sets to a
                 constant (the backup's value goes back by primary key only where the live row
                 still holds what the downgrade left).

    downgrade.scratch   a new empty scratch database (the host loads the live schema into it)
    downgrade.trace     stamps it at the live revision, downgrades one revision at a time
    downgrade.drop      drops it
    downgrade.count     counts the loss set's items on the live database (read-only)
"""

from __future__ import annotations

import re

from psycopg import sql

from dbops.agent import db, guard, scratch, version_table
from dbops.agent.db import one_line
from dbops.agent.pglocks import READ_MODES
from dbops.agent.protocol import AgentFailure, handler
from dbops.agent.statement_trace import StatementTrace

PURPOSE = "downgrade"
SCRATCH_PREFIX = f"{scratch.PREFIX}{PURPOSE}_"
COUNT_TIMEOUT = "5s"

# user tables and their live columns (no catalogs, no extension members)
COLUMNS_SQL = """
SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname), n.nspname, c.relname,
       a.attnum, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
"""
PK_SQL = """
SELECT n.nspname || '.' || c.relname, array_agg(a.attname ORDER BY k.ord)
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE i.indisprimary GROUP BY 1
"""
CASCADES_SQL = """
SELECT pn.nspname || '.' || p.relname, cn.nspname || '.' || c.relname, k.conname, k.confdeltype
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
WHERE k.contype = 'f' AND k.confdeltype IN ('c', 'n', 'd')
"""


def snapshot(conn) -> dict:
    """{"tables": {oid: qualified name}, "columns": {oid: {attnum: (name, type)}},
    "printed": {name: quote_ident form}} of the user tables ``conn`` sees."""
    tables: dict[int, str] = {}
    columns: dict[int, dict[int, tuple[str, str]]] = {}
    printed: dict[str, str] = {}
    for oid, quoted, schema, rel, attnum, attname, typ in conn.execute(COLUMNS_SQL).fetchall():
        q = f"{schema}.{rel}"
        if version_table.is_it(q):
            continue
        tables[oid] = q
        printed[q] = quoted
        cols = columns.setdefault(oid, {})
        if attnum is not None:
            cols[attnum] = (attname, typ)
    return {"tables": tables, "columns": columns, "printed": printed}


def _ident(q: str) -> sql.Composable:
    schema, name = q.split(".", 1)
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


# --- reading a DML statement -----------------------------------------------------------
NAME = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
QNAME = rf"{NAME}(?:\s*\.\s*{NAME})?"
DML_HEAD = re.compile(
    rf"^\s*(?P<verb>UPDATE|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?|INSERT\s+INTO|MERGE\s+INTO)"
    rf"(?:\s+ONLY)?\s+(?P<table>{QNAME})",
    re.I,
)
LITERAL = re.compile(r"^(?:NULL|TRUE|FALSE|-?\d+(?:\.\d+)?|'(?:[^']|'')*')$", re.I)


def _unquote(part: str) -> str:
    part = part.strip()
    return part[1:-1].replace('""', '"') if part.startswith('"') else part.lower()


def _table_name(text: str) -> list[str]:
    return [_unquote(p) for p in re.findall(NAME, text)]


def top_level(text: str) -> list[tuple[int, str]] | None:
    """(position, upper-case word) of every keyword outside parentheses and quotes; None when
    the text has a dollar quote or unbalanced quotes/parentheses (dbops does not guess)."""
    if "$" in text:
        return None
    words, depth, i, n = [], 0, 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"":
            end = text.find(ch, i + 1)
            while end != -1 and end + 1 < n and text[end + 1] == ch:
                end = text.find(ch, end + 2)
            if end == -1:
                return None
            i = end + 1
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0 and (ch.isalpha() or ch == "_") and (i == 0 or not text[i - 1].isalnum()):
            m = re.match(r"[A-Za-z_]\w*", text[i:])
            words.append((i, m.group(0).upper()))
            i += len(m.group(0))
            continue
        i += 1
    return None if depth else words


def split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, start, quote = [], 0, 0, None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def read_dml(statement: str) -> dict | None:
    """{"verb", "table" (parts), "where" (text or None), "sets" ({column: expr}) or None when the
    SET list cannot be read, "countable" (False: FROM/USING/RETURNING/WITH or unreadable)}."""
    text = statement.strip().rstrip(";").strip()
    m = DML_HEAD.match(text)
    if not m:
        return None
    verb = m.group("verb").split()[0].upper()
    out = {"verb": verb, "table": _table_name(m.group("table")), "where": None, "sets": None}
    rest = text[m.end() :]
    words = top_level(rest)
    out["countable"] = words is not None and verb in ("UPDATE", "DELETE")
    if words is None or verb not in ("UPDATE", "DELETE"):
        return out
    kinds = [w for _, w in words]
    if any(w in ("FROM", "USING", "RETURNING", "WITH") for w in kinds) or "CURRENT" in kinds:
        out["countable"] = False
    where = next((pos for pos, w in words if w == "WHERE"), None)
    if where is not None:
        out["where"] = rest[where + len("WHERE") :].strip()
    if verb == "UPDATE":
        setpos = next((pos for pos, w in words if w == "SET"), None)
        head = rest[:setpos].strip() if setpos is not None else "?"
        if setpos is None or (head and not re.fullmatch(rf"(?:AS\s+)?{NAME}", head, re.I)):
            out["countable"] = False  # an alias is fine; anything else is not read
            return out
        out["alias"] = head
        body = rest[setpos + 3 : where if where is not None else len(rest)]
        sets = {}
        for part in split_top(body):
            col, eq, expr = part.partition("=")
            if not eq or not re.fullmatch(NAME, col.strip()):
                return out  # (a, b) = (...): counted by its WHERE, columns unknown
            sets[_unquote(col)] = expr.strip()
        out["sets"] = sets
    return out


def _count_query(table: str, dml: dict) -> str | None:
    """SELECT count(*) of the rows ``dml`` changes (UPDATE: only rows whose value differs)."""
    if not dml.get("countable"):
        return None
    cond = [f"({dml['where']})"] if dml["where"] else []
    if dml["verb"] == "UPDATE" and dml["sets"]:
        changes = [
            f"{sql.Identifier(c).as_string(None)} IS DISTINCT FROM ({e})"
            for c, e in dml["sets"].items()
            if e.upper() != "DEFAULT"
        ]
        if len(changes) == len(dml["sets"]):
            cond.append("(" + " OR ".join(changes) + ")")
    alias = f" {dml['alias']}" if dml.get("alias") else ""
    return f"SELECT count(*) FROM {_ident(table).as_string(None)}{alias}" + (
        f" WHERE {' AND '.join(cond)}" if cond else ""
    )


# --- the trace ------------------------------------------------------------------------
class DowngradeTrace(StatementTrace):
    """Per revision: the DML statements (text) and the tables whose rows were written or read
    (new RowExclusive / read locks) by its downgrade."""

    def __init__(self):
        super().__init__()
        self.revision = ""
        self.dml: dict[str, list[tuple[str, bool]]] = {}  # rev -> (statement, had parameters)
        self.wrote: dict[str, set[int]] = {}
        self.selects: dict[str, set[int]] = {}
        self._params = False

    def after_execute(self, conn, cursor, statement, parameters, context, executemany):
        self._params = bool(parameters)
        super().after_execute(conn, cursor, statement, parameters, context, executemany)

    def on_statement(self, statement, pairs, new) -> None:
        rev = self.revision
        if DML_HEAD.match(statement) and version_table.name() not in statement:
            self.dml.setdefault(rev, []).append((statement, self._params))
        self.wrote.setdefault(rev, set()).update(o for o, m in new if m == "RowExclusiveLock")
        if re.match(r"^\s*(SELECT|WITH)\b", statement, re.I):
            self.selects.setdefault(rev, set()).update(o for o, m in new if m in READ_MODES)


def _resolve_name(parts: list[str], names: set[str]) -> str | None:
    if len(parts) == 2:
        q = ".".join(parts)
        return q if q in names else None
    found = [q for q in names if q.split(".", 1)[1] == parts[0]]
    public = f"public.{parts[0]}"
    return public if public in found else (found[0] if len(found) == 1 else None)


def _item(kind: str, table: str, column: str | None = None, **more) -> dict:
    return {"kind": kind, "table": table, "column": column, "count_sql": None, "why": None, **more}


def effects_of(before: dict, after: dict, trace: DowngradeTrace, rev: str) -> list[dict]:
    """The loss items of one revision's downgrade: catalog differences + its statements."""
    items: list[dict] = []
    bt, at = before["tables"], after["tables"]
    for oid, q in sorted(bt.items(), key=lambda x: x[1]):
        if oid not in at:
            items.append(_item("drops table", q))
            continue
        bcols, acols = before["columns"][oid], after["columns"].get(oid, {})
        for attnum, (col, typ) in sorted(bcols.items()):  # a rename keeps the oid and attnum
            if attnum not in acols:
                items.append(_item("drops column", bt[oid], col))
            elif acols[attnum][1] != typ:
                items.append(_item("changes type of", bt[oid], col, to=acols[attnum][1]))
    names = set(bt.values())
    explained: set[str] = set()
    for statement, params in trace.dml.get(rev, []):
        dml = read_dml(statement)
        if dml is None:
            continue
        q = _resolve_name(dml["table"], names)
        if dml["verb"] == "INSERT":  # adds rows: loses none
            explained.add(q or "")
            continue
        if q is None:  # a table the downgrade itself created: no live rows to lose
            continue
        explained.add(q)
        short = " ".join(statement.split())[:120]
        if dml["verb"] == "TRUNCATE":
            items.append(_item("truncates", q))
        elif dml["verb"] == "MERGE":
            items.append(_item("writes", q, why=f"a MERGE ({short})"))
        else:
            it = _item(
                "updates" if dml["verb"] == "UPDATE" else "deletes from",
                q,
                sets=dml.get("sets"),
                statement=short,
            )
            if params:
                it["why"] = "a statement with bound parameters"
            else:
                it["count_sql"] = _count_query(q, dml)
                if it["count_sql"] is None:
                    it["why"] = f"its WHERE cannot be read ({short})"
            items.append(it)
    for oid in sorted(trace.wrote.get(rev, set())):
        q = bt.get(oid)
        if q and q not in explained:
            items.append(_item("writes", q, why="a statement dbops could not read"))
    for oid in sorted(trace.selects.get(rev, set())):
        q = bt.get(oid)
        if q and q not in explained:
            items.append(
                _item(
                    "reads",
                    q,
                    why="a data migration? on real rows it may write what an empty copy hides",
                )
            )
    return items


def putback_set(first: dict, last: dict, steps: list[dict], pks: dict) -> dict:
    """Tables the downgrades re-create and columns they re-add or set to a constant, on the
    final (target) schema: {table: {"insert": bool, "columns": {col: left or None}, "pk": [...],
    "printed": quoted name, "why": {...}}}. ``left`` None: the column's default."""
    out: dict[str, dict] = {}
    ft, lt = first["tables"], last["tables"]

    def entry(q: str) -> dict:
        return out.setdefault(
            q,
            {
                "insert": False,
                "columns": {},
                "pk": pks.get(q),
                "printed": last["printed"][q],
                "why": {},
            },
        )

    for oid, q in lt.items():
        if oid not in ft:
            entry(q)["insert"] = True
            entry(q)["why"][""] = "re-created by the downgrade"
            continue
        for attnum, (col, _) in last["columns"][oid].items():
            if attnum not in first["columns"][oid]:
                entry(q)["columns"][col] = None
                entry(q)["why"][col] = "re-added by the downgrade"
    final = {q: {c for c, _ in last["columns"][o].values()} for o, q in lt.items()}
    for step in steps:
        for it in step["effects"]:
            if it["kind"] != "updates" or not it.get("sets") or it["table"] not in final:
                continue
            for col, expr in it["sets"].items():
                if (
                    col in final[it["table"]]
                    and LITERAL.match(expr)
                    and not entry(it["table"])["insert"]
                ):
                    e = entry(it["table"])
                    if col not in e["columns"]:
                        e["columns"][col] = expr
                        e["why"][col] = f"set to {expr} by the downgrade of {step['revision']}"
    return {q: v for q, v in out.items() if v["insert"] or v["columns"]}


@handler("downgrade.scratch")
def scratch_create(_ctx) -> dict:
    return {"name": scratch.create(PURPOSE)}


@handler("downgrade.drop")
def scratch_drop(_ctx, name: str) -> dict:
    return scratch.drop_own(name, SCRATCH_PREFIX, "a downgrade-trace scratch")


@handler("downgrade.trace")
def trace(ctx, name: str, current: list, target: str | None) -> dict:
    """Downgrade the scratch copy ``name`` (schema loaded by the host) from ``current`` to
    ``target`` one revision at a time, as rollback runs them; per revision its loss items."""
    from alembic import command

    from dbops.agent.migration import quiet

    if not name.startswith(SCRATCH_PREFIX):
        raise AgentFailure(f"internal: {name!r} is not a downgrade-trace scratch", kind="internal")
    script = ctx.script()
    revs = list(script.iterate_revisions(current[0], target or "base"))
    with db.connect(name, application_name=f"dbops:downgrade-trace {ctx.operator}") as sc:
        version_table.set_rows(sc, [current[0]])
        first = snapshot(sc)
    tracer = DowngradeTrace()
    steps, before, error = [], first, None
    # Guarded: an env.py that does not follow dbops' target is stopped before its first
    # statement (else these downgrades would run on the live database), and the live
    # database is read back unchanged afterwards.
    with guard.scratch_step(name, "the downgrade trace of a rollback plan"):
        try:
            with tracer, quiet(), db.pointed_at(name):
                for rev in revs:
                    tracer.revision = rev.revision
                    with guard.aimed_config(ctx, name) as cfg:
                        command.downgrade(cfg, rev.down_revision or "base")
                    with db.connect(name, application_name="dbops:downgrade-trace") as sc:
                        after = snapshot(sc)
                    steps.append(
                        {
                            "revision": rev.revision,
                            "effects": effects_of(before, after, tracer, rev.revision),
                        }
                    )
                    before = after
        except Exception as exc:  # noqa: BLE001 - a downgrade that needs data to run
            error = (
                f"the downgrade of {tracer.revision} failed on a schema-only copy: {one_line(exc)}"
            )
    if error is not None:
        return {"steps": steps, "error": error, "putback": {}}
    with db.connect(name, application_name="dbops:downgrade-trace") as sc:
        pks = {q: list(cols) for q, cols in sc.execute(PK_SQL).fetchall()}
    cascades = ctx.conn.execute(CASCADES_SQL).fetchall()
    for step in steps:  # a DELETE / TRUNCATE cascades over ON DELETE CASCADE / SET NULL FKs
        for it in list(step["effects"]):
            if it["kind"] in ("deletes from", "truncates"):
                for parent, child, con, _ in cascades:
                    if parent == it["table"]:
                        step["effects"].append(
                            _item("deletes from", child, why=f"cascades from {parent} ({con})")
                        )
    return {
        "steps": steps,
        "error": None,
        "putback": putback_set(first, before, steps, pks),
        "statements": tracer.statements,
    }


# --- counting on the live database ----------------------------------------------------
def count_item(conn, it: dict) -> int | None:
    """The rows or non-NULL values ``it`` would lose in the live database; None when they cannot
    be counted (no such table or column yet, a lock held elsewhere, too slow, unreadable)."""
    if it.get("why"):
        return None
    live = it["table"]  # its name before this step (renamed by an earlier one: not counted)
    if it["kind"] in ("drops column", "changes type of"):
        q = sql.SQL("SELECT count(*) FROM {} WHERE {} IS NOT NULL").format(
            _ident(live), sql.Identifier(it["column"])
        )
    elif it["kind"] in ("drops table", "truncates"):
        q = sql.SQL("SELECT count(*) FROM {}").format(_ident(live))
    elif it.get("count_sql"):
        q = sql.SQL(it["count_sql"])
    else:
        return None
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true), "
                "set_config('lock_timeout', '2s', true)",
                [COUNT_TIMEOUT],
            )
            return int(conn.execute(q).fetchone()[0])
    except Exception:  # noqa: BLE001 - "cannot count" is an answer: the plan keeps refusing
        return None


@handler("downgrade.count")
def count(ctx, steps: list) -> dict:
    """Each step's items counted on the live database, in the order the downgrades run: an item
    on a table an earlier downgrade writes or re-creates cannot be counted from today's rows."""
    dirty: set[str] = set()
    out = []
    for step in steps:
        counted = []
        for it in step["effects"]:
            n = None if it["table"] in dirty else count_item(ctx.conn, it)
            why = it.get("why") or (
                "an earlier step changes it first" if it["table"] in dirty else "cannot count"
            )
            counted.append({**it, "count": n, "why": None if n is not None else why})
        for it in step["effects"]:
            if it["kind"] not in ("drops column", "changes type of", "reads"):
                dirty.add(it["table"])
        out.append({"revision": step["revision"], "effects": counted})
    return {"steps": out}
