"""An "applying" audit line with no outcome after it: the host recorded that a change was
about to be committed (a revision: steps.Run.applying; a version-row rewrite by stamp or
recover --apply: their ``stamp_to``) and its commit waits for the host's word (see
dbops/agent/lifeline.py); then the host died (kill -9, the machine or container gone) before
it could record what happened.

The next migrate, rollback or stamp settles it once it holds the dbops lock (nothing else can
be running then): it reads the version row and appends the missing outcome, ``result:
host_died`` with ``committed`` true or false as the database says (dbops/lifecycle.py writes
it). ``invoke doctor`` names such a line; ``invoke doctor --settle`` writes the same record
without running anything else."""

from __future__ import annotations

from dbops import audit
from dbops.agent_client import Agent
from dbops.config import Settings
from dbops.lifecycle import write_settlement
from dbops.ops.output import Out, print_note
from dbops.ops.status import label

SETTLE_COMMAND = "invoke doctor --settle"


def unsettled(settings: Settings) -> list[dict]:
    """The "applying" lines of this database whose operation wrote nothing after them."""
    last: dict[str, dict] = {}
    for rec in audit.read(settings):
        if rec.get("database") == settings.database and rec.get("op_id"):
            last[rec["op_id"]] = rec
    return [r for r in last.values() if r.get("result") == "applying"]


def rewrites_rows(rec: dict) -> bool:
    """A stamp's or recover --apply's line: it names the version rows it writes, not a
    revision it runs."""
    return "stamp_to" in rec


def rows(names: list[str] | None) -> list[str]:
    return sorted(n for n in names or [] if n and n != "base")


def describe(rec: dict) -> str:
    who = f"{rec.get('action')} by {rec.get('operator')} at {rec.get('ts')} recorded that it was"
    if rewrites_rows(rec):
        return (
            f"{who} rewriting the version row {label(rows(rec.get('from')))} -> "
            f"{label(rows(rec.get('stamp_to')))} and nothing after: its process died"
        )
    return (
        f"{who} applying {rec.get('revision')} ({rec.get('direction')}) and nothing after: "
        f"its process died"
    )


def committed(rec: dict, facts: dict) -> bool | None:
    """Whether the change of ``rec`` committed, as the database says (``facts``: settle.read).
    None for a version-row rewrite when the rows are neither the old nor the new ones."""
    if rewrites_rows(rec):
        now = rows(facts["current"])
        if now == rows(rec.get("stamp_to")):
            return True
        return False if now == rows(rec.get("from")) else None
    applied = bool(facts["applied"].get(rec.get("revision")))
    return applied if rec.get("direction", "up") == "up" else not applied


def verdict(rec: dict, did: bool | None) -> str:
    what = "the rewrite" if rewrites_rows(rec) else rec.get("revision")
    if did is None:
        return f"neither the old nor the new rows: {what} committed, then something else changed it"
    return f"{what} {'DID' if did else 'did NOT'} commit"


def outcome(rec: dict, facts: dict, did: bool | None, by: str) -> dict:
    """The fields of the settled record (what the dead run would have written)."""
    if rewrites_rows(rec):
        fields = {"from": rec.get("from"), "stamp_to": rec.get("stamp_to")}
    else:
        fields = {"revision": rec.get("revision"), "direction": rec.get("direction")}
    return {**fields, "committed": did, "to": facts["current"], "settled_by": by}


def settle(settings: Settings, agent: Agent, out: Out, by: str) -> list[dict]:
    """Append the outcome of every unsettled line, read from the database through ``agent``
    (which holds the dbops lock). Returns the records written."""
    pending = unsettled(settings)
    if not pending:
        return []
    revisions = {r.get("revision") for r in pending if not rewrites_rows(r)}
    facts = agent.call("settle.read", revisions=sorted(revisions))
    written = []
    for rec in pending:
        did = committed(rec, facts)
        out(
            f"settled: {describe(rec)}; the version row ({label(facts['current'])}) says "
            f"{verdict(rec, did)}"
        )
        fields = outcome(rec, facts, did, by)
        written.append(write_settlement(settings, rec, warn=print_note, **fields))
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
