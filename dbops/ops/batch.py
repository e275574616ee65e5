"""migrate's upgrade of several revisions in one alembic run (agent/batch.py): one env.py
execution for all of them, one transaction per revision, the version row verified after each.
A lock timeout goes on one revision at a time from the revision that hit it, with
steps.run_steps' retries; an env.py that holds one transaction around the whole run (alembic
cannot commit per revision then) goes one revision per run from the start."""

from __future__ import annotations

from collections.abc import Callable

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
    applying: Callable[[dict], bool] | None = None,
) -> None:
    """Apply ``revisions`` (pending, in order, ending at ``target``); completed steps are
    appended to ``done`` as run_steps appends them. ``applying`` (Run.applying) is the commit
    handshake: in one alembic run the agent asks before each revision's transaction commits,
    and this host records the revision (the applying audit line) before it says commit; a
    revision in ``autocommit_block()`` commits as it goes, so such a history goes one revision
    per run, where the line is written before the step starts (run_steps)."""
    if len(revisions) < 2:
        steps.run_steps(settings, agent, revisions, "up", out, done, applying=applying)
        return

    def ready(what: dict) -> bool:
        return what.get("revision") in revisions and (applying is None or applying(what))

    try:
        res = agent.call(
            "batch.upgrade",
            revisions=revisions,
            target=target,
            lock_timeout=settings.lock_timeout,
            statement_timeout=settings.statement_timeout,
            handshake=applying is not None,
            on_ready=ready,
        )
    except AgentError as exc:
        _after_failure(settings, agent, exc, revisions, out, done, applying)
        return
    if res.get("one_transaction") or res.get("not_transactional"):
        out(
            "  env.py holds one transaction around the whole run (a statement or begin() before "
            "context.configure): one alembic run per revision instead"
            if res.get("one_transaction")
            else "  a revision uses autocommit_block(): one alembic run per revision"
        )
        steps.run_steps(settings, agent, revisions, "up", out, done, applying=applying)
        return
    _record(res["steps"], out, done)


def _after_failure(
    settings: Settings,
    agent: Agent,
    exc: AgentError,
    revisions: list[str],
    out: Out,
    done: list[dict],
    applying: Callable[[dict], bool] | None,
) -> None:
    """The revisions the batched run completed are recorded; after a lock timeout the rest go
    one revision at a time, with retries; any other failure is raised."""
    completed = exc.agent_details.get("completed") or []
    _record(completed, out, done)
    if exc.kind != "lock_timeout":
        raise exc
    applied = {s["revision"] for s in completed}
    rest = [r for r in revisions if r not in applied]
    out(
        f"  lock_timeout ({settings.lock_timeout}) on {rest[0]}: rolled back; going on one "
        f"revision at a time, with retries"
    )
    steps.run_steps(settings, agent, rest, "up", out, done, applying=applying)


def _record(completed: list[dict], out: Out, done: list[dict]) -> None:
    for res in completed:
        res = {**res, "attempts": 1, "wall_seconds": res["seconds"]}
        done.append(res)
        out(f"  applied {res['revision']} in {res['seconds']:.2f} s")
