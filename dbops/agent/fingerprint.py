"""A canonical, deterministic description of a schema read from pg_catalog. (Issue 5.)

``collect(conn)`` reads every user schema (not pg_catalog, information_schema, pg_toast,
temporary schemas, nor objects owned by an extension) and returns a plain dict:

- tables:      name -> {kind, columns: name -> {type, nullable, default, identity, generated,
               collation}}  (columns keyed by name: their attnum order is irrelevant)
- constraints: "table.name" -> {type, definition, validated}
               (primary/unique/foreign/check/exclude)
- indexes:     name -> {table, definition, unique, valid}       (indexes not backing a constraint)
- sequences:   name -> {type, start, increment, min, max, cache, cycle, owned_by}
- enums:       name -> [labels in sort order]
- views:       name -> {kind, definition}                       (views and materialized views)
- triggers:    "table.name" -> definition                       (user triggers)

Names are schema-qualified only outside ``public``. Everything is read with
``search_path = pg_catalog`` so deparsed expressions are qualified the same way whatever the
role's settings; no OID, owner, grant, tablespace, statistics or database name is included.
The version table (``alembic_version``, or DBOPS_VERSION_TABLE) is left out. ``digest()``
hashes the canonical JSON.

``diff(expected, live)`` reads as sentences about the live database ("column users.bio
missing", "index idx_comments_approved is INVALID").

This module imports only the standard library at import time, so the host may use
``digest``/``diff``/``items`` on fingerprints it received from the agent.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from dbops.agent import version_table

FORMAT = 1

_SCHEMAS = """n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'"""
_NOT_EXT = """NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = %s::regclass
  AND d.objid = {oid} AND d.deptype = 'e')"""


def _q(schema: str, name: str) -> str:
    return name if schema == "public" else f"{schema}.{name}"


TABLES_SQL = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'f') AND {_SCHEMAS} AND NOT c.relispartition
  AND {_NOT_EXT.format(oid="c.oid")}
"""

COLUMNS_SQL = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated,
       CASE WHEN a.attcollation <> t.typcollation THEN co.collname END
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
"""

CONSTRAINTS_SQL = """
SELECT con.conrelid, con.conname, con.contype, pg_get_constraintdef(con.oid), con.convalidated
FROM pg_constraint con
WHERE con.conrelid = ANY(%s) AND con.contype IN ('p', 'u', 'f', 'c', 'x')
"""

INDEXES_SQL = """
SELECT i.indrelid, n.nspname, ic.relname, pg_get_indexdef(i.indexrelid), i.indisunique,
       i.indisvalid AND i.indisready
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE i.indrelid = ANY(%s)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid
                  AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x'))
"""

SEQUENCES_SQL = f"""
SELECT n.nspname, c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
       s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
       (SELECT tn.nspname || '|' || tc.relname || '|' || ta.attname
          FROM pg_depend d JOIN pg_class tc ON tc.oid = d.refobjid
          JOIN pg_namespace tn ON tn.oid = tc.relnamespace
          JOIN pg_attribute ta ON ta.attrelid = d.refobjid AND ta.attnum = d.refobjsubid
         WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
           AND d.deptype IN ('a', 'i') LIMIT 1)
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {_SCHEMAS} AND {_NOT_EXT.format(oid="c.oid")}
"""

ENUMS_SQL = f"""
SELECT n.nspname, t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
JOIN pg_enum e ON e.enumtypid = t.oid
WHERE {_SCHEMAS} AND {_NOT_EXT.format(oid="t.oid")}
GROUP BY n.nspname, t.typname
"""

VIEWS_SQL = f"""
SELECT n.nspname, c.relname, c.relkind, pg_get_viewdef(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND {_SCHEMAS} AND {_NOT_EXT.format(oid="c.oid")}
"""

TRIGGERS_SQL = """
SELECT tg.tgrelid, tg.tgname, pg_get_triggerdef(tg.oid)
FROM pg_trigger tg WHERE tg.tgrelid = ANY(%s) AND NOT tg.tgisinternal
"""

CONTYPES = {"p": "primary key", "u": "unique", "f": "foreign key", "c": "check", "x": "exclude"}
TABLE_KINDS = {"r": "table", "p": "partitioned table", "f": "foreign table"}


def _ws(text: str | None) -> str | None:
    return None if text is None else re.sub(r"\s+", " ", text).strip()


def on_purpose(schema: str, table: str) -> bool:
    """A table DBOPS_MODELS_IGNORE names (``table:NAME``, or a bare NAME; ``*`` globs; NAME or
    SCHEMA.NAME): the database has it on purpose, outside the migrations, so neither the
    expected schemas nor the live one count it (with its columns, indexes and constraints)."""
    from fnmatch import fnmatchcase

    names = (table, f"{schema}.{table}")
    for entry in os.environ.get("DBOPS_MODELS_IGNORE", "").split(","):
        kind, sep, pattern = entry.strip().partition(":")
        kind, pattern = (kind.strip(), pattern.strip()) if sep else (None, entry.strip())
        if pattern and kind in (None, "table") and any(fnmatchcase(n, pattern) for n in names):
            return True
    return False


