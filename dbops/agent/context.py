"""What every handler gets: the alembic project and the database, opened lazily."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from dbops.agent import db

if TYPE_CHECKING:  # alembic is imported where it is used: a backup never needs it
    from alembic.config import Config
    from alembic.script import ScriptDirectory


class AgentContext:
    def __init__(self, ini: str):
        self.ini = str(Path(ini).resolve())
        self.operator = "unknown"  # who runs dbops: the host says in "hello"
        self.purpose = "dbops"
        self._conn: psycopg.Connection | None = None
        self.lock_conn: psycopg.Connection | None = None  # set by lock.acquire, held to exit
        self.snapshot_conn: psycopg.Connection | None = None

    # --- alembic -----------------------------------------------------------
    def config(self) -> Config:
        """A fresh Config each time (alembic commands mutate attributes)."""
        from alembic.config import Config

        cfg = Config(self.ini, stdout=io.StringIO())
        return cfg

    def script(self) -> ScriptDirectory:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self.config())

    def current_heads(self, dbname: str | None = None) -> list[str]:
        """The version rows (empty: no alembic_version table or no row)."""
        from alembic.runtime.migration import MigrationContext

        eng = db.engine(dbname)
        try:
            with eng.connect() as conn:
                return sorted(MigrationContext.configure(conn).get_current_heads())
        finally:
            eng.dispose()

    # --- database ----------------------------------------------------------
    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(application_name=f"dbops:{self.purpose} {self.operator}")
        return self._conn

    def cancel(self) -> None:
        """Cancel what the agent's own connections are running (thread-safe: a new socket)."""
        for c in (self._conn, self.snapshot_conn):
            if c is not None and not c.closed:
                c.cancel()

    def close(self) -> None:
        for c in (self._conn, self.snapshot_conn, self.lock_conn):
            if c is not None and not c.closed:
                c.close()
