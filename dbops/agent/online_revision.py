"""Autogenerate writes the online operations (dbops/online.py) instead of the plain ones, for
the tables that are big on the live database (or all of them when forced).

An alembic ``process_revision_directives`` hook built on alembic's own
``alembic.autogenerate.rewriter.Rewriter``; the rewritten operations are rendered into the
revision file through ``alembic.autogenerate.renderers.dispatch_for`` as ``op.<name>(...)``
calls, and the file gets ``import dbops.online  # noqa: F401`` (which registers them when the
revision runs). Used by ``invoke revision`` (the agent passes it to ``command.revision``) and
by a project's env.py (through ``dbops.online_autogen``, docs/online.md).

    op.create_index          -> op.create_index_online     (CONCURRENTLY)
    op.drop_index            -> op.drop_index_online       (CONCURRENTLY)
    op.create_foreign_key    -> op.add_foreign_key_online  (NOT VALID, then VALIDATE)
    op.create_check_constraint -> op.add_check_online      (NOT VALID, then VALIDATE)
    op.create_unique_constraint -> op.add_unique_online    (unique index CONCURRENTLY, USING INDEX)
    op.create_primary_key    -> op.add_unique_online(primary_key=True)
    op.drop_constraint       -> op.drop_constraint_online  (under lock_timeout, retried)
    op.alter_column(nullable=False) -> op.set_not_null_online (plus the rest of the alter_column)
    op.add_column(server_default=<volatile>) -> op.add_column_online (batched backfill)

A table is big when it has at least ``min_rows`` rows: pg_class.reltuples, or (never analyzed)
a count of at most ``min_rows`` rows. A table the revision itself creates is never rewritten.
Only the standard library, alembic and SQLAlchemy (it runs inside env.py).
"""

from __future__ import annotations

import copy
import os
import re
import sys

import sqlalchemy as sa
from alembic.autogenerate import renderers
from alembic.autogenerate.rewriter import Rewriter
from alembic.operations import MigrateOperation, ops

MIN_ROWS = 50_000  # DBOPS_ONLINE_MIN_ROWS: below it the plain form blocks for well under 0.2 s
IMPORT = "import dbops.online  # noqa: F401 - registers op.*_online"
FUNCTION = re.compile(r"([A-Za-z_][\w$]*)\s*\(")
DONE = "_dbops_online_done"  # set on a MigrationScript once rewritten (env.py + command hook)


def _say(msg: str) -> None:
    print(f"dbops.online: {msg}", file=sys.stderr, flush=True)


class OnlineCall(MigrateOperation):
    """An ``op.<name>(*args, **kw)`` line of the revision file; only rendered, never run here
    (the revision runs the registered operation of dbops.online)."""

    def __init__(self, name: str, *args, **kw):
        self.name, self.args = name, args
        self.kw = {k: v for k, v in kw.items() if v is not None}


def _literal(value, autogen_context) -> str:
    """A Python literal for an argument: a Column is rendered as alembic renders it."""
    if isinstance(value, sa.Column):
        from alembic.autogenerate.render import _render_column

        return _render_column(value, autogen_context)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v, autogen_context) for v in value) + "]"
    return repr(value)


@renderers.dispatch_for(OnlineCall)
def _render_online_call(autogen_context, call: OnlineCall) -> str:
    autogen_context.imports.add(IMPORT)
    args = [_literal(a, autogen_context) for a in call.args]
    args += [f"{k}={_literal(v, autogen_context)}" for k, v in call.kw.items()]
    return f"op.{call.name}({', '.join(args)})"


# --- what the live database says ---------------------------------------------------------------
def _rows(connection, table: str, schema: str | None, min_rows: int) -> int | None:
    """The table's rows (None: no such table): the planner's estimate, or when the table was
    never analyzed (reltuples -1) a count that stops at ``min_rows``."""
    found = connection.execute(
        sa.text(
            "SELECT c.reltuples::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = :t AND n.nspname = coalesce(:s, current_schema()) "
            "AND c.relkind IN ('r', 'p')"
        ),
        {"t": table, "s": schema},
    ).first()
    if found is None:
        return None
    if found[0] >= 0:
        return int(found[0])
    quote = connection.dialect.identifier_preparer.quote
    target = f"{quote(schema)}.{quote(table)}" if schema else quote(table)
    return connection.execute(
        sa.text(f"SELECT count(*) FROM (SELECT 1 FROM {target} LIMIT :n) AS s"), {"n": min_rows}
    ).scalar()


def _volatile(connection, expression: str) -> bool:
    """Whether a default expression calls a VOLATILE function (random(), gen_random_uuid(),
    clock_timestamp(), nextval(): ADD COLUMN then writes every row), read from pg_proc."""
    names = sorted({m.group(1).lower() for m in FUNCTION.finditer(expression)})
    if not names or connection is None:
        return False
    return bool(
        connection.execute(
            sa.text(
                "SELECT coalesce(bool_or(provolatile = 'v'), false) FROM pg_proc "
                "WHERE proname = ANY(:names)"
            ),
            {"names": names},
        ).scalar()
    )


