"""invoke stamp --to=REV: rewrite the version row, nothing else. Confirmed, locked, audited
(the previous version row goes into the audit record) through a lifecycle ``Operation``.

The commit handshake migrate has: before the agent is asked to rewrite the row the host
writes an "applying" line naming the rows it writes (``stamp_to``), and the agent's
transaction commits only when this host says so (dbops/agent/lifeline.py). A host killed
after that line leaves it for dbops/ops/settle.py; an agent that dies leaves ``agent_died``
with the version rows read back afresh."""

from __future__ import annotations

from dbops.agent_client import Agent, AgentDied, AgentError
from dbops.config import Settings
from dbops.confirm import confirm
from dbops.errors import OpsError
from dbops.lifecycle import Operation
from dbops.ops.output import Out, print_line, print_note
from dbops.ops.settle import settle
from dbops.ops.status import label
from dbops.ops.steps import acquire_lock, planned, rows_afresh

WARNING = (
    "stamp changes NO schema: it only rewrites the alembic_version row. Use it when the "
    "schema already IS at that revision (invoke doctor tells); stamping after a failed "
    "upgrade leaves the missing columns missing for good."
)


def show_plan(res: dict, out: Out) -> None:
    unknown = res["unknown_current"]
    msg = f"  {res['target_info']['message']}" if res.get("target_info") else ""
    out(
        f"version row now: {label(res['current'])}"
        + (f"  (UNKNOWN to the script directory: {', '.join(unknown)})" if unknown else "")
    )
    out(f"stamp to:        {res['target'] or 'base'}{msg}")
    out(f"warning: {WARNING}")


def stamp(settings: Settings, to: str, *, yes: bool = False, out: Out = print_line) -> dict:
    with Agent(settings) as agent:
        res = planned(agent, "plan.resolve", "stamp", to=to)
        current, target = res["current"], res["target"]
        show_plan(res, out)
        if current == ([target] if target else []):
            out(f"nothing to do: the version row already says {target or 'base'}")
            return {"before": current, "after": current, "target": target}
        confirm(
            settings,
            f"Stamp {label(current)} -> {target or 'base'}?",
            yes=yes,
            state=f"unchanged at {label(current)}",
            next_command=f"invoke stamp --to={to} --yes",
        )
        acquire_lock(agent, "stamp", current, f"stamp --to={to}")
        settle(settings, agent, out, "stamp")  # a run that died applying: its outcome
        after = stamped(settings, agent, res, to)
    return {"before": current, "after": after, "target": target}


def stamped(settings: Settings, agent: Agent, res: dict, to: str) -> list[str]:
    """The rewrite inside its Operation (the lock held); the version rows after it."""
    current, target = res["current"], res["target"]
    record = {
        "from": current,
        "previous_version_rows": current,
        "requested": to,
        "to_target": target,
        "backup": None,
        "schema_changed": False,
    }
    with Operation(settings, "stamp", warn=print_note, **record) as op:
        done = apply(agent, op, current, target)
        hashes = {target: res["target_info"]["sha256"]} if target else {}
        op.finish(to=done["after"], purged_unknown=done["purged"], revision_hashes=hashes)
    return done["after"]


def apply(agent: Agent, op: Operation, current: list[str], target: str | None) -> dict:
    """Record the intent, then have the agent rewrite the row, committing on our word."""
    rows = [target] if target else []
    op.intent(
        "applying",
        unchanged=f"the version row was not changed (still {label(current)})",
        stamp_to=rows,
        **{"from": current},
    )
    try:
        return agent.call(
            "stamp.apply",
            to=target,
            handshake=True,
            on_ready=lambda what: what.get("stamp_to") == rows,
        )
    except AgentError as exc:
        after = exc.agent_details.get("after", current)
        op.add(to=after, error_kind=exc.kind)
        raise OpsError(
            exc.message,
            state=f"before: {label(current)}; now: {label(after)}",
            next_command="invoke current",
        ) from exc
    except AgentDied as exc:  # the agent died: its transaction rolled back with its connection
        raise cut_short(agent, op, current, f"stamp stopped: {exc.message}", "agent_died") from exc
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the agent was stopped first
        raise cut_short(agent, op, current, "stamp interrupted", "interrupted") from exc


def cut_short(
    agent: Agent,
    op: Operation,
    current: list[str],
    message: str,
    result: str = "agent_died",
    next_command: str = "invoke current   (then invoke doctor)",
) -> OpsError:
    """A version-row rewrite (stamp, recover --apply) ended before the agent answered
    (``result``: agent_died, interrupted): the record and the error say the version rows
    read from the database, not assumed."""
    now = rows_afresh(op.settings, agent)
    op.finish(result, error=message, to=now)
    said = "could not be read afterwards" if now is None else f"now: {label(now)}"
    return OpsError(
        message,
        exit_code=130 if result == "interrupted" else 1,
        state=f"before: {label(current)}; {said} (read from the database after the agent exited)",
        next_command=next_command,
    )
