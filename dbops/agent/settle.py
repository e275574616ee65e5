"""Read-only facts that settle an "applying" audit line left without an outcome: the version
rows now, and whether each named revision is applied (read from the database)."""

from __future__ import annotations

from dbops.agent.protocol import AgentFailure, handler
from dbops.agent.status import applied_set


@handler("settle.read")
def read(ctx, revisions: list[str]) -> dict:
    try:
        current = ctx.current_heads()
    except Exception as exc:  # noqa: BLE001
        raise AgentFailure(f"cannot read the version row: {exc}", kind="connect") from None
    script = ctx.script()
    applied = applied_set(script, current)
    return {"current": current, "applied": {r: r in applied for r in revisions}}
