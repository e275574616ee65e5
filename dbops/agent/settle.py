"""Read-only facts that settle an "applying" audit line left without an outcome, and that an
interrupted host prints: the version rows now, and whether each named revision is applied
(read from the database). Without revisions alembic is not loaded (a fast read-back)."""

from __future__ import annotations

from dbops.agent import db
from dbops.agent.protocol import AgentFailure, handler


@handler("settle.read")
def read(ctx, revisions: list[str]) -> dict:
    try:
        current = sorted(db.version_rows(ctx.conn))
    except Exception as exc:  # noqa: BLE001
        raise AgentFailure(
            f"cannot read the version row: {db.one_line(exc)}", kind="connect"
        ) from None
    applied: set[str] = set()
    if revisions:
        from dbops.agent.status import applied_set

        applied = applied_set(ctx.script(), current)
    return {"current": current, "applied": {r: r in applied for r in revisions}}
