"""Upgrade under the dbops lock, with lock_timeout/statement_timeout, then verify."""

from __future__ import annotations

from alembic import command

from dbops.agent import db
from dbops.agent.lock import require_lock
from dbops.agent.protocol import AgentFailure, handler
from dbops.agent.status import one_line


def resolve_targets(script, to: str) -> list[str]:
    """The revision ids ``to`` names (heads for 'heads'/'head' with one head)."""
    if to in ("head", "heads"):
        return sorted(script.get_heads())
    return sorted(r.revision for r in script.get_revisions(to) if r is not None)


@handler("migrate.upgrade")
def upgrade(ctx, to: str = "head", lock_timeout: str = "2s", statement_timeout: str = "0") -> dict:
    require_lock(ctx)
    script = ctx.script()
    targets = resolve_targets(script, to)
    before = ctx.current_heads()
    try:
        with db.pg_options(lock_timeout=lock_timeout, statement_timeout=statement_timeout):
            command.upgrade(ctx.config(), to)
    except Exception as exc:
        after = ctx.current_heads()
        raise AgentFailure(f"upgrade to {to} failed: {one_line(exc)}", kind="upgrade",
                           before=before, after=after) from None
    after = ctx.current_heads()
    if after != targets:
        raise AgentFailure(f"upgrade finished but the database is at {after or ['base']}, "
                           f"not {targets}", kind="verify", before=before, after=after)
    return {"before": before, "after": after, "targets": targets}
