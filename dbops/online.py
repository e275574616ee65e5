"""Online (lock-safe) schema operations for Alembic: ``op.<name>`` once this module is imported
(in env.py, or at the top of a revision: ``import dbops.online  # noqa: F401``).

Each is the safer form of a pattern `invoke rehearse` flags (docs/rehearsal.md), written so a
failure or a kill leaves nothing half-built behind and a re-run continues:

    op.create_index_online(name, table, cols, unique=, where=)  CREATE INDEX CONCURRENTLY
    op.add_foreign_key_online(name, source, referent, local, remote)  NOT VALID, then VALIDATE
    op.add_check_online(name, table, condition)                 NOT VALID, then VALIDATE
    op.set_not_null_online(table, column)     CHECK (c IS NOT NULL) NOT VALID, VALIDATE,
                                              SET NOT NULL, the CHECK dropped
    op.add_unique_online(name, table, cols, primary_key=)       unique index CONCURRENTLY, then
                                                                ADD CONSTRAINT … USING INDEX
    op.add_column_online(table, column, backfill=, server_default=)  nullable column, default for
                                                                new rows, batched backfill, NOT NULL
    op.backfill(table, set=, where=, batch_rows=, pause=)       committed batches by primary key
    op.change_column_type_online(table, column, type_, using=)  new column + sync trigger +
                                                                backfill, swapped in one short lock
    op.rewrite_table_online(table, order_by=, tablespace=)   pg_repack (VACUUM FULL / CLUSTER /
                                                                SET TABLESPACE without the lock)
and their reverses (for downgrade()): drop_index_online, drop_constraint_online,
drop_not_null_online, drop_column_online.

Every step runs on the migration's own connection (no second connection: PgBouncer-safe as the
rest of the migration) inside ``autocommit_block()``: each statement is its own transaction, so
the preceding work of the revision is committed first (alembic's rule for autocommit blocks).
Statements that take a lock stronger than readers and writers tolerate run under
``lock_timeout`` (set on the migration's session and put back after) and are retried with a
backoff when they time out, so they never queue readers behind them for long.

Only the standard library, alembic and SQLAlchemy: it runs wherever alembic runs. Docs:
docs/online.md.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Iterator, Sequence

import sqlalchemy as sa
from alembic.operations import MigrateOperation, Operations

LOCK_TIMEOUT = "1s"  # a short lock waits at most this long, then the statement is retried
ATTEMPTS = 6  # tries of a statement that needs a short strong lock
BACKOFF_S = 0.5  # first pause after a lock timeout; doubled each time, at most BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
BATCH_ROWS = 5000  # the most rows one backfill batch writes
BATCH_SECONDS = 0.1  # a batch holds its rows' locks this long at most: bigger batches while
# they are faster than this, smaller (down to MIN_BATCH_ROWS) while they are slower
MIN_BATCH_ROWS = 50
RETRY_STATES = {"55P03", "40P01"}  # lock_not_available, deadlock_detected
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


class OnlineOperationError(RuntimeError):
    """A step failed; the message says what is left in the database and what to do."""


# --- running steps ----------------------------------------------------------------------------
def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", exc)
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def sql_text(statement: str) -> sa.TextClause:
    """A statement written by hand, sent as written: what SQLAlchemy would read as a bind
    parameter (``:name``) is escaped, and its ``%`` is escaped for the driver by SQLAlchemy."""
    return sa.text(re.sub(r"(?<![:\w\x5c]):(\w+)(?!:)", r"\\:\1", statement))


def _say(msg: str) -> None:
    print(f"dbops.online: {msg}", file=sys.stderr, flush=True)


class Steps:
    """The statements of one operation, on the migration's connection in autocommit mode."""

    def __init__(self, operations: Operations, lock_timeout: str, attempts: int):
        self.operations = operations
        self.ctx = operations.get_context()
        self.offline = bool(self.ctx.as_sql)
        self.lock_timeout = lock_timeout
        self.attempts = max(1, attempts)
        self.preparer = self.ctx.dialect.identifier_preparer
        self.sleep = time.sleep

    @property
    def conn(self):
        return self.operations.get_bind()

    # names
    def q(self, name: str) -> str:
        return self.preparer.quote(name)

    def table(self, name: str, schema: str | None) -> str:
        return f"{self.q(schema)}.{self.q(name)}" if schema else self.q(name)

    def cols(self, columns: Sequence[str]) -> str:
        """Column names are quoted; anything else (an expression) is used as written."""
        return ", ".join(self.q(c) if IDENT.match(c) else c for c in columns)

    # catalog reads (offline: nothing exists yet)
    def value(self, query: str, **params):
        if self.offline:
            return None
        return self.conn.execute(sa.text(query), params).scalar()

    def index_valid(self, name: str, schema: str | None) -> bool | None:
        """None: no such index; else whether it is valid (an INVALID one is a failed build)."""
        return self.value(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = :name AND n.nspname = coalesce(:schema, current_schema())",
            name=name,
            schema=schema,
        )

    def constraint_valid(self, name: str, table: str, schema: str | None) -> bool | None:
        return self.value(
            "SELECT k.convalidated FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE k.conname = :name "
            "AND c.relname = :table AND n.nspname = coalesce(:schema, current_schema())",
            name=name,
            table=table,
            schema=schema,
        )

    def not_null(self, table: str, column: str, schema: str | None) -> bool | None:
        return self.value(
            "SELECT a.attnotnull FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = :table "
            "AND n.nspname = coalesce(:schema, current_schema()) AND a.attname = :column "
            "AND NOT a.attisdropped",
            table=table,
            column=column,
            schema=schema,
        )

    # statements
    @contextlib.contextmanager
    def session(self) -> Iterator[Steps]:
        """autocommit for the block (unless already in one) and lock_timeout set on the
        migration's session, put back to what it was at the end."""
        if self.offline:
            with self.ctx.autocommit_block():
                yield self
            return
        inside = self.conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        with contextlib.nullcontext() if inside else self.ctx.autocommit_block():
            before = self.value("SELECT current_setting('lock_timeout')")
            self.conn.execute(
                sa.text("SELECT set_config('lock_timeout', :v, false)"), {"v": self.lock_timeout}
            )
            try:
                yield self
            finally:
                self.conn.execute(
                    sa.text("SELECT set_config('lock_timeout', :v, false)"), {"v": before}
                )

    def run(self, statement: str, *, retry: bool = True) -> int:
        """One statement, its own transaction. A lock timeout is retried with a backoff;
        returns the rows it touched."""
        if self.offline:
            self.operations.execute(statement)
            return 0
        pause = BACKOFF_S
        for attempt in range(1, self.attempts + 1):
            try:
                return self.conn.execute(sql_text(statement)).rowcount
            except sa.exc.DBAPIError as exc:
                if not retry or _sqlstate(exc) not in RETRY_STATES or attempt == self.attempts:
                    raise
                _say(
                    f"lock not available within {self.lock_timeout} "
                    f"(attempt {attempt}/{self.attempts}), again in {pause:g} s: "
                    f"{' '.join(statement.split())[:100]}"
                )
                self.sleep(pause)
                pause = min(pause * 2, BACKOFF_MAX_S)
        raise AssertionError("unreachable")


