"""An "applying" audit line with no outcome after it: the host recorded that a revision was
about to be applied (steps.Run.applying; its commit waits for the host's word, see
dbops/agent/lifeline.py) and then died (kill -9, the machine or container gone) before it
could record what happened.

The next migrate, rollback or stamp settles it once it holds the dbops lock (nothing else can
be running then): it reads the version row and appends the missing outcome, ``result:
host_died`` with ``committed`` true or false as the database says. ``invoke doctor`` names such
a line; ``invoke doctor --settle`` writes the same record without running anything else."""

from __future__ import annotations

from dbops import audit
from dbops.agent_client import Agent
from dbops.config import Settings
from dbops.ops.output import Out
from dbops.ops.status import label

SETTLE_COMMAND = "invoke doctor --settle"


def unsettled(settings: Settings) -> list[dict]:
    """The "applying" lines of this database whose operation wrote nothing after them."""
    last: dict[str, dict] = {}
    for rec in audit.read(settings):
        if rec.get("database") == settings.database and rec.get("op_id"):
            last[rec["op_id"]] = rec
    return [r for r in last.values() if r.get("result") == "applying"]


def describe(rec: dict) -> str:
    return (
        f"{rec.get('action')} by {rec.get('operator')} at {rec.get('ts')} recorded that it was "
        f"applying {rec.get('revision')} ({rec.get('direction')}) and nothing after: "
        f"its process died"
    )


def committed(rec: dict, facts: dict) -> bool:
    applied = bool(facts["applied"].get(rec.get("revision")))
    return applied if rec.get("direction", "up") == "up" else not applied


def settle(settings: Settings, agent: Agent, out: Out, by: str) -> list[dict]:
    """Append the outcome of every unsettled line, read from the database through ``agent``
    (which holds the dbops lock). Returns the records written."""
    pending = unsettled(settings)
    if not pending:
        return []
    facts = agent.call("settle.read", revisions=sorted({r.get("revision") for r in pending}))
    written = []
    for rec in pending:
        did = committed(rec, facts)
        out(
            f"settled: {describe(rec)}; the version row ({label(facts['current'])}) says "
            f"{rec.get('revision')} {'DID' if did else 'did NOT'} commit"
        )
        written.append(
            audit.append(
                settings,
                rec.get("action", "migrate"),
                op_id=rec["op_id"],
                result="host_died",
                revision=rec.get("revision"),
                direction=rec.get("direction"),
                committed=did,
                to=facts["current"],
                settled_by=by,
            )
        )
    return written


def settle_now(settings: Settings, out: Out) -> list[dict]:
    """``invoke doctor --settle``: under the dbops lock (refused when an operation runs)."""
    from dbops.agent_client import AgentError
    from dbops.errors import OpsError

    if not unsettled(settings):
        return []
    with Agent(settings) as agent:
        try:
            agent.call("lock.acquire", purpose="settle")
        except AgentError as exc:
            raise OpsError(
                f"cannot settle now: {exc.message}",
                state="unchanged (an operation may be running: its line is not orphaned yet)",
                next_command=f"wait for it to finish, then: {SETTLE_COMMAND}",
            ) from None
        return settle(settings, agent, out, "doctor --settle")
