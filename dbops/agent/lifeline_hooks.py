"""What lifeline needs from SQLAlchemy (loaded with the migration handlers only): every DBAPI
connection a pool opens is tracked (its query is cancelled when the host goes), and the commit
gate of the handshake."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from dbops.agent.lifeline import LIFELINE

# How often a server running a migration statement checks that the agent is still connected
# (PostgreSQL 14+): an agent killed with -9 mid-statement is noticed within this, its
# transaction rolled back and its table locks freed, instead of when the statement ends.
CLIENT_CHECK_INTERVAL = "1s"


@event.listens_for(Pool, "connect")
def _track(dbapi_connection, _record) -> None:
    LIFELINE.track(dbapi_connection)


def client_check(ctx) -> dict[str, str]:
    """The client_connection_check_interval setting for PGOPTIONS, where the server has it."""
    try:
        major = ctx.conn.info.server_version // 10000
    except Exception:  # noqa: BLE001 - the step itself will say why the server is not there
        return {}
    return {"client_connection_check_interval": CLIENT_CHECK_INTERVAL} if major >= 14 else {}


@contextlib.contextmanager
def commit_gate(what: dict | None) -> Iterator[None]:
    """While the block runs, every commit on an Engine connection first asks the host
    (``what`` names the step); None: no gate. (A step that is not transactional commits as
    it goes: the host recorded it before it started, and a host gone stops it.)"""
    if what is None:
        yield
        return

    def ask(_conn) -> None:
        LIFELINE.ask_commit(what)

    event.listen(Engine, "commit", ask)
    try:
        yield
    finally:
        event.remove(Engine, "commit", ask)