def _fail(what: str, exc: BaseException, state: str, next_step: str) -> OnlineOperationError:
    return OnlineOperationError(f"{what} failed: {_first_line(exc)}. {state} {next_step}")


# --- create_index_online / drop_index_online --------------------------------------------------
def _build_index(
    s: Steps,
    name: str,
    table: str,
    columns: Sequence[str],
    *,
    schema: str | None,
    unique: bool,
    where: str | None,
    using: str | None,
) -> None:
    """CREATE INDEX CONCURRENTLY (s in autocommit). An INVALID index of that name (a build
    that failed or was killed) is dropped first; a failed build's INVALID index is dropped
    before the error goes up; a lock timeout (waiting for older transactions) is retried."""
    qualified = s.table(name, schema)
    create = (
        f"CREATE {'UNIQUE ' if unique else ''}INDEX CONCURRENTLY {s.q(name)} "
        f"ON {s.table(table, schema)}{f' USING {using}' if using else ''} ({s.cols(columns)})"
        f"{f' WHERE {where}' if where else ''}"
    )
    drop = f"DROP INDEX CONCURRENTLY IF EXISTS {qualified}"
    pause = BACKOFF_S
    for attempt in range(1, s.attempts + 1):
        if s.index_valid(name, schema) is False:
            _say(f"dropping the INVALID index {name} a failed build left")
            s.run(drop)
        try:
            s.run(create, retry=False)
            return
        except sa.exc.DBAPIError as exc:
            if s.index_valid(name, schema) is False:
                s.run(drop)
            if _sqlstate(exc) in RETRY_STATES and attempt < s.attempts:
                _say(f"index {name}: {_first_line(exc)} (attempt {attempt}), again in {pause:g} s")
                s.sleep(pause)
                pause = min(pause * 2, BACKOFF_MAX_S)
                continue
            raise _fail(
                f"CREATE INDEX CONCURRENTLY {name}",
                exc,
                f"No index {name} is left behind (the INVALID one was dropped).",
                "Fix the cause (duplicates for a unique index, a long transaction holding the "
                "table) and run the migration again.",
            ) from exc


@Operations.register_operation("create_index_online")
class CreateIndexOnlineOp(MigrateOperation):
    """``op.create_index_online("ix_t_a", "t", ["a"], unique=False, where=None)``"""

    def __init__(
        self,
        index_name: str,
        table_name: str,
        columns: Sequence[str],
        *,
        schema: str | None = None,
        unique: bool = False,
        where: str | None = None,
        using: str | None = None,
        lock_timeout: str = LOCK_TIMEOUT,
        attempts: int = ATTEMPTS,
    ):
        self.index_name, self.table_name, self.columns = index_name, table_name, list(columns)
        self.schema, self.unique, self.where, self.using = schema, unique, where, using
        self.lock_timeout, self.attempts = lock_timeout, attempts

    @classmethod
    def create_index_online(cls, operations, index_name, table_name, columns, **kw):
        return operations.invoke(cls(index_name, table_name, columns, **kw))

    def reverse(self):
        return DropIndexOnlineOp(self.index_name, schema=self.schema)


@Operations.implementation_for(CreateIndexOnlineOp)
def _create_index_online(operations, op: CreateIndexOnlineOp) -> None:
    s = Steps(operations, op.lock_timeout, op.attempts)
    with s.session():
        _build_index(
            s,
            op.index_name,
            op.table_name,
            op.columns,
            schema=op.schema,
            unique=op.unique,
            where=op.where,
            using=op.using,
        )


@Operations.register_operation("drop_index_online")
class DropIndexOnlineOp(MigrateOperation):
    """``op.drop_index_online("ix_t_a")``: DROP INDEX CONCURRENTLY IF EXISTS."""

    def __init__(
        self,
        index_name: str,
        table_name: str | None = None,
        *,
        schema: str | None = None,
        lock_timeout: str = LOCK_TIMEOUT,
        attempts: int = ATTEMPTS,
    ):
        self.index_name, self.table_name, self.schema = index_name, table_name, schema
        self.lock_timeout, self.attempts = lock_timeout, attempts

    @classmethod
    def drop_index_online(cls, operations, index_name, table_name=None, **kw):
        return operations.invoke(cls(index_name, table_name, **kw))


@Operations.implementation_for(DropIndexOnlineOp)
def _drop_index_online(operations, op: DropIndexOnlineOp) -> None:
    s = Steps(operations, op.lock_timeout, op.attempts)
    with s.session():
        s.run(f"DROP INDEX CONCURRENTLY IF EXISTS {s.table(op.index_name, op.schema)}")