def collect(conn) -> dict:
    """The fingerprint of the database ``conn`` is connected to (a psycopg connection)."""
    with conn.transaction():
        conn.execute("SET LOCAL search_path = pg_catalog")
        conn.execute("SET LOCAL lock_timeout = '2s'")  # never wait in a lock queue
        tables: dict[str, dict] = {}
        names: dict[int, str] = {}
        for oid, schema, name, kind in conn.execute(TABLES_SQL, ("pg_class",)).fetchall():
            if version_table.is_it(f"{schema}.{name}") or on_purpose(schema, name):
                continue
            q = _q(schema, name)
            names[oid] = q
            tables[q] = {"kind": TABLE_KINDS[kind], "columns": {}}
        oids = list(names)
        for relid, col, typ, notnull, default, ident, gen, coll in conn.execute(
            COLUMNS_SQL, (oids,)
        ).fetchall():
            tables[names[relid]]["columns"][col] = {
                "type": typ,
                "nullable": not notnull,
                "default": _ws(default),
                "identity": {"a": "always", "d": "by default"}.get(ident or ""),
                "generated": "stored" if gen == "s" else None,
                "collation": coll,
            }
        constraints = {}
        for relid, name, ctype, definition, validated in conn.execute(
            CONSTRAINTS_SQL, (oids,)
        ).fetchall():
            constraints[f"{names[relid]}.{name}"] = {
                "table": names[relid],
                "type": CONTYPES[ctype],
                "definition": _ws(definition),
                "validated": bool(validated),
            }
        indexes = {}
        for relid, schema, name, definition, unique, valid in conn.execute(
            INDEXES_SQL, (oids,)
        ).fetchall():
            indexes[_q(schema, name)] = {
                "table": names[relid],
                "definition": _ws(definition),
                "unique": bool(unique),
                "valid": bool(valid),
            }
        sequences = {}
        for schema, name, typ, start, inc, smin, smax, cache, cycle, owner in conn.execute(
            SEQUENCES_SQL, ("pg_class",)
        ).fetchall():
            owned = None
            if owner:
                ts, tn, col = owner.split("|", 2)
                owned = f"{_q(ts, tn)}.{col}"
            sequences[_q(schema, name)] = {
                "type": typ,
                "start": int(start),
                "increment": int(inc),
                "min": int(smin),
                "max": int(smax),
                "cache": int(cache),
                "cycle": bool(cycle),
                "owned_by": owned,
            }
        enums = {
            _q(s, n): list(labels)
            for s, n, labels in conn.execute(ENUMS_SQL, ("pg_type",)).fetchall()
        }
        views = {
            _q(s, n): {"kind": "materialized view" if k == "m" else "view", "definition": _ws(d)}
            for s, n, k, d in conn.execute(VIEWS_SQL, ("pg_class",)).fetchall()
        }
        triggers = {
            f"{names[relid]}.{name}": _ws(d)
            for relid, name, d in conn.execute(TRIGGERS_SQL, (oids,)).fetchall()
        }
    return {
        "format": FORMAT,
        "tables": tables,
        "constraints": constraints,
        "indexes": indexes,
        "sequences": sequences,
        "enums": enums,
        "views": views,
        "triggers": triggers,
    }


def canonical(fp: dict) -> str:
    return json.dumps(fp, sort_keys=True, separators=(",", ":"), default=str)


def digest(fp: dict) -> str:
    return hashlib.sha256(canonical(fp).encode()).hexdigest()


def summary(fp: dict) -> str:
    t = fp.get("tables", {})
    cols = sum(len(v["columns"]) for v in t.values())
    return (
        f"{len(t)} tables, {cols} columns, {len(fp.get('constraints', {}))} constraints, "
        f"{len(fp.get('indexes', {}))} indexes"
    )


def schema_of(name: str) -> str:
    return name.split(".", 1)[0] if "." in name else "public"


def restrict(fp: dict, schemas: list[str]) -> dict:
    """Only the objects in ``schemas`` (names are qualified outside public)."""
    keep = set(schemas)
    out = dict(fp)
    out["tables"] = {k: v for k, v in fp.get("tables", {}).items() if schema_of(k) in keep}
    for section in ("constraints", "triggers"):  # "table.name": the table decides
        out[section] = {
            k: v for k, v in fp.get(section, {}).items() if schema_of(k.rsplit(".", 1)[0]) in keep
        }
    for section in ("indexes", "sequences", "enums", "views"):
        out[section] = {k: v for k, v in fp.get(section, {}).items() if schema_of(k) in keep}
    return out


