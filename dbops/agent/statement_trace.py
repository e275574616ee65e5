"""Per-statement instrumentation of a migration run: SQLAlchemy class-level Engine events
that, after every statement and before every commit, read the relation locks the
migration's own backend holds (pg_locks for that pid, with the relation's relfilenode).

Locks last until the transaction ends, so the commit sample also catches statements run on
the raw DBAPI cursor (SQL a Python data migration issues without SQLAlchemy's events).

Used by
  - the touched set (dbops/agent/touched.py, LockTrace): which relations are locked how;
  - the rehearsal (dbops/agent/rehearse.py): per statement its wall time, the rows it
    wrote, the locks first seen after it; per lock the time it was first seen (the start of
    the statement that took it) and so how long it was held until commit; relfilenode
    changes against a baseline (a table rewrite).
"""

from __future__ import annotations

import time

# granted relation locks of this backend, with the relation's current relfilenode (which a
# rewrite changes inside the transaction: the migration's own backend sees the new one)
LOCKS_SQL = (
    "SELECT l.relation, l.mode, c.relfilenode FROM pg_locks l "
    "LEFT JOIN pg_class c ON c.oid = l.relation "
    "WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted"
)
SQL_KEPT = 400  # characters of each statement kept in a record


class StatementTrace:
    """Subclasses override ``on_statement`` / ``on_commit``; ``detail=True`` also keeps a record
    per statement and per held lock (``records``, ``holds``) and the rewrites (``rewrites``)
    against ``baseline`` (oid -> relfilenode, set by the caller before the run)."""

    def __init__(self, *, detail: bool = False, clock=time.monotonic):
        self.detail = detail
        self.clock = clock
        self.seen: dict[int, set[str]] = {}  # oid -> every mode seen
        self.statements = 0
        self.held: dict[int, set[tuple[int, str]]] = {}  # per backend: pairs held so far
        self.first_seen: dict[
            tuple[int, int, str], tuple[float, int]
        ] = {}  # (backend, oid, mode) -> (t, stmt)
        self.records: list[dict] = []
        self.holds: list[dict] = []
        self.baseline: dict[int, int] = {}
        self.rewrites: dict[int, int] = {}  # oid -> index of the statement
        self.tx_rows = 0  # rows written in the open transaction
        self.max_tx_rows = 0
        self.tx = 0  # number of the open transaction (each autocommit statement is its own)
        self.explicit: set[int] = set()  # backends in a BEGIN … COMMIT sent in autocommit mode
        self._t0: dict[int, float] = {}

    # --- hooks -------------------------------------------------------------------------
    def on_statement(
        self, statement: str, pairs: set[tuple[int, str]], new: set[tuple[int, str]]
    ) -> None:
        """After a statement: the pairs held now and those new since the last sample."""

    # --- sampling ----------------------------------------------------------------------
    def _read(self, dbapi_conn) -> list[tuple[int, str, int | None]] | None:
        try:
            with dbapi_conn.cursor() as cur:
                cur.execute(LOCKS_SQL)
                return [(int(oid), mode, node) for oid, mode, node in cur.fetchall()]
        except Exception:  # an aborted transaction: the failure itself is reported elsewhere
            return None

    def _sample(
        self,
        dbapi_conn,
        statement: str | None = None,
        started: float | None = None,
        rowcount: int = -1,
    ) -> None:
        rows = self._read(dbapi_conn)
        if rows is None:
            return
        pairs = {(oid, mode) for oid, mode, _ in rows}
        for oid, mode in pairs:
            self.seen.setdefault(oid, set()).add(mode)
        key = id(dbapi_conn)
        new = pairs - self.held.get(key, set())
        self.held[key] = pairs
        index = len(self.records)
        for oid, mode in new:  # taken during this statement: held from its start
            self.first_seen.setdefault(
                (key, oid, mode), (started if started is not None else self.clock(), index)
            )
        head = _head(statement) if statement is not None else ""
        if head in ("BEGIN", "START") and getattr(dbapi_conn, "autocommit", False):
            self.explicit.add(key)  # a transaction opened by hand on an autocommit connection
        in_explicit = key in self.explicit
        if self.detail and statement is not None:
            autocommit = bool(getattr(dbapi_conn, "autocommit", False)) and not in_explicit
            rewritten = []
            for oid, _, node in rows:
                if (
                    node
                    and oid in self.baseline
                    and self.baseline[oid] != node
                    and oid not in self.rewrites
                ):
                    self.rewrites[oid] = index
                    rewritten.append(oid)
            rows_written = rowcount if rowcount and rowcount > 0 and _writes(statement) else 0
            if not autocommit:
                self.tx_rows += rows_written
                self.max_tx_rows = max(self.max_tx_rows, self.tx_rows)
            self.records.append(
                {
                    "index": index,
                    "sql": " ".join(statement.split())[:SQL_KEPT],
                    "seconds": round(self.clock() - started, 4) if started is not None else None,
                    "rows": rows_written,
                    "autocommit": autocommit,
                    "locks": sorted([oid, mode] for oid, mode in new),
                    "rewrites": rewritten,
                    "tx": self.tx,
                }
            )
            if autocommit:
                self.tx += 1
        if statement is not None:
            self.on_statement(statement, pairs, new)
        if in_explicit and head in ("COMMIT", "ROLLBACK", "END", "ABORT"):
            self.explicit.discard(key)
            self._released(dbapi_conn)

    def _released(self, dbapi_conn) -> None:
        """The transaction ended: every lock first seen on this backend was held until now."""
        key = id(dbapi_conn)
        now = self.clock()
        for (k, oid, mode), (t, index) in list(self.first_seen.items()):
            if k == key:
                if self.detail:
                    self.holds.append(
                        {"oid": oid, "mode": mode, "statement": index, "seconds": round(now - t, 4)}
                    )
                del self.first_seen[(k, oid, mode)]
        self.held.pop(key, None)
        self.tx_rows = 0
        self.tx += 1

    # --- SQLAlchemy events ---------------------------------------------------------------
    @staticmethod
    def _dbapi(conn, cursor):
        """The cursor's DBAPI connection; an async engine's adapted cursor has none: its
        connection's adapted DBAPI connection (driven synchronously in the greenlet)."""
        return getattr(cursor, "connection", None) or conn.connection.dbapi_connection

    def before_execute(self, conn, cursor, statement, parameters, context, executemany):
        self._t0[id(self._dbapi(conn, cursor))] = self.clock()

    def after_execute(self, conn, cursor, statement, parameters, context, executemany):
        self.statements += 1
        dbapi = self._dbapi(conn, cursor)
        started = self._t0.pop(id(dbapi), None)
        try:
            rowcount = cursor.rowcount
        except Exception:
            rowcount = -1
        self._sample(dbapi, statement, started, rowcount)

    def before_commit(self, conn):
        dbapi = conn.connection.dbapi_connection
        self._sample(dbapi)
        self.on_commit(dbapi)

    def on_commit(self, dbapi_conn) -> None:
        self._released(dbapi_conn)

    def after_rollback(self, conn):
        dbapi = conn.connection.dbapi_connection
        if dbapi is not None:
            self._released(dbapi)

    def flush(self) -> None:
        """Locks still open at the end (a run that failed): held until now."""
        now = self.clock()
        for (_, oid, mode), (t, index) in self.first_seen.items():
            if self.detail:
                self.holds.append(
                    {"oid": oid, "mode": mode, "statement": index, "seconds": round(now - t, 4)}
                )
        self.first_seen.clear()

    EVENTS = (
        ("before_cursor_execute", "before_execute"),
        ("after_cursor_execute", "after_execute"),
        ("commit", "before_commit"),
        ("rollback", "after_rollback"),
    )

    def __enter__(self):
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        for name, method in self.EVENTS:
            event.listen(Engine, name, getattr(self, method))
        return self

    def __exit__(self, *exc):
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        for name, method in self.EVENTS:
            event.remove(Engine, name, getattr(self, method))


def _head(statement: str) -> str:
    return statement.lstrip().split(None, 1)[0].upper().rstrip(";") if statement.strip() else ""


def _writes(statement: str) -> bool:
    return _head(statement) in ("UPDATE", "DELETE", "INSERT", "MERGE", "WITH")