# --- NOT VALID + VALIDATE ---------------------------------------------------------------------
def _add_validated(
    s: Steps, name: str, table: str, schema: str | None, definition: str, hint: str
) -> None:
    """ADD CONSTRAINT … NOT VALID (a short lock, retried), then VALIDATE CONSTRAINT in its own
    transaction (SHARE UPDATE EXCLUSIVE: readers and writers go on). A NOT VALID one left by
    a killed run is validated; one that fails validation is dropped again."""
    target = s.table(table, schema)
    state = s.constraint_valid(name, table, schema)
    if state:
        _say(f"constraint {name} on {table} is already there and valid: nothing to do")
        return
    if state is None:
        s.run(f"ALTER TABLE {target} ADD CONSTRAINT {s.q(name)} {definition} NOT VALID")
    try:
        s.run(f"ALTER TABLE {target} VALIDATE CONSTRAINT {s.q(name)}")
    except sa.exc.DBAPIError as exc:
        if _sqlstate(exc) not in RETRY_STATES:
            s.run(f"ALTER TABLE {target} DROP CONSTRAINT IF EXISTS {s.q(name)}")
            left = f"The constraint {name} was dropped again: {table} is as before."
        else:
            left = f"The constraint {name} is left NOT VALID on {table} (a re-run validates it)."
        raise _fail(f"VALIDATE CONSTRAINT {name}", exc, left, hint) from exc


@Operations.register_operation("add_foreign_key_online")
class AddForeignKeyOnlineOp(MigrateOperation):
    """``op.add_foreign_key_online("fk", "child", "parent", ["parent_id"], ["id"])``"""

    def __init__(
        self,
        constraint_name: str,
        source_table: str,
        referent_table: str,
        local_cols: Sequence[str],
        remote_cols: Sequence[str],
        *,
        source_schema: str | None = None,
        referent_schema: str | None = None,
        ondelete: str | None = None,
        onupdate: str | None = None,
        lock_timeout: str = LOCK_TIMEOUT,
        attempts: int = ATTEMPTS,
    ):
        self.constraint_name = constraint_name
        self.source_table, self.referent_table = source_table, referent_table
        self.local_cols, self.remote_cols = list(local_cols), list(remote_cols)
        self.source_schema, self.referent_schema = source_schema, referent_schema
        self.ondelete, self.onupdate = ondelete, onupdate
        self.lock_timeout, self.attempts = lock_timeout, attempts

    @classmethod
    def add_foreign_key_online(
        cls,
        operations,
        constraint_name,
        source_table,
        referent_table,
        local_cols,
        remote_cols,
        **kw,
    ):
        return operations.invoke(
            cls(constraint_name, source_table, referent_table, local_cols, remote_cols, **kw)
        )

    def reverse(self):
        return DropConstraintOnlineOp(
            self.constraint_name, self.source_table, schema=self.source_schema
        )


@Operations.implementation_for(AddForeignKeyOnlineOp)
def _add_foreign_key_online(operations, op: AddForeignKeyOnlineOp) -> None:
    s = Steps(operations, op.lock_timeout, op.attempts)
    definition = (
        f"FOREIGN KEY ({s.cols(op.local_cols)}) REFERENCES "
        f"{s.table(op.referent_table, op.referent_schema)} ({s.cols(op.remote_cols)})"
        f"{f' ON DELETE {op.ondelete}' if op.ondelete else ''}"
        f"{f' ON UPDATE {op.onupdate}' if op.onupdate else ''}"
    )
    with s.session():
        _add_validated(
            s,
            op.constraint_name,
            op.source_table,
            op.source_schema,
            definition,
            f"Find the rows of {op.source_table} without a match in {op.referent_table}, fix "
            "them, and run the migration again.",
        )


@Operations.register_operation("add_check_online")
class AddCheckOnlineOp(MigrateOperation):
    """``op.add_check_online("ck_t_a_pos", "t", "a >= 0")``"""

    def __init__(
        self,
        constraint_name: str,
        table_name: str,
        condition: str,
        *,
        schema: str | None = None,
        lock_timeout: str = LOCK_TIMEOUT,
        attempts: int = ATTEMPTS,
    ):
        self.constraint_name, self.table_name = constraint_name, table_name
        self.condition, self.schema = str(condition), schema
        self.lock_timeout, self.attempts = lock_timeout, attempts

    @classmethod
    def add_check_online(cls, operations, constraint_name, table_name, condition, **kw):
        return operations.invoke(cls(constraint_name, table_name, condition, **kw))

    def reverse(self):
        return DropConstraintOnlineOp(self.constraint_name, self.table_name, schema=self.schema)


@Operations.implementation_for(AddCheckOnlineOp)
def _add_check_online(operations, op: AddCheckOnlineOp) -> None:
    s = Steps(operations, op.lock_timeout, op.attempts)
    with s.session():
        _add_validated(
            s,
            op.constraint_name,
            op.table_name,
            op.schema,
            f"CHECK ({op.condition})",
            f"Find the rows of {op.table_name} where NOT ({op.condition}), fix them, and run "
            "the migration again.",
        )


@Operations.register_operation("drop_constraint_online")
class DropConstraintOnlineOp(MigrateOperation):
    """``op.drop_constraint_online("name", "t")``: DROP CONSTRAINT IF EXISTS under
    lock_timeout, retried (the reverse of the add_*_online operations)."""

    def __init__(
        self,
        constraint_name: str,
        table_name: str,
        *,
        schema: str | None = None,
        lock_timeout: str = LOCK_TIMEOUT,
        attempts: int = ATTEMPTS,
    ):
        self.constraint_name, self.table_name, self.schema = constraint_name, table_name, schema
        self.lock_timeout, self.attempts = lock_timeout, attempts

    @classmethod
    def drop_constraint_online(cls, operations, constraint_name, table_name, **kw):
        return operations.invoke(cls(constraint_name, table_name, **kw))


@Operations.implementation_for(DropConstraintOnlineOp)
def _drop_constraint_online(operations, op: DropConstraintOnlineOp) -> None:
    s = Steps(operations, op.lock_timeout, op.attempts)
    with s.session():
        s.run(
            f"ALTER TABLE {s.table(op.table_name, op.schema)} "
            f"DROP CONSTRAINT IF EXISTS {s.q(op.constraint_name)}"
        )


# --- SET NOT NULL -----------------------------------------------------------------------------
def not_null_check_name(table: str, column: str) -> str:
    """The helper CHECK's name (gone again when set_not_null_online ends)."""
    return f"{table}_{column}_not_null"[:63]


