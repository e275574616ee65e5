"""The table alembic keeps the revision in: ``alembic_version`` unless the project's env.py
passes ``version_table`` / ``version_table_schema`` to ``context.configure``.

The host passes ``DBOPS_VERSION_TABLE`` (``table`` or ``schema.table``) to the agent explicitly;
every read of the version rows, every exclusion of the bookkeeping table (fingerprints, traces,
the touched set) and dbops' own ``MigrationContext`` use it. env.py's own choice is compared
with it when env.py configures, before its first statement: a project whose env.py keeps the
revision elsewhere is refused with the setting to add, never read from the wrong table (which
would make every revision look pending).
"""

from __future__ import annotations

import os

from dbops.agent.protocol import AgentFailure

DEFAULT = "alembic_version"


def configured() -> tuple[str | None, str]:
    """(schema or None, table) from DBOPS_VERSION_TABLE."""
    raw = os.environ.get("DBOPS_VERSION_TABLE", "").strip() or DEFAULT
    schema, _, table = raw.rpartition(".")
    return (schema or None, table)


def name() -> str:
    return configured()[1]


def label() -> str:
    """As the user writes it: ``alembic_version`` or ``schema.table``."""
    schema, table = configured()
    return f"{schema}.{table}" if schema else table


def identifier():
    """The table in SQL, a psycopg ``sql.Identifier`` (quoted; schema-qualified when set).
    psycopg is imported here: the fingerprint module, which uses this one, is imported on the
    host with the standard library only."""
    from psycopg import sql

    schema, table = configured()
    return sql.Identifier(schema, table) if schema else sql.Identifier(table)


def regclass_text() -> str:
    """The table for ``to_regclass(%s)`` (quoted identifiers: a capital or a dot survives)."""
    schema, table = configured()
    quoted = '"' + table.replace('"', '""') + '"'
    return ('"' + schema.replace('"', '""') + '".' + quoted) if schema else quoted


def is_it(qualified: str) -> bool:
    """``schema.table`` (or a bare table name) is the version table."""
    schema, table = configured()
    got_schema, _, got_table = qualified.rpartition(".")
    if got_table.strip('"').lower() != table.lower():
        return False
    return schema is None or not got_schema or got_schema.strip('"').lower() == schema.lower()


def alembic_opts() -> dict:
    """For dbops' own ``MigrationContext.configure(conn, opts=...)``."""
    schema, table = configured()
    return {"version_table": table, "version_table_schema": schema}


class Mismatch(AgentFailure):
    """env.py keeps the revision in another table than DBOPS_VERSION_TABLE says (kind
    "version_table"; ``theirs`` is the value to set)."""

    def __init__(self, message: str, theirs: str):
        super().__init__(message, kind="version_table", theirs=theirs)


def compare(kwargs: dict) -> None:
    """env.py's ``context.configure(**kwargs)`` against the setting; raises :class:`Mismatch`."""
    table = kwargs.get("version_table") or DEFAULT
    schema = kwargs.get("version_table_schema") or None
    theirs = f"{schema}.{table}" if schema else table
    if (schema, table) != configured():
        raise Mismatch(
            f"env.py keeps the revision in {theirs} (context.configure version_table"
            f"{'/version_table_schema' if schema else ''}) but dbops reads {label()}: set "
            f"DBOPS_VERSION_TABLE={theirs} in .env (stopped at context.configure, before "
            f"env.py's first statement on the database)",
            theirs,
        )


_INSTALLED = False


def install() -> None:
    """Check every ``EnvironmentContext.configure`` env.py makes (before any statement)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from alembic.runtime.environment import EnvironmentContext

    original = EnvironmentContext.configure

    def configure(self, *args, **kwargs):
        compare(kwargs)
        return original(self, *args, **kwargs)

    EnvironmentContext.configure = configure
    _INSTALLED = True


def set_rows(conn, revisions: list[str]) -> None:
    """Make the version rows ``revisions`` (a schema-only copy has the table, not its rows)."""
    from psycopg import sql

    conn.execute(sql.SQL("DELETE FROM {}").format(identifier()))
    for rev in revisions:
        conn.execute(
            sql.SQL("INSERT INTO {} (version_num) VALUES (%s)").format(identifier()), [rev]
        )
