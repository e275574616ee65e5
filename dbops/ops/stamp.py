"""invoke stamp --to=REV: rewrite the version row, nothing else. Confirmed, locked, audited
(the previous version row goes into the audit record)."""

from __future__ import annotations

import time

from dbops import audit
from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.confirm import confirm
from dbops.errors import OpsError
from dbops.ops.output import Out, print_line
from dbops.ops.settle import settle
from dbops.ops.status import label
from dbops.ops.steps import acquire_lock, planned

WARNING = (
    "stamp changes NO schema: it only rewrites the alembic_version row. Use it when the "
    "schema already IS at that revision (invoke doctor tells); stamping after a failed "
    "upgrade leaves the missing columns missing for good."
)


def stamp(settings: Settings, to: str, *, yes: bool = False, out: Out = print_line) -> dict:
    t0 = time.monotonic()
    with Agent(settings) as agent:
        res = planned(agent, "plan.resolve", "stamp", to=to)
        current, target = res["current"], res["target"]
        tlabel = target or "base"
        msg = f"  {res['target_info']['message']}" if res.get("target_info") else ""
        out(
            f"version row now: {label(current)}"
            + (
                f"  (UNKNOWN to the script directory: {', '.join(res['unknown_current'])})"
                if res["unknown_current"]
                else ""
            )
        )
        out(f"stamp to:        {tlabel}{msg}")
        out(f"warning: {WARNING}")
        if current == ([target] if target else []):
            out(f"nothing to do: the version row already says {tlabel}")
            return {"before": current, "after": current, "target": target}
        confirm(
            settings,
            f"Stamp {label(current)} -> {tlabel}?",
            yes=yes,
            state=f"unchanged at {label(current)}",
            next_command=f"invoke stamp --to={to} --yes",
        )
        acquire_lock(agent, "stamp", current, f"stamp --to={to}")
        settle(settings, agent, out, "stamp")  # a run that died applying: its outcome
        record = {
            "from": current,
            "previous_version_rows": current,
            "requested": to,
            "to_target": target,
            "backup": None,
            "schema_changed": False,
        }
        try:
            done = agent.call("stamp.apply", to=target)
        except AgentError as exc:
            d = exc.agent_details
            audit.append(
                settings,
                "stamp",
                **record,
                to=d.get("after"),
                result="failed",
                error=exc.message,
                duration_s=round(time.monotonic() - t0, 3),
            )
            raise OpsError(
                exc.message,
                state=f"before: {label(current)}; now: {label(d.get('after', current))}",
                next_command="invoke current",
            ) from None
        hashes = {}
        if target:
            hashes = {target: res["target_info"]["sha256"]}
        audit.append(
            settings,
            "stamp",
            **record,
            to=done["after"],
            result="ok",
            purged_unknown=done["purged"],
            revision_hashes=hashes,
            duration_s=round(time.monotonic() - t0, 3),
        )
    return {"before": current, "after": done["after"], "target": target}