def _default_text(column: sa.Column) -> str | None:
    default = column.server_default
    arg = getattr(default, "arg", None)
    if arg is None:
        return None
    if isinstance(arg, str):  # a literal ('x', '0'): a constant
        return None
    return str(getattr(arg, "text", arg))


def _sql(clause, connection) -> str:
    if isinstance(clause, str):
        return clause
    dialect = connection.dialect if connection is not None else None
    return str(clause.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


# --- the rewrites ------------------------------------------------------------------------------
class OnlineRevision:
    """The hook: ``process_revision_directives=OnlineRevision(force=, min_rows=)``. ``force``:
    every table that exists (``invoke revision --online``); else the ones with ≥ ``min_rows``
    rows. Unset, both are read from the environment when the hook runs (``DBOPS_ONLINE=1``,
    ``DBOPS_ONLINE_MIN_ROWS``). ``rewritten``: one dict per operation replaced."""

    def __init__(self, *, force: bool | None = None, min_rows: int | None = None, say=_say):
        self.force, self.min_rows, self.say = force, min_rows, say
        self.rewritten: list[dict] = []

    def settings(self) -> tuple[bool, int]:
        force = self.force
        if force is None:
            force = os.environ.get("DBOPS_ONLINE", "").lower() in ("1", "true", "yes", "all")
        min_rows = self.min_rows
        if min_rows is None:
            raw = os.environ.get("DBOPS_ONLINE_MIN_ROWS", "").strip()
            min_rows = int(raw) if raw.isdigit() else MIN_ROWS
        return force, min_rows

    def __call__(self, context, revision, directives) -> None:
        scripts = [d for d in directives if not getattr(d, DONE, False)]
        if not scripts or context.connection is None:
            return
        force, min_rows = self.settings()
        created = {
            (o.schema, o.table_name)
            for s in scripts
            for ups in s.upgrade_ops_list
            for o in ups.ops
            if isinstance(o, ops.CreateTableOp)
        }
        rewrite = _Rewrites(context.connection, force, min_rows, created, self.rewritten)
        rewrite.say = self.say
        rewrite.writer(context, revision, scripts)
        for s in scripts:
            setattr(s, DONE, True)


class _Rewrites:
    def __init__(self, connection, force: bool, min_rows: int, created: set, log: list):
        self.connection, self.force, self.min_rows = connection, force, min_rows
        self.created, self.log, self.sizes, self.say = created, log, {}, _say
        writer = Rewriter()
        for kind, fn in (
            (ops.CreateIndexOp, self.create_index),
            (ops.DropIndexOp, self.drop_index),
            (ops.CreateForeignKeyOp, self.foreign_key),
            (ops.CreateCheckConstraintOp, self.check),
            (ops.CreateUniqueConstraintOp, self.unique),
            (ops.CreatePrimaryKeyOp, self.primary_key),
            (ops.DropConstraintOp, self.drop_constraint),
            (ops.AlterColumnOp, self.alter_column),
            (ops.AddColumnOp, self.add_column),
        ):
            writer.rewrites(kind)(fn)
        self.writer = writer

    def big(self, table: str, schema: str | None) -> int | None:
        """The table's rows when it is to be written online, else None."""
        if (schema, table) in self.created:
            return None
        if (schema, table) not in self.sizes:
            self.sizes[(schema, table)] = _rows(self.connection, table, schema, self.min_rows)
        rows = self.sizes[(schema, table)]
        if rows is None or (not self.force and rows < self.min_rows):
            return None
        return rows

    def replaced(self, plain: str, table: str, rows: int, call: OnlineCall) -> OnlineCall:
        why = "forced (--online)" if self.force else f"≥ {self.min_rows:,} rows"
        self.log.append({"table": table, "rows": rows, "plain": plain, "online": call.name})
        self.say(f"{table} (~{rows:,} rows, {why}): op.{plain} -> op.{call.name}")
        return call

    def create_index(self, context, revision, op: ops.CreateIndexOp):
        rows = self.big(op.table_name, op.schema)
        extra = set(op.kw) - {"postgresql_where", "postgresql_using"}
        if rows is None or extra or getattr(op, "if_not_exists", None):
            return op
        columns = [c if isinstance(c, str) else getattr(c, "name", None) for c in op.columns]
        if any(c is None for c in columns):  # an expression: written as alembic renders it
            columns = [
                _sql(c, self.connection) if not isinstance(c, str) else c for c in op.columns
            ]
        where = op.kw.get("postgresql_where")
        call = OnlineCall(
            "create_index_online",
            str(op.index_name),
            op.table_name,
            columns,
            schema=op.schema,
            unique=True if op.unique else None,
            where=_sql(where, self.connection) if where is not None else None,
            using=op.kw.get("postgresql_using"),
        )
        return self.replaced("create_index", op.table_name, rows, call)

    def drop_index(self, context, revision, op: ops.DropIndexOp):
        rows = self.big(op.table_name, op.schema) if op.table_name else None
        if rows is None or getattr(op, "if_exists", None) is False:
            return op
        call = OnlineCall("drop_index_online", str(op.index_name), op.table_name, schema=op.schema)
        return self.replaced("drop_index", op.table_name, rows, call)

    def foreign_key(self, context, revision, op: ops.CreateForeignKeyOp):
        kw = op.kw
        rows = self.big(op.source_table, kw.get("source_schema"))
        if rows is None or kw.get("deferrable") or kw.get("initially") or kw.get("match"):
            return op
        name = op.constraint_name or _pg_name(op.source_table, op.local_cols, "fkey")
        call = OnlineCall(
            "add_foreign_key_online",
            str(name),
            op.source_table,
            op.referent_table,
            list(op.local_cols),
            list(op.remote_cols),
            source_schema=kw.get("source_schema"),
            referent_schema=kw.get("referent_schema"),
            ondelete=kw.get("ondelete"),
            onupdate=kw.get("onupdate"),
        )
        return self.replaced("create_foreign_key", op.source_table, rows, call)

    def check(self, context, revision, op: ops.CreateCheckConstraintOp):
        rows = self.big(op.table_name, op.schema)
        if rows is None or not op.constraint_name:
            return op
        call = OnlineCall(
            "add_check_online",
            str(op.constraint_name),
            op.table_name,
            _sql(op.condition, self.connection),
            schema=op.schema,
        )
        return self.replaced("create_check_constraint", op.table_name, rows, call)

    def unique(self, context, revision, op: ops.CreateUniqueConstraintOp):
        rows = self.big(op.table_name, op.schema)
        if rows is None or op.kw.get("deferrable") or op.kw.get("initially"):
            return op
        name = op.constraint_name or _pg_name(op.table_name, op.columns, "key")
        call = OnlineCall(
            "add_unique_online", str(name), op.table_name, list(op.columns), schema=op.schema
        )
        return self.replaced("create_unique_constraint", op.table_name, rows, call)

    def primary_key(self, context, revision, op: ops.CreatePrimaryKeyOp):
        rows = self.big(op.table_name, op.schema)
        if rows is None:
            return op
        name = op.constraint_name or f"{op.table_name}_pkey"[:63]
        call = OnlineCall(
            "add_unique_online",
            str(name),
            op.table_name,
            list(op.columns),
            schema=op.schema,
            primary_key=True,
        )
        return self.replaced("create_primary_key", op.table_name, rows, call)

    def drop_constraint(self, context, revision, op: ops.DropConstraintOp):
        """An unnamed foreign key or unique constraint (no naming convention) is dropped by
        the name PostgreSQL gave it (alembic would write ``None``); a big table's under
        lock_timeout, retried."""
        name = op.constraint_name
        made = getattr(op, "_reverse", None)
        if name is None and isinstance(made, ops.CreateForeignKeyOp):
            name = _pg_name(made.source_table, made.local_cols, "fkey")
        elif name is None and isinstance(made, ops.CreateUniqueConstraintOp):
            name = _pg_name(made.table_name, made.columns, "key")
        if name is None:
            return op
        rows = self.big(op.table_name, op.schema)
        if rows is None:
            named = copy.copy(op)
            named.constraint_name = name
            return named
        call = OnlineCall("drop_constraint_online", str(name), op.table_name, schema=op.schema)
        return self.replaced("drop_constraint", op.table_name, rows, call)

    def alter_column(self, context, revision, op: ops.AlterColumnOp):
        if op.modify_nullable is not False:
            return op
        rows = self.big(op.table_name, op.schema)
        if rows is None:
            return op
        call = OnlineCall("set_not_null_online", op.table_name, op.column_name, schema=op.schema)
        rest = copy.copy(op)
        rest.modify_nullable = None
        rest.existing_nullable = True
        other_change = (
            rest.modify_type is not None
            or rest.modify_name is not None
            or rest.modify_server_default is not False  # None: the default dropped
            or rest.modify_comment is not False
        )
        kept = [rest] if other_change else []
        return kept + [self.replaced("alter_column(nullable=False)", op.table_name, rows, call)]

    def add_column(self, context, revision, op: ops.AddColumnOp):
        default = _default_text(op.column)
        if default is None or not _volatile(self.connection, default):
            return op  # a constant default: PostgreSQL 11+ adds it without touching a row
        rows = self.big(op.table_name, op.schema)
        if rows is None or getattr(op, "if_not_exists", None):
            return op
        call = OnlineCall("add_column_online", op.table_name, op.column, schema=op.schema)
        return self.replaced("add_column(server_default=<volatile>)", op.table_name, rows, call)


def _pg_name(table: str, columns, suffix: str) -> str:
    """The name PostgreSQL gives an unnamed constraint (``<table>_<cols>_fkey``), so the online
    operation (which needs a name) names it the same."""
    return f"{table}_{'_'.join(str(c) for c in columns)}_{suffix}"[:63]


process_revision_directives = OnlineRevision()
