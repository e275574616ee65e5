"""An interrupted restore swap (dbops/agent/restore.py ``swap``: live closed to connections,
live renamed to <db>_dbops_old_<time>, the restored copy renamed in, the old one reopened),
read from the server's catalog and repaired by ``invoke restore-undo``:

    closed      live exists but refuses connections: reopened (it is unchanged)
    moved_away  live is gone, a closed <db>_dbops_old_* holds it: renamed back and reopened
                (the restored copy, <db>_dbops_restoring_*, is swept by the next restore)
    old_closed  the swap completed but the kept old database is still closed: reopened
"""

from __future__ import annotations

from psycopg import sql

from dbops.agent import db
from dbops.agent.lock import require_lock
from dbops.agent.protocol import handler
from dbops.agent.restore import OLD, RESTORING, _like, _maint, _prefix

DATABASES_SQL = "SELECT datname, datallowconn FROM pg_database WHERE datname LIKE %s ORDER BY 1"


def read_state(m, live: str) -> dict:
    row = m.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", [live]).fetchone()
    olds = m.execute(DATABASES_SQL, [_like(_prefix(live, 63 - len(OLD) - 16) + OLD) + "%"])
    closed = [name for name, allow in olds.fetchall() if not allow]
    restoring = [
        r[0]
        for r in m.execute(
            DATABASES_SQL, [_like(_prefix(live, 63 - len(RESTORING) - 16) + RESTORING) + "%"]
        ).fetchall()
    ]
    kind = None
    if row is None and closed:
        kind = "moved_away"
    elif row is not None and not row[0]:
        kind = "closed"
    elif row is not None and closed:
        kind = "old_closed"
    return {
        "interrupted": kind,
        "live": live,
        "old": closed[-1] if closed else None,
        "restoring": restoring,
    }


@handler("swap.state")
def state(ctx) -> dict:
    with _maint(f"dbops:restore facts {ctx.operator}") as m:
        return read_state(m, db.database())


@handler("swap.repair")
def repair(ctx) -> dict:
    require_lock(ctx)
    live = db.database()
    ident = sql.Identifier
    with _maint(f"dbops:restore repair {ctx.operator}") as m:
        st = read_state(m, live)
        kind, old = st["interrupted"], st["old"]
        allow = sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true")
        if kind == "closed":
            m.execute(allow.format(ident(live)))
            said = f"reopened {live}: the swap had not renamed it, it is unchanged"
        elif kind == "moved_away":
            m.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(old), ident(live)))
            m.execute(allow.format(ident(live)))
            said = (
                f"renamed {old} back to {live} and reopened it: the swap had moved it away "
                f"but not put the restored copy in"
            )
        elif kind == "old_closed":
            m.execute(allow.format(ident(old)))
            said = (
                f"the swap had completed ({live} is the restored database); reopened the kept "
                f"{old} (the undo of that restore: invoke restore-undo --name {old})"
            )
        else:
            said = "no interrupted swap"
    return {**st, "repaired": kind, "said": said}
