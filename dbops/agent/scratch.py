"""Scratch databases on the same server: ``dbops_scratch_<purpose>_<random>``, created empty
from template0 with the live database's encoding and locale, always dropped.

The connection that creates one (to the maintenance database) stays open holding a session
advisory lock on its name until it is dropped or the agent ends: a scratch database whose lock
nobody holds and that nobody is connected to is a leftover of a killed run (``leftovers``;
doctor names it with the command that drops it).

    scratch.leftovers   every dbops_scratch_* database on the server, and this database's
                        restore targets (<db>_dbops_restoring_*): its purpose, size, and
                        whether a running operation is using it
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql

from dbops.agent import db
from dbops.agent.lock import maintenance_db
from dbops.agent.protocol import AgentFailure, handler

PREFIX = "dbops_scratch_"
LOCK_CLASS = 0x7265  # pg_advisory_lock(LOCK_CLASS, hashtext(name)), held by the scratch's maker

# What made a scratch database, by the first word of its purpose (dbops_scratch_<word>_…).
PURPOSES = {
    "touched": "the touched-set run of a migrate (DBOPS_PREMIGRATE_BACKUP touched)",
    "rehearse": "invoke rehearse",
    "restoretest": "invoke verify-backup --restore-test or invoke drill",
    "check": "invoke check (the stairway)",
    "recover": "invoke recover or doctor (the expected schemas)",
    "downgrade": "the downgrade trace of a rollback plan (what the downgrades destroy)",
    "probe": "invoke doctor (where env.py connects)",
}

_held: dict[str, psycopg.Connection] = {}  # name -> the connection holding its lock


def like_database(conn: psycopg.Connection, database: str) -> sql.Composable:
    """CREATE DATABASE options giving ``database``'s encoding, collation, ctype and locale
    provider (a copy restored into other ones may fail to load, or sort and size differently;
    also restore's target). Nothing when it cannot be read: the server's defaults."""
    v = conn.info.server_version
    locale = "datlocale" if v >= 170000 else "daticulocale" if v >= 150000 else "NULL"
    provider = "datlocprovider" if v >= 150000 else "'c'"
    row = conn.execute(
        f"SELECT pg_encoding_to_char(encoding), datcollate, datctype, {provider}, "
        f"{locale} FROM pg_database WHERE datname = %s",
        [database],
    ).fetchone()
    if row is None:
        return sql.SQL("")
    enc, collate, ctype, prov, loc = row
    opts = [
        sql.SQL("ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Literal(enc), sql.Literal(collate), sql.Literal(ctype)
        )
    ]
    if prov == "i":
        opts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(loc)))
    elif prov == "b":
        opts.append(sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(sql.Literal(loc)))
    return sql.SQL(" ").join(opts)


def create(purpose: str) -> str:
    name = f"{PREFIX}{purpose}_{uuid.uuid4().hex[:8]}"[:63]
    conn = db.connect(maintenance_db(), application_name=f"dbops:scratch {purpose}")
    try:
        conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", [LOCK_CLASS, name])
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 {}").format(
                sql.Identifier(name), like_database(conn, db.database())
            )
        )
    except BaseException:
        conn.close()
        raise
    _held[name] = conn
    return name


def drop(name: str) -> None:
    with db.connect(maintenance_db(), application_name="dbops:scratch drop") as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
    holder = _held.pop(name, None)
    if holder is not None:
        holder.close()


def drop_own(name: str, prefix: str, what: str) -> dict:
    """A drop handler's body: drops ``name``, refused (a host bug) unless it starts with
    ``prefix``, the start of the names of the handler's own scratch databases (``what``)."""
    if not name.startswith(prefix):
        raise AgentFailure(f"internal: refusing to drop {name!r} (not {what})", kind="internal")
    drop(name)
    return {"dropped": name}


@contextlib.contextmanager
def scratch_database(purpose: str) -> Iterator[str]:
    name = create(purpose)
    try:
        yield name
    finally:
        drop(name)


LEFTOVERS_SQL = """
SELECT d.datname,
       CASE WHEN has_database_privilege(d.oid, 'CONNECT') THEN pg_database_size(d.oid) END,
       (SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid::bigint = %(cls)s
          AND l.objid::bigint = hashtext(d.datname)::bigint & 4294967295 LIMIT 1),
       (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname
          AND a.pid <> pg_backend_pid()),
       (SELECT a.application_name FROM pg_stat_activity a WHERE a.datname = d.datname
          AND a.pid <> pg_backend_pid() ORDER BY a.backend_start LIMIT 1)
FROM pg_database d WHERE starts_with(d.datname, %(prefix)s) ORDER BY 1
"""


def purpose_of(name: str) -> str:
    return name[len(PREFIX) :].split("_", 1)[0] if name.startswith(PREFIX) else "?"


def leftover(name: str, size: int | None, purpose: str, made_by: str, used: str | None) -> dict:
    """One row of ``scratch.leftovers`` (also restore.stale_targets'): ``used`` says by whom
    it is in use, None when nothing is using it."""
    return {
        "name": name,
        "bytes": None if size is None else int(size),
        "purpose": purpose,
        "made_by": made_by,
        "in_use": used is not None,
        "used_by": used,
    }


def leftovers(prefix: str = PREFIX) -> list[dict]:
    """Every scratch database whose name starts with ``prefix``: name, bytes, purpose (what made
    it), in_use (its maker's lock is held, or a session is connected to it) and by whom."""
    found = []
    with db.connect(maintenance_db(), application_name="dbops:scratch leftovers") as m:
        for name, size, holder, sessions, app in m.execute(
            LEFTOVERS_SQL, {"cls": LOCK_CLASS, "prefix": prefix}
        ).fetchall():
            word = purpose_of(name)
            used = (
                f"held by pid {holder} (the operation that made it is running)"
                if holder
                else f"{sessions} session(s) connected ({app or 'no application name'})"
                if sessions
                else None
            )
            found.append(leftover(name, size, word, PURPOSES.get(word, f"dbops ({word})"), used))
    return found


@handler("scratch.leftovers")
def list_leftovers(_ctx) -> dict:
    from dbops.agent import restore  # it imports this module

    return {"scratch": leftovers() + restore.stale_targets(db.database())}
