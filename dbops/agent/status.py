"""Read-only: where the database is, and what the script directory offers."""

from __future__ import annotations

from alembic.script.revision import RevisionError
from alembic.util import CommandError

from dbops.agent import db
from dbops.agent.db import one_line
from dbops.agent.protocol import AgentFailure, handler


def applied_set(script, current: list[str]) -> set[str]:
    """Every revision at or below the current version rows (empty for unknown ids)."""
    applied: set[str] = set()
    for rev in current:
        try:
            applied.update(r.revision for r in script.iterate_revisions(rev, "base"))
        except (CommandError, RevisionError):  # an unknown id: nothing known to be applied
            pass
    return applied


def revision_info(rev) -> dict:
    return {
        "revision": rev.revision,
        "down_revision": rev.down_revision,
        "message": (rev.doc or "").strip(),
        "branch_labels": sorted(rev.branch_labels or []),
        "path": rev.path,
    }


@handler("status")
def status(ctx) -> dict:
    script = ctx.script()
    try:
        server = ctx.conn.execute("SHOW server_version").fetchone()[0]
        current = ctx.current_heads()
    except Exception as exc:  # unreachable, wrong password, missing database
        raise AgentFailure(
            f"cannot connect to database {db.database()}: {one_line(exc)}", kind="connect"
        ) from None
    known = {r.revision for r in script.walk_revisions()}
    applied = applied_set(script, current)
    heads = sorted(script.get_heads())
    history = []
    for rev in reversed(list(script.walk_revisions())):
        info = revision_info(rev)
        info.update(
            is_head=rev.revision in heads,
            applied=rev.revision in applied,
            is_current=rev.revision in current,
        )
        history.append(info)
    pending = [h["revision"] for h in history if not h["applied"]]
    return {
        "database": db.database(),
        "server_version": server,
        "current": current,
        "unknown_current": [c for c in current if c not in known],
        "heads": heads,
        "history": history,
        "pending": pending,
        "at_head": bool(current) and sorted(current) == heads,
    }