# --- comparing -----------------------------------------------------------------
SECTIONS = ("tables", "constraints", "indexes", "sequences", "enums", "views", "triggers")
KIND = {
    "constraints": "constraint",
    "indexes": "index",
    "sequences": "sequence",
    "enums": "enum",
    "views": "view",
    "triggers": "trigger",
}


def items(fp: dict) -> dict[tuple[str, ...], str]:
    """Flat (kind, name[, column]) -> canonical JSON of the thing: for set arithmetic."""
    out: dict[tuple[str, ...], str] = {}
    for tname, t in fp.get("tables", {}).items():
        out[("table", tname)] = t["kind"]
        for cname, c in t["columns"].items():
            out[("column", tname, cname)] = canonical(c)
    for section in SECTIONS[1:]:
        for name, value in fp.get(section, {}).items():
            out[(KIND[section], name)] = canonical(value)
    return out


def _table_of(kind: str, name: str, value: dict | str | None) -> str | None:
    if isinstance(value, dict):
        if kind in ("constraint", "index"):
            return value.get("table")
        if kind == "sequence" and value.get("owned_by"):
            return value["owned_by"].rsplit(".", 1)[0]
    if kind == "trigger":
        return name.rsplit(".", 1)[0]
    return None


def _column_changes(name: str, exp: dict, live: dict) -> list[str]:
    out = []
    if exp["type"] != live["type"]:
        out.append(f"column {name} is {live['type']}, expected {exp['type']}")
    if exp["nullable"] != live["nullable"]:
        out.append(
            f"column {name} is {'nullable' if live['nullable'] else 'NOT NULL'}, "
            f"expected {'nullable' if exp['nullable'] else 'NOT NULL'}"
        )
    if exp["default"] != live["default"]:
        out.append(
            f"column {name} default is {live['default'] or 'none'}, "
            f"expected {exp['default'] or 'none'}"
        )
    for key in ("identity", "generated", "collation"):
        if exp.get(key) != live.get(key):
            out.append(
                f"column {name} {key} is {live.get(key) or 'none'}, "
                f"expected {exp.get(key) or 'none'}"
            )
    return out


def diff(expected: dict, live: dict) -> list[str]:
    """What is different in ``live`` compared with ``expected``, as sentences (stable order).
    Objects of a table that is missing (or unexpected) as a whole are not listed again."""
    out: list[str] = []
    et, lt = expected.get("tables", {}), live.get("tables", {})
    missing_t = sorted(set(et) - set(lt))
    extra_t = sorted(set(lt) - set(et))
    whole = set(missing_t) | set(extra_t)
    out += [f"table {t} missing" for t in missing_t]
    out += [f"table {t} unexpected (not created by this revision)" for t in extra_t]
    for t in sorted(set(et) & set(lt)):
        if et[t]["kind"] != lt[t]["kind"]:
            out.append(f"{t} is a {lt[t]['kind']}, expected a {et[t]['kind']}")
        ec, lc = et[t]["columns"], lt[t]["columns"]
        out += [f"column {t}.{c} missing" for c in sorted(set(ec) - set(lc))]
        out += [f"column {t}.{c} unexpected" for c in sorted(set(lc) - set(ec))]
        for c in sorted(set(ec) & set(lc)):
            out += _column_changes(f"{t}.{c}", ec[c], lc[c])
    for section in SECTIONS[1:]:
        kind = KIND[section]
        e, v = expected.get(section, {}), live.get(section, {})
        for name in sorted(set(e) | set(v)):
            ev, lv = e.get(name), v.get(name)
            if ev == lv:
                continue
            if _table_of(kind, name, ev if ev is not None else lv) in whole:
                continue
            if lv is None:
                out.append(f"{kind} {name} missing")
            elif ev is None:
                extra = " and INVALID" if kind == "index" and not lv.get("valid", True) else ""
                out.append(f"{kind} {name} unexpected{extra}")
            elif (
                kind == "index" and ev["valid"] and not lv["valid"] and {**ev, "valid": False} == lv
            ):
                out.append(f"index {name} is INVALID")
            elif (
                kind == "constraint"
                and ev["validated"]
                and not lv["validated"]
                and {**ev, "validated": False} == lv
            ):
                out.append(f"constraint {name} is NOT VALID")
            elif kind == "enum":
                out.append(f"enum {name} has labels {lv}, expected {ev}")
            elif isinstance(ev, dict):
                keys = [k for k in sorted(set(ev) | set(lv)) if ev.get(k) != lv.get(k)]
                what = "; ".join(f"{k} {lv.get(k)!r}, expected {ev.get(k)!r}" for k in keys)
                out.append(f"{kind} {name} differs: {what}")
            else:
                out.append(f"{kind} {name} differs: {lv!r}, expected {ev!r}")
    return out
