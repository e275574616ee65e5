"""What every handler gets: the alembic project and the database, opened lazily."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from dbops.agent import db, version_table

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
        self._script: ScriptDirectory | None = None
        self._script_files: tuple = ()

    # --- alembic -----------------------------------------------------------
    def config(self) -> Config:
        """A fresh Config each time (alembic commands mutate attributes)."""
        from alembic.config import Config

        cfg = Config(self.ini, stdout=io.StringIO())
        return cfg

    def script(self) -> ScriptDirectory:
        """The project's script directory, loaded once per agent while its files are unchanged
        (every revision file is executed on load: 40 revisions, ~0.3 s each time). Every
        alembic command this agent runs on the same alembic.ini gets this one (share_scripts)."""
        from alembic.script import ScriptDirectory

        share_scripts(self)
        if self._script is not None and self._script_files == self._files(self._script):
            return self._script
        script = _ORIGINAL_FROM_CONFIG(ScriptDirectory, self.config())
        self._script, self._script_files = script, self._files(script)
        return script

    @staticmethod
    def _files(script: ScriptDirectory) -> tuple:
        """What a reload would see differently: each revision folder's .py files and times."""
        out = []
        for folder in [script.dir, *script._version_locations]:
            try:
                with os.scandir(folder) as entries:
                    out += sorted(
                        (e.path, e.stat().st_mtime_ns) for e in entries if e.name.endswith(".py")
                    )
            except OSError:
                continue
        return tuple(out)

    def current_heads(self, dbname: str | None = None) -> list[str]:
        """The version rows (empty: no version table or no row)."""
        from alembic.runtime.migration import MigrationContext

        eng = db.engine(dbname)
        try:
            with eng.connect() as conn:
                mc = MigrationContext.configure(conn, opts=version_table.alembic_opts())
                return sorted(mc.get_current_heads())
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


_ORIGINAL_FROM_CONFIG = None
_SHARED: dict[str, AgentContext] = {}  # alembic.ini -> the context whose script it gets


def share_scripts(ctx: AgentContext) -> None:
    """``ScriptDirectory.from_config`` (what every alembic command calls) answers with
    ``ctx.script()`` for ctx's alembic.ini, once installed; any other ini loads as usual."""
    global _ORIGINAL_FROM_CONFIG
    from alembic.script import ScriptDirectory

    _SHARED[ctx.ini] = ctx
    if _ORIGINAL_FROM_CONFIG is not None:
        return
    original = ScriptDirectory.from_config.__func__

    def from_config(cls, config):
        name = config.config_file_name
        owner = _SHARED.get(str(Path(name).resolve())) if name else None
        return owner.script() if owner is not None else original(cls, config)

    _ORIGINAL_FROM_CONFIG = original
    ScriptDirectory.from_config = classmethod(from_config)
