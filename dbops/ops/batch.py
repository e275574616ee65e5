"""migrate's upgrade of several revisions in one alembic run (agent/batch.py): one env.py
execution for all of them, one transaction per revision, the version row verified after each.
A lock timeout goes on one revision at a time from the revision that hit it, with
steps.run_steps' retries; an env.py that holds one transaction around the whole run (alembic
cannot commit per revision then) goes one revision per run from the start."""

from __future__ import annotations

from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.ops import steps
from dbops.ops.output import Out


def upgrade_all(
    settings: Settings,
    agent: Agent,
    revisions: list[str],
    target: str,
    out: Out,
    done: list[dict],
) -> None:
    """Apply ``revisions`` (pending, in order, ending at ``target``); completed steps are
    appended to ``done`` as run_steps appends them."""
    if len(revisions) < 2:
        steps.run_steps(settings, agent, revisions, "up", out, done)
        return
    try:
        res = agent.call(
            "batch.upgrade",
            revisions=revisions,
            target=target,
            lock_timeout=settings.lock_timeout,
            statement_timeout=settings.statement_timeout,
        )
    except AgentError as exc:
        completed = exc.agent_details.get("completed") or []
        _record(completed, out, done)
        if exc.kind != "lock_timeout":
            raise
        applied = {s["revision"] for s in completed}
        rest = [r for r in revisions if r not in applied]
        out(
            f"  lock_timeout ({settings.lock_timeout}) on {rest[0]}: rolled back; going on one "
            f"revision at a time, with retries"
        )
        steps.run_steps(settings, agent, rest, "up", out, done)
        return
    if res.get("one_transaction"):
        out(
            "  env.py holds one transaction around the whole run (a statement or begin() before "
            "context.configure): one alembic run per revision instead"
        )
        steps.run_steps(settings, agent, revisions, "up", out, done)
        return
    _record(res["steps"], out, done)


def _record(completed: list[dict], out: Out, done: list[dict]) -> None:
    for res in completed:
        res = {**res, "attempts": 1, "wall_seconds": res["seconds"]}
        done.append(res)
        out(f"  applied {res['revision']} in {res['seconds']:.2f} s")