def _set_not_null(s: Steps, table: str, column: str, schema: str | None) -> None:
    check = not_null_check_name(table, column)
    target = s.table(table, schema)
    if s.not_null(table, column, schema):
        if s.constraint_valid(check, table, schema) is not None:  # a killed run's leftover
            s.run(f"ALTER TABLE {target} DROP CONSTRAINT IF EXISTS {s.q(check)}")
        return
    _add_validated(
        s,
        check,
        table,
        schema,
        f"CHECK ({s.q(column)} IS NOT NULL)",
        f"Fill the NULLs of {table}.{column} (op.backfill) and run the migration again.",
    )
    # PostgreSQL 12+: the valid CHECK proves it, no scan under the ACCESS EXCLUSIVE lock
    s.run(f"ALTER TABLE {target} ALTER COLUMN {s.q(column)} SET NOT NULL")
    s.run(f"ALTER TABLE {target} DROP CONSTRAINT IF EXISTS {s.q(check)}")


@Operations.register_operation("set_not_null_online")
class SetNotNullOnlineOp(MigrateOperation):
    """``op.set_not_null_online("t", "c")``"""

    def __init__(
        self,
        table_name: str,
        column_name: str,
        *,
        schema: str | None = None,
        lock_timeout: str = LOCK_TIMEOUT,
        attempts: int = ATTEMPTS,
    ):
        self.table_name, self.column_name, self.schema = table_name, column_name, schema
        self.lock_timeout, self.attempts = lock_timeout, attempts

    @classmethod
    def set_not_null_online(cls, operations, table_name, column_name, **kw):
        return operations.invoke(cls(table_name, column_name, **kw))

    def reverse(self):
        return DropNotNullOnlineOp(self.table_name, self.column_name, schema=self.schema)


@Operations.implementation_for(SetNotNullOnlineOp)
def _set_not_null_online(operations, op: SetNotNullOnlineOp) -> None:
    s = Steps(operations, op.lock_timeout, op.attempts)
    with s.session():
        _set_not_null(s, op.table_name, op.column_name, op.schema)


@Operations.register_operation("drop_not_null_online")
class DropNotNullOnlineOp(MigrateOperation):
    """``op.drop_not_null_online("t", "c")``: DROP NOT NULL (catalog only) under lock_timeout."""

    def __init__(
        self,
        table_name: str,
        column_name: str,
        *,
        schema: str | None = None,
        lock_timeout: str = LOCK_TIMEOUT,
        attempts: int = ATTEMPTS,
    ):
        self.table_name, self.column_name, self.schema = table_name, column_name, schema
        self.lock_timeout, self.attempts = lock_timeout, attempts

    @classmethod
    def drop_not_null_online(cls, operations, table_name, column_name, **kw):
        return operations.invoke(cls(table_name, column_name, **kw))


@Operations.implementation_for(DropNotNullOnlineOp)
def _drop_not_null_online(operations, op: DropNotNullOnlineOp) -> None:
    s = Steps(operations, op.lock_timeout, op.attempts)
    with s.session():
        s.run(
            f"ALTER TABLE {s.table(op.table_name, op.schema)} "
            f"ALTER COLUMN {s.q(op.column_name)} DROP NOT NULL"
        )


# --- UNIQUE / PRIMARY KEY ---------------------------------------------------------------------
@Operations.register_operation("add_unique_online")
class AddUniqueOnlineOp(MigrateOperation):
    """``op.add_unique_online("uq_t_a", "t", ["a"])``; ``primary_key=True`` for a primary key
    (its columns are made NOT NULL online first, else USING INDEX would scan for NULLs)."""

    def __init__(
        self,
        constraint_name: str,
        table_name: str,
        columns: Sequence[str],
        *,
        schema: str | None = None,
        primary_key: bool = False,
        lock_timeout: str = LOCK_TIMEOUT,
        attempts: int = ATTEMPTS,
    ):
        self.constraint_name, self.table_name = constraint_name, table_name
        self.columns, self.schema, self.primary_key = list(columns), schema, primary_key
        self.lock_timeout, self.attempts = lock_timeout, attempts

    @classmethod
    def add_unique_online(cls, operations, constraint_name, table_name, columns, **kw):
        return operations.invoke(cls(constraint_name, table_name, columns, **kw))

    def reverse(self):
        return DropConstraintOnlineOp(self.constraint_name, self.table_name, schema=self.schema)


@Operations.implementation_for(AddUniqueOnlineOp)
def _add_unique_online(operations, op: AddUniqueOnlineOp) -> None:
    s = Steps(operations, op.lock_timeout, op.attempts)
    name = op.constraint_name
    with s.session():
        if s.constraint_valid(name, op.table_name, op.schema):
            _say(f"constraint {name} on {op.table_name} is already there: nothing to do")
            return
        if op.primary_key:
            for column in op.columns:
                _set_not_null(s, op.table_name, column, op.schema)
        if not s.index_valid(name, op.schema):
            _build_index(
                s,
                name,
                op.table_name,
                op.columns,
                schema=op.schema,
                unique=True,
                where=None,
                using=None,
            )
        kind = "PRIMARY KEY" if op.primary_key else "UNIQUE"
        s.run(
            f"ALTER TABLE {s.table(op.table_name, op.schema)} ADD CONSTRAINT {s.q(name)} "
            f"{kind} USING INDEX {s.q(name)}"
        )


