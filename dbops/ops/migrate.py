"""invoke migrate: upgrade under the lock, then verify the revision."""

from __future__ import annotations

from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError
from dbops.ops.status import call_status, label


def migrate(settings: Settings, to: str = "head") -> dict:
    with Agent(settings) as agent:
        st = call_status(agent)
        if len(st["heads"]) > 1 and to in ("head", "heads"):
            raise OpsError(f"the script directory has {len(st['heads'])} heads: {', '.join(st['heads'])}",
                           state=f"unchanged at {label(st['current'])}",
                           next_command=f"alembic merge -m 'merge heads' {' '.join(st['heads'])}")
        try:
            agent.call("lock.acquire", purpose="migrate")
        except AgentError as exc:
            raise OpsError(exc.message, state=f"unchanged at {label(st['current'])}",
                           next_command="wait for it to finish, then re-run: invoke migrate") from None
        try:
            result = agent.call("migrate.upgrade", to=to, lock_timeout=settings.lock_timeout,
                                statement_timeout=settings.statement_timeout)
        except AgentError as exc:
            d = exc.agent_details
            raise OpsError(exc.message,
                           state=f"before: {label(d.get('before', []))}; now: {label(d.get('after', []))}",
                           next_command="invoke doctor") from None
    return {"status": st, **result}
