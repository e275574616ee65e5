"""DB side of a restore: the new database, its checks, the swap by rename. (Issue 3.)

    restore.facts    server version, the live database's encoding/locale, sessions
    restore.create   sweeps this database's stale restore targets, creates a new empty one
    restore.check    tables present, alembic revision and row counts equal the manifest's
    restore.swap     live -> <db>_dbops_old_<time>, new -> live (sessions terminated); also the
                     undo of a restore: the kept <db>_dbops_old_<time> is the "new" one
    restore.drop     drops a restore target (a failed restore) or a kept old database
All but facts need the dbops lock. The lock lives in the maintenance database, so the
renames are not blocked by it; the agent's own connections to the live database are
closed before the swap.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from dbops.agent import db, lock
from dbops.agent.backup import count_rows, table_names
from dbops.agent.db import one_line
from dbops.agent.lock import maintenance_db, require_lock
from dbops.agent.protocol import AgentFailure, handler
from dbops.agent.scratch import leftover, like_database

RESTORING = "_dbops_restoring_"
OLD = "_dbops_old_"


def _prefix(database: str, room: int) -> str:
    if len(database.encode()) <= room:
        return database
    return (
        database.encode()[: room - 5].decode(errors="ignore")
        + format(zlib.crc32(database.encode()) & 0xFFFF, "04x")
        + "_"
    )


def derived_name(database: str, kind: str) -> str:
    ts = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{_prefix(database, 63 - len(kind) - len(ts))}{kind}{ts}"


def _like(text: str) -> str:
    return re.sub(r"([_%\\])", r"\\\1", text)


def _maint(app: str, *, server_major: int = 0):
    """A connection to the maintenance database. With the server's major (14+): the server
    notices within a second when this agent is gone (client_connection_check_interval) and
    cancels what the connection runs, so a swap cannot go on after its agent was killed."""
    if server_major >= 14:
        options = os.environ.get("PGOPTIONS", "") + " -c client_connection_check_interval=1s"
        return db.connect(maintenance_db(), application_name=app, options=options.strip())
    return db.connect(maintenance_db(), application_name=app)


def stale_targets(database: str) -> list[dict]:
    """This database's restore targets (<db>_dbops_restoring_*) in the shape of
    scratch.leftovers: in use while a dbops operation holds this database's lock or a session
    is in one (a restore is loading it); else left by a killed restore, which the next restore
    of this database sweeps."""
    like = _like(_prefix(database, 63 - len(RESTORING) - 16) + RESTORING) + "%"
    with _maint("dbops:restore targets") as m:
        running = lock.holder(m, database)
        rows = m.execute(
            "SELECT d.datname, CASE WHEN has_database_privilege(d.oid, 'CONNECT') "
            "THEN pg_database_size(d.oid) END, (SELECT count(*) FROM pg_stat_activity a "
            "WHERE a.datname = d.datname AND a.pid <> pg_backend_pid()) "
            "FROM pg_database d WHERE d.datname LIKE %s ORDER BY 1",
            [like],
        ).fetchall()
    found = []
    for name, size, connected in rows:
        used = (
            f"a dbops operation on {database} is running: {lock.describe_holder(running)}"
            if running
            else f"{connected} session(s) connected"
            if connected
            else None
        )
        made_by = f"invoke restore of {database} (its new copy, before the swap)"
        found.append(leftover(name, size, "restoring", made_by, used))
    return found


def sessions(conn, database: str) -> list[dict]:
    rows = conn.execute(
        "SELECT pid, usename, application_name, coalesce(host(client_addr), 'local'), state "
        "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        [database],
    ).fetchall()
    return [
        {"pid": r[0], "user": r[1], "application_name": r[2], "client": r[3], "state": r[4]}
        for r in rows
    ]


def _close_live(ctx) -> None:
    for attr in ("_conn", "snapshot_conn"):
        c = getattr(ctx, attr, None)
        if c is not None and not c.closed:
            c.close()
        setattr(ctx, attr, None)


def _live_revisions(ctx, database: str) -> list[str] | None:
    """The live database's version rows (None when it cannot be read: a restore over a broken
    database must still be possible). The connection is closed at once: not a session later."""
    try:
        with db.connect(database, application_name=f"dbops:restore facts {ctx.operator}") as c:
            return db.version_rows(c)
    except psycopg.Error:
        return None


@handler("restore.facts")
def facts(ctx) -> dict:
    database = db.database()
    try:
        with _maint("dbops:restore facts") as m:
            num, version = m.execute(
                "SELECT current_setting('server_version_num')::int, "
                "current_setting('server_version')"
            ).fetchone()
            row = m.execute(
                "SELECT row_to_json(d) FROM pg_database d WHERE datname = %s", [database]
            ).fetchone()
            kept = [
                r[0]
                for r in m.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                    [_like(_prefix(database, 63 - len(OLD) - 16) + OLD) + "%"],
                ).fetchall()
            ]
            live_sessions = sessions(m, database)
            size = m.execute(
                "SELECT pg_database_size(%s) FROM pg_database WHERE datname = %s",
                [database, database],
            ).fetchone()
        revisions = (
            _live_revisions(ctx, database)
            if row is not None and row[0].get("datallowconn", True)
            else None
        )
    except psycopg.Error as exc:
        raise AgentFailure(f"cannot reach the server: {one_line(exc)}", kind="connect") from None
    return {
        "database": database,
        "server_version_num": num,
        "server_version": version,
        "exists": row is not None,
        "kept_old": kept,
        "sessions": live_sessions,
        "revisions": revisions,
        "database_size": size[0] if size else 0,
        "encoding": (row[0] or {}).get("encoding") if row else None,
    }


@handler("restore.create")
def create(ctx) -> dict:
    require_lock(ctx)
    database = db.database()
    swept = []
    with _maint(f"dbops:restore {ctx.operator}") as m:
        for (name,) in m.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            [_like(_prefix(database, 63 - len(RESTORING) - 16) + RESTORING) + "%"],
        ).fetchall():
            # We hold the lock: a restore target left behind is from a killed restore.
            m.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            swept.append(name)
        row = m.execute(
            "SELECT r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
            "WHERE d.datname = %s",
            [database],
        ).fetchone()
        name = derived_name(database, RESTORING)
        q = sql.SQL("CREATE DATABASE {} TEMPLATE template0 {}").format(
            sql.Identifier(name), like_database(m, database)
        )
        try:
            m.execute(q + sql.SQL(" OWNER {}").format(sql.Identifier(row[0])) if row else q)
        except psycopg.errors.InsufficientPrivilege:
            m.execute(q)
        except psycopg.Error as exc:
            raise AgentFailure(
                f"cannot create the restore target database: {one_line(exc)}", kind="create"
            ) from None
        if row:  # ALTER DATABASE … SET settings are not in a dump: carry the live ones over
            for (setting,) in m.execute(
                "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d "
                "ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0",
                [database],
            ).fetchall():
                key, _, value = setting.partition("=")
                m.execute(
                    sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                        sql.Identifier(name), sql.Identifier(key), sql.Literal(value)
                    )
                )
    return {"name": name, "swept": swept}


@handler("restore.scratch")
def scratch_create(_ctx) -> dict:
    """An empty scratch database for verify-backup --restore-test and drill (no lock: live is
    not touched). First the copies killed runs left (their maker's lock free, nobody
    connected) are dropped, as rehearse does with its own."""
    from dbops.agent import scratch

    swept = []
    for item in scratch.leftovers(scratch.PREFIX + "restoretest_"):
        if not item["in_use"]:
            scratch.drop(item["name"])
            swept.append(item["name"])
    return {"name": scratch.create("restoretest"), "swept": swept}


@handler("restore.scratch_drop")
def scratch_drop(_ctx, name: str) -> dict:
    from dbops.agent import scratch

    return scratch.drop_own(name, scratch.PREFIX, "a scratch database")


@handler("restore.check")
def check(ctx, name: str, tables: dict, revisions: list) -> dict:
    try:
        with db.connect(name, application_name=f"dbops:restore check {ctx.operator}") as conn:
            present = {f"{s}.{t}": (s, t) for s, t in table_names(conn)}
            missing = sorted(set(tables) - set(present))
            counts = count_rows(conn, [present[k] for k in sorted(present) if k in tables])
            heads = db.version_rows(conn)  # without loading alembic: ~0.2 s of every restore
    except psycopg.Error as exc:
        raise AgentFailure(
            f"checking the restored database failed: {one_line(exc)}", kind="check"
        ) from None
    wrong = {
        k: {"manifest": tables[k], "restored": counts[k]} for k in counts if counts[k] != tables[k]
    }
    problems = []
    if missing:
        problems.append(f"tables missing: {', '.join(missing[:10])}")
    if wrong:
        problems.append(
            "row counts differ: "
            + ", ".join(
                f"{k} {v['restored']} (manifest {v['manifest']})"
                for k, v in list(wrong.items())[:10]
            )
        )
    if sorted(heads) != sorted(revisions):
        problems.append(
            f"alembic revision {heads or ['base']} differs from the manifest's "
            f"{revisions or ['base']}"
        )
    if problems:
        raise AgentFailure(
            "the restored database does not match the backup: " + "; ".join(problems),
            kind="check",
            missing=missing,
            wrong=wrong,
            heads=heads,
        )
    return {
        "tables": len(counts),
        "rows": sum(counts.values()),
        "revisions": heads,
        "extra_tables": sorted(set(present) - set(tables)),
    }


@handler("restore.drop")
def drop(ctx, name: str) -> dict:
    """Drops a restore target (a failed restore) or, under the lock, a kept old database
    (restore --drop-old, after its verified pre-restore backup)."""
    if RESTORING not in name and not (
        OLD in name and name.startswith(_prefix(db.database(), 63 - len(OLD) - 16))
    ):
        raise AgentFailure(
            f"internal: refusing to drop {name!r} (not a restore target)", kind="internal"
        )
    if OLD in name:
        require_lock(ctx)
    with _maint(f"dbops:restore {ctx.operator}") as m:
        m.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return {"dropped": name}


def _rename_back(m, old: str, live: str, exc: psycopg.Error) -> None:
    """The restored copy could not be renamed in: put the live database back (name, then
    connections). Always raises: what happened, and where the database is."""
    ident = sql.Identifier
    try:
        m.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(old), ident(live)))
        m.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(live)))
    except psycopg.Error as again:  # the server went away mid-swap: the catalog says the rest
        raise AgentFailure(
            f"could not rename the restored database into place: {one_line(exc)}; renaming "
            f"{old} back to {live} failed too ({one_line(again)}): once the server is up, "
            f"invoke restore-undo finishes or undoes the swap",
            kind="swap",
            stage="rename-back",
        ) from None
    raise AgentFailure(
        f"could not rename the restored database into place: {one_line(exc)}; "
        f"{live} was renamed back and is unchanged",
        kind="swap",
        stage="rename-new",
    ) from None


@handler("restore.swap")
def swap(ctx, name: str, attempts: int = 20) -> dict:
    require_lock(ctx)
    live = db.database()
    major = ctx.conn.info.server_version // 10000  # read before the live connection closes
    _close_live(ctx)
    ident = sql.Identifier
    terminated: list[dict] = []
    with _maint(f"dbops:restore swap {ctx.operator}", server_major=major) as m:
        old = derived_name(live, OLD)
        # a swap back within the second of the restore: the kept name must be new
        while m.execute("SELECT 1 FROM pg_database WHERE datname = %s", [old]).fetchone():
            time.sleep(0.2)
            old = derived_name(live, OLD)
        m.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident(live)))
        try:
            for attempt in range(attempts):
                for s in sessions(m, live):
                    m.execute("SELECT pg_terminate_backend(%s)", [s["pid"]])
                    terminated.append(s)
                try:
                    m.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(live), ident(old))
                    )
                    break
                except psycopg.errors.ObjectInUse:
                    if attempt == attempts - 1:
                        raise
                    time.sleep(0.1 * (attempt + 1))
        except psycopg.Error as exc:
            m.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(live)))
            raise AgentFailure(
                f"could not rename {live} out of the way: {one_line(exc)}; it is "
                f"unchanged and open again",
                kind="swap",
                stage="rename-live",
            ) from None
        try:
            m.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(name), ident(live)))
        except psycopg.Error as exc:
            _rename_back(m, old, live, exc)
        m.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(old)))
    return {"old": old, "live": live, "terminated": terminated}