# --- backfill ---------------------------------------------------------------------------------
def primary_key(s: Steps, table: str, schema: str | None) -> str:
    cols = []
    if not s.offline:
        cols = [
            r[0]
            for r in s.conn.execute(
                sa.text(
                    "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) "
                    "WHERE i.indisprimary AND c.relname = :t "
                    "AND n.nspname = coalesce(:s, current_schema())"
                ),
                {"t": table, "s": schema},
            )
        ]
    if len(cols) != 1:
        raise OnlineOperationError(
            f"backfill of {table}: batches go by a single-column primary key, and {table} has "
            f"{'none' if not cols else 'a key of ' + str(len(cols)) + ' columns'}. Nothing was "
            "changed. Pass key='<a unique, not-null column with an index>'."
        )
    return cols[0]


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _backfill(
    s: Steps,
    table: str,
    set_: str,
    where: str | None,
    *,
    schema: str | None,
    key: str | None,
    batch_rows: int,
    pause: float,
    batch_seconds: float = BATCH_SECONDS,
    progress_every: float = 2.0,
) -> int:
    if s.offline:
        raise OnlineOperationError(
            f"backfill of {table} needs a live connection (its batches are chosen from the "
            "rows): it cannot be written as offline SQL. Nothing was emitted for it."
        )
    if batch_rows < 1:
        raise OnlineOperationError(f"backfill of {table}: batch_rows must be ≥ 1")
    k = s.q(key or primary_key(s, table, schema))
    target = s.table(table, schema)
    todo = f"({where})" if where else "true"
    estimate = s.value(
        "SELECT greatest(c.reltuples, 0)::bigint FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = :t AND n.nspname = coalesce(:s, current_schema())",
        t=table,
        s=schema,
    )
    done, batches, last = 0, 0, None
    size = min(batch_rows, 1000)
    t0 = shown = time.monotonic()
    while True:
        after = [f"{k} > {_literal(last)}"] if last is not None else []
        upper = s.conn.execute(
            sql_text(
                # the next `size` keys, whatever `where` says: a range of the key's index (a
                # filter here would let the planner pick a full scan for a column without
                # statistics, e.g. one just added); `where` is applied by the UPDATE
                f"SELECT max(k)::text FROM (SELECT {k} AS k FROM {target}"
                f"{' WHERE ' + after[0] if after else ''} ORDER BY {k} LIMIT {int(size)}) batch"
            )
        ).scalar()
        if upper is None:
            break
        # the WHERE is checked again on each row as it is updated: a row a writer changed
        # meanwhile is skipped, and a re-run after a kill skips the rows already done
        started = time.monotonic()
        bounds = " AND ".join([*after, f"{k} <= {_literal(upper)}", todo])
        done += s.run(f"UPDATE {target} SET {set_} WHERE {bounds}")
        batches += 1
        last = upper
        now = time.monotonic()
        if now - started > batch_seconds:
            size = max(min(MIN_BATCH_ROWS, batch_rows), size // 2)
        elif now - started < batch_seconds / 2:
            size = min(batch_rows, size * 2)
        if now - shown >= progress_every:
            share = f" (~{100 * done / estimate:.0f}% of ~{estimate:,})" if estimate else ""
            _say(f"backfill {table}: {done:,} rows{share}, {now - t0:.1f} s")
            shown = now
        if pause:
            s.sleep(pause)
    took = time.monotonic() - t0
    _say(f"backfill {table}: done, {done:,} rows in {batches} batches, {took:.1f} s")
    return done


@Operations.register_operation("backfill")
class BackfillOp(MigrateOperation):
    """``op.backfill("t", set="c = a * 2", where="c IS NULL", batch_rows=5000, pause=0)``

    Each batch is its own transaction (a key range of at most ``batch_rows`` rows matching
    ``where``, fewer while a batch takes longer than ``batch_seconds``). Give a ``where``
    that is false once a row is done: a re-run after a kill then continues where it stopped
    instead of redoing every row."""

    def __init__(
        self,
        table_name: str,
        *,
        set: str,  # noqa: A002 - the SQL word
        where: str | None = None,
        schema: str | None = None,
        key: str | None = None,
        batch_rows: int = BATCH_ROWS,
        batch_seconds: float = BATCH_SECONDS,
        pause: float = 0.0,
        lock_timeout: str = LOCK_TIMEOUT,
        attempts: int = ATTEMPTS,
    ):
        self.table_name, self.set, self.where = table_name, set, where
        self.schema, self.key, self.batch_rows, self.pause = schema, key, batch_rows, pause
        self.batch_seconds = batch_seconds
        self.lock_timeout, self.attempts = lock_timeout, attempts

    @classmethod
    def backfill(cls, operations, table_name, **kw):
        return operations.invoke(cls(table_name, **kw))


@Operations.implementation_for(BackfillOp)
def _backfill_op(operations, op: BackfillOp) -> None:
    s = Steps(operations, op.lock_timeout, op.attempts)
    with s.session():
        _backfill(
            s,
            op.table_name,
            op.set,
            op.where,
            schema=op.schema,
            key=op.key,
            batch_rows=op.batch_rows,
            pause=op.pause,
            batch_seconds=op.batch_seconds,
        )


# --- ADD COLUMN -------------------------------------------------------------------------------
@Operations.register_operation("add_column_online")
class AddColumnOnlineOp(MigrateOperation):
    """``op.add_column_online("t", sa.Column("c", sa.Float, nullable=False),
    server_default="random()", backfill=None)``

    The column is added nullable without a default (catalog only), ``server_default`` is set
    for new rows, the existing rows are filled in committed batches with ``backfill`` (an SQL
    expression; the default's expression when not given), then SET NOT NULL online if the
    column is not nullable."""

    def __init__(
        self,
        table_name: str,
        column: sa.Column,
        *,
        schema: str | None = None,
        server_default: str | None = None,
        backfill: str | None = None,
        batch_rows: int = BATCH_ROWS,
        batch_seconds: float = BATCH_SECONDS,
        pause: float = 0.0,
        lock_timeout: str = LOCK_TIMEOUT,
        attempts: int = ATTEMPTS,
    ):
        self.table_name, self.column, self.schema = table_name, column, schema
        default = server_default
        if default is None and column.server_default is not None:
            arg = getattr(column.server_default, "arg", None)
            if isinstance(arg, str):  # sa.Column(server_default="new"): a literal, as SQLAlchemy
                default = "'" + arg.replace("'", "''") + "'"
            else:
                default = str(getattr(arg, "text", arg)) if arg is not None else None
        self.server_default = default
        self.backfill = backfill if backfill is not None else default
        self.batch_rows, self.pause, self.batch_seconds = batch_rows, pause, batch_seconds
        self.lock_timeout, self.attempts = lock_timeout, attempts

    @classmethod
    def add_column_online(cls, operations, table_name, column, **kw):
        return operations.invoke(cls(table_name, column, **kw))

    def reverse(self):
        return DropColumnOnlineOp(self.table_name, self.column.name, schema=self.schema)


@Operations.implementation_for(AddColumnOnlineOp)
def _add_column_online(operations, op: AddColumnOnlineOp) -> None:
    s = Steps(operations, op.lock_timeout, op.attempts)
    col = op.column
    kind = col.type.compile(dialect=s.ctx.dialect)
    target, name = s.table(op.table_name, op.schema), s.q(col.name)
    with s.session():
        # one statement: the existing rows get NULL (no rewrite), every row inserted after it
        # the default; IF NOT EXISTS: a re-run after a kill finds it added and continues
        default = (
            f", ALTER COLUMN {name} SET DEFAULT {op.server_default}"
            if op.server_default is not None
            else ""
        )
        s.run(f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {name} {kind}{default}")
        if op.backfill is not None:
            _backfill(
                s,
                op.table_name,
                f"{name} = {op.backfill}",
                f"{name} IS NULL",
                schema=op.schema,
                key=None,
                batch_rows=op.batch_rows,
                pause=op.pause,
                batch_seconds=op.batch_seconds,
            )
        if col.nullable is False:
            _set_not_null(s, op.table_name, col.name, op.schema)


@Operations.register_operation("drop_column_online")
class DropColumnOnlineOp(MigrateOperation):
    """``op.drop_column_online("t", "c")``: DROP COLUMN IF EXISTS (catalog only) under
    lock_timeout, retried."""

    def __init__(
        self,
        table_name: str,
        column_name: str,
        *,
        schema: str | None = None,
        lock_timeout: str = LOCK_TIMEOUT,
        attempts: int = ATTEMPTS,
    ):
        self.table_name, self.column_name, self.schema = table_name, column_name, schema
        self.lock_timeout, self.attempts = lock_timeout, attempts

    @classmethod
    def drop_column_online(cls, operations, table_name, column_name, **kw):
        return operations.invoke(cls(table_name, column_name, **kw))


@Operations.implementation_for(DropColumnOnlineOp)
def _drop_column_online(operations, op: DropColumnOnlineOp) -> None:
    s = Steps(operations, op.lock_timeout, op.attempts)
    with s.session():
        s.run(
            f"ALTER TABLE {s.table(op.table_name, op.schema)} "
            f"DROP COLUMN IF EXISTS {s.q(op.column_name)}"
        )


# --- ALTER COLUMN … TYPE (expand/contract) ----------------------------------------------------
def _attnum(s: Steps, table: str, column: str, schema: str | None) -> int | None:
    return s.value(
        "SELECT a.attnum FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = :table "
        "AND n.nspname = coalesce(:schema, current_schema()) AND a.attname = :column "
        "AND NOT a.attisdropped",
        table=table,
        column=column,
        schema=schema,
    )


def _dependents(s: Steps, table: str, column: str, schema: str | None) -> list[str]:
    """What depends on the column (indexes, constraints, defaults, views, owned sequences):
    a rename would leave them on the old column."""
    return [
        r[0]
        for r in s.conn.execute(
            sa.text(
                "SELECT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d "
                "JOIN pg_class c ON c.oid = d.refobjid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.refobjsubid "
                "WHERE d.refclassid = 'pg_class'::regclass AND c.relname = :table "
                "AND n.nspname = coalesce(:schema, current_schema()) AND a.attname = :column "
                "AND d.deptype IN ('n', 'a') ORDER BY 1"
            ),
            {"table": table, "schema": schema, "column": column},
        )
    ]


@Operations.register_operation("change_column_type_online")
class ChangeColumnTypeOnlineOp(MigrateOperation):
    """``op.change_column_type_online("t", "c", sa.BigInteger, using=None)``

    Expand/contract: a new column ``c__new`` of the new type, a trigger keeping it equal to
    ``using`` (an SQL expression of the row's columns; default ``CAST(c AS type)``) on every
    insert and update, a batched backfill, then in one short transaction the swap: ``c`` becomes
    ``c__old`` (nullable, no longer written), ``c__new`` becomes ``c``, the trigger goes. Drop
    ``c__old`` in a later revision (``op.drop_column_online("t", "c__old")``; a later change of
    the same column drops it at its swap). Only a column nothing depends on (no index,
    constraint, default, view): refused otherwise, unchanged. A re-run after a kill continues
    the backfill; one after the swap copies the column once more (``using`` must give the same
    value from the new type: the default CAST does)."""

    def __init__(
        self,
        table_name: str,
        column_name: str,
        type_,
        *,
        schema: str | None = None,
        using: str | None = None,
        existing_type=None,
        batch_rows: int = BATCH_ROWS,
        batch_seconds: float = BATCH_SECONDS,
        pause: float = 0.0,
        lock_timeout: str = LOCK_TIMEOUT,
        attempts: int = ATTEMPTS,
    ):
        self.table_name, self.column_name, self.type_ = table_name, column_name, type_
        self.schema, self.using, self.existing_type = schema, using, existing_type
        self.batch_rows, self.batch_seconds, self.pause = batch_rows, batch_seconds, pause
        self.lock_timeout, self.attempts = lock_timeout, attempts

    @classmethod
    def change_column_type_online(cls, operations, table_name, column_name, type_, **kw):
        return operations.invoke(cls(table_name, column_name, type_, **kw))

    def reverse(self):
        if self.existing_type is None:
            raise ValueError("change_column_type_online needs existing_type= to be reversed")
        return ChangeColumnTypeOnlineOp(
            self.table_name,
            self.column_name,
            self.existing_type,
            schema=self.schema,
            existing_type=self.type_,
        )


def _type_sql(s: Steps, type_) -> str:
    if isinstance(type_, str):
        return type_
    if isinstance(type_, type):
        type_ = type_()
    return type_.compile(dialect=s.ctx.dialect)


@Operations.implementation_for(ChangeColumnTypeOnlineOp)
def _change_column_type_online(operations, op: ChangeColumnTypeOnlineOp) -> None:
    s = Steps(operations, op.lock_timeout, op.attempts)
    if s.offline:
        raise OnlineOperationError(
            f"change_column_type_online of {op.table_name}.{op.column_name} needs a live "
            "connection (its backfill is chosen from the rows). Nothing was emitted for it."
        )
    table, col = op.table_name, op.column_name
    new, old = f"{col}__new"[:63], f"{col}__old"[:63]
    fn, trg = f"{table}_{col}__sync"[:63], f"{table}_{col}__sync"[:63]
    target, kind = s.table(table, op.schema), _type_sql(s, op.type_)
    using = op.using or f"CAST({s.q(col)} AS {kind})"
    with s.session():
        if not _attnum(s, table, new, op.schema):
            blockers = _dependents(s, table, col, op.schema)
            if blockers:
                raise OnlineOperationError(
                    f"change_column_type_online of {table}.{col}: {', '.join(blockers)} "
                    f"depend(s) on it, and a swap of columns would leave them on the old one. "
                    "Nothing was changed. Drop or move them first, or use a new column by hand."
                )
        was_not_null = s.not_null(table, col, op.schema)
        s.run(f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {s.q(new)} {kind}")
        # the default CAST is a plain expression of NEW (fast); a USING expression is evaluated
        # over the row's columns by name (a query per row)
        value = (
            f"(SELECT {op.using} FROM (SELECT NEW.*) AS row_)"
            if op.using
            else f"CAST(NEW.{s.q(col)} AS {kind})"
        )
        s.run(
            f"CREATE OR REPLACE FUNCTION {s.table(fn, op.schema)}() RETURNS trigger "
            f"LANGUAGE plpgsql AS $f$ BEGIN NEW.{s.q(new)} := {value}; RETURN NEW; END $f$"
        )
        exists = s.value(
            "SELECT count(*) FROM pg_trigger WHERE tgname = :t AND tgrelid = "
            "(SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = :table AND n.nspname = coalesce(:schema, current_schema()))",
            t=trg,
            table=table,
            schema=op.schema,
        )
        if not exists:
            s.run(
                f"CREATE TRIGGER {s.q(trg)} BEFORE INSERT OR UPDATE ON {target} FOR EACH ROW "
                f"EXECUTE FUNCTION {s.table(fn, op.schema)}()"
            )
        _backfill(
            s,
            table,
            f"{s.q(new)} = {using}",
            f"{s.q(new)} IS NULL AND {s.q(col)} IS NOT NULL",
            schema=op.schema,
            key=None,
            batch_rows=op.batch_rows,
            pause=op.pause,
            batch_seconds=op.batch_seconds,
        )
        if was_not_null:
            _set_not_null(s, table, new, op.schema)
        swap = [f"ALTER TABLE {target} ALTER COLUMN {s.q(col)} DROP NOT NULL"]
        if _attnum(s, table, old, op.schema):  # an earlier change's, not dropped yet
            swap.append(f"ALTER TABLE {target} DROP COLUMN {s.q(old)}")
        swap += [
            f"ALTER TABLE {target} RENAME COLUMN {s.q(col)} TO {s.q(old)}",
            f"ALTER TABLE {target} RENAME COLUMN {s.q(new)} TO {s.q(col)}",
            f"DROP TRIGGER IF EXISTS {s.q(trg)} ON {target}",
            f"DROP FUNCTION IF EXISTS {s.table(fn, op.schema)}()",
        ]
        _in_one_transaction(s, swap)
        _say(f"{table}.{col} is now {kind}; drop {old} in a later revision")


def _in_one_transaction(s: Steps, statements: list[str]) -> None:
    """``statements`` in one transaction (the first one's lock under lock_timeout), retried
    as a whole on a lock timeout."""
    pause = BACKOFF_S
    for attempt in range(1, s.attempts + 1):
        s.conn.execute(sa.text("BEGIN"))
        try:
            for statement in statements:
                s.conn.execute(sql_text(statement))
            s.conn.execute(sa.text("COMMIT"))
            return
        except sa.exc.DBAPIError as exc:
            s.conn.execute(sa.text("ROLLBACK"))
            if _sqlstate(exc) not in RETRY_STATES or attempt == s.attempts:
                raise
            _say(f"swap: lock not available (attempt {attempt}/{s.attempts}), again in {pause:g} s")
            s.sleep(pause)
            pause = min(pause * 2, BACKOFF_MAX_S)


# --- rewrite_table_online (pg_repack) ---------------------------------------------------------
REPACK_INSTALL = (
    "on the database server: apt-get install postgresql-{major}-repack (Debian/Ubuntu; the "
    "package of the server's major version), then as a superuser in the database: "
    "CREATE EXTENSION pg_repack"
)


def repack_key(s: Steps, table: str, schema: str | None) -> str | None:
    """The index pg_repack can key the copy on: the primary key, else a valid unique index
    without a predicate or expression on NOT NULL columns. None: there is none."""
    return s.value(
        "SELECT ic.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_class ic ON ic.oid = i.indexrelid "
        "WHERE c.relname = :table AND n.nspname = coalesce(:schema, current_schema()) "
        "AND i.indisvalid AND (i.indisprimary OR (i.indisunique AND i.indpred IS NULL "
        "AND i.indexprs IS NULL AND NOT EXISTS (SELECT 1 FROM pg_attribute a "
        "WHERE a.attrelid = c.oid AND a.attnum = ANY(i.indkey) AND NOT a.attnotnull))) "
        "ORDER BY i.indisprimary DESC, ic.relname LIMIT 1",
        table=table,
        schema=schema,
    )


def _relfilenode(s: Steps, table: str, schema: str | None) -> int | None:
    return s.value(
        "SELECT c.relfilenode FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = :table AND n.nspname = coalesce(:schema, current_schema()) "
        "AND c.relkind = 'r'",
        table=table,
        schema=schema,
    )


def repack_client(binary: str | None, major: int) -> tuple[str | None, str | None]:
    """(path, version) of the pg_repack client: ``binary``, else pg_repack on PATH, else the
    Debian place of the server's major version. (None, None): not found."""
    import shutil
    import subprocess

    candidates = (
        [binary]
        if binary
        else [
            shutil.which("pg_repack"),
            f"/usr/lib/postgresql/{major}/bin/pg_repack",
        ]
    )
    for path in filter(None, candidates):
        found = shutil.which(path)
        if not found:
            continue
        done = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
        words = done.stdout.split()
        return found, words[1] if len(words) > 1 and done.returncode == 0 else None
    return None, None


def repack_refusal(
    table: str,
    *,
    key: str | None,
    client: str | None,
    client_version: str | None,
    extension: str | None,
    available: str | None,
    major: int,
    binary: str | None,
) -> str | None:
    """Why pg_repack cannot rewrite the table (None: it can), with what to do."""
    nothing = "Nothing was changed."
    if key is None:
        return (
            f"rewrite_table_online of {table}: pg_repack needs a primary key or a unique index "
            f"on NOT NULL columns, and {table} has neither. {nothing} Add one online first "
            f"(op.add_unique_online('{table}_pkey', '{table}', [<columns>], primary_key=True)), "
            "or rewrite it with the lock (VACUUM FULL / CLUSTER / ALTER TABLE blocks readers "
            "and writers for the whole rewrite) in a maintenance window."
        )
    if extension is None:
        how = (
            "as a superuser in the database: CREATE EXTENSION pg_repack"
            if available
            else REPACK_INSTALL.format(major=major)
        )
        return (
            f"rewrite_table_online of {table}: the pg_repack extension is not installed in "
            f"this database{' (the server has it: ' + available + ')' if available else ''}. "
            f"{nothing} Install it: {how}; then run the migration again."
        )
    if client is None:
        return (
            f"rewrite_table_online of {table}: the pg_repack client "
            f"({binary or 'pg_repack on PATH'}) is not installed where alembic runs. {nothing} "
            f"Install the same version as the extension ({extension}): apt-get install "
            f"postgresql-{major}-repack there (or pass binary='/path/to/pg_repack')."
        )
    if client_version != extension:
        return (
            f"rewrite_table_online of {table}: the pg_repack client {client} is version "
            f"{client_version}, the extension in the database {extension}; pg_repack refuses "
            f"to run unless they match. {nothing} Install the client of version {extension}, "
            "or update the extension (ALTER EXTENSION pg_repack UPDATE) to the client's."
        )
    return None


@Operations.register_operation("rewrite_table_online")
class RewriteTableOnlineOp(MigrateOperation):
    """``op.rewrite_table_online("t", order_by=None, tablespace=None)``: the table rewritten
    by pg_repack (VACUUM FULL without ``order_by``, CLUSTER with it, SET TABLESPACE with
    ``tablespace``): a copy built while readers and writers go on, swapped in under a short
    ACCESS EXCLUSIVE lock. Refused, with the reason and what to do, when the table has no
    primary key / NOT NULL unique index, the extension or the client is missing or their
    versions differ."""

    def __init__(
        self,
        table_name: str,
        *,
        schema: str | None = None,
        order_by: str | None = None,
        tablespace: str | None = None,
        wait_timeout: int = 60,
        jobs: int = 1,
        binary: str | None = None,
    ):
        self.table_name, self.schema, self.order_by = table_name, schema, order_by
        self.tablespace, self.wait_timeout, self.jobs = tablespace, wait_timeout, jobs
        self.binary = binary

    @classmethod
    def rewrite_table_online(cls, operations, table_name, **kw):
        return operations.invoke(cls(table_name, **kw))


def _repack_argv(op: RewriteTableOnlineOp, client: str, info) -> list[str]:
    """pg_repack's command line: the migration's own server, database and user (the password
    goes in PGPASSWORD, never here); it gives up rather than kill a session holding the
    table when wait_timeout runs out."""
    qualified = f"{op.schema}.{op.table_name}" if op.schema else op.table_name
    argv = [client, "--table", qualified, "--wait-timeout", str(int(op.wait_timeout))]
    argv += ["--no-kill-backend", "--jobs", str(int(op.jobs))]
    argv += ["--order-by", op.order_by] if op.order_by else ["--no-order"]
    argv += ["--tablespace", op.tablespace] if op.tablespace else []
    if info.host:
        argv += ["--host", str(info.host)]
    argv += ["--port", str(info.port), "--username", str(info.user), "--no-password"]
    return argv + ["--dbname", str(info.dbname)]


def _repack_facts(s: Steps, op: RewriteTableOnlineOp) -> dict:
    major = int(s.value("SELECT current_setting('server_version_num')::int / 10000"))
    key = repack_key(s, op.table_name, op.schema)
    client, version = repack_client(op.binary, major) if key else (None, None)
    return {
        "key": key,
        "client": client,
        "client_version": version,
        "extension": s.value("SELECT extversion FROM pg_extension WHERE extname = 'pg_repack'"),
        "available": s.value(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_repack'"
        ),
        "major": major,
        "binary": op.binary,
    }


def _run_shown(argv: list[str], env: dict) -> tuple[int, str]:
    """Run a client, its lines shown as they come (progress); (exit status, its last line)."""
    import subprocess

    last = ""
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        for line in proc.stdout:
            if line.strip():
                last = line.strip()
                _say(f"pg_repack: {last}")
    return proc.returncode, last or f"exit status {proc.returncode}"


@Operations.implementation_for(RewriteTableOnlineOp)
def _rewrite_table_online(operations, op: RewriteTableOnlineOp) -> None:
    import os

    s = Steps(operations, LOCK_TIMEOUT, ATTEMPTS)
    table = op.table_name
    if s.offline:
        raise OnlineOperationError(
            f"rewrite_table_online of {table} runs pg_repack against the live database: it "
            "cannot be written as offline SQL. Nothing was emitted for it."
        )
    with s.session():
        before = _relfilenode(s, table, op.schema)
        if before is None:
            raise OnlineOperationError(
                f"rewrite_table_online: no table {table}. Nothing was changed."
            )
        facts = _repack_facts(s, op)
        refusal = repack_refusal(table, **facts)
        if refusal:
            raise OnlineOperationError(refusal)
        info = s.conn.connection.dbapi_connection.info
        # not the migration's PGOPTIONS: its statement_timeout would cut the copy short
        env = {k: v for k, v in os.environ.items() if k != "PGOPTIONS"}
        env["PGPASSWORD"] = info.password or ""
        _say(f"pg_repack {facts['client_version']} rewrites {table} (key {facts['key']})")
        code, last = _run_shown(_repack_argv(op, facts["client"], info), env)
        after = _relfilenode(s, table, op.schema)
    if code != 0 or after == before:
        raise OnlineOperationError(
            f"pg_repack did not rewrite {table}: {last}. {table} is as before (its file was "
            "not swapped). If pg_repack was killed, its leftovers (a repack trigger on the "
            "table, tables in schema repack) go with: DROP EXTENSION pg_repack CASCADE; "
            "CREATE EXTENSION pg_repack. Then run the migration again."
        )
    _say(f"{table} rewritten by pg_repack")
