"""The loss set of a rollback (host side): what the downgrades really destroy, from a run of
them on a schema-only scratch copy of the live database (dbops/agent/downgrade_trace.py), each
item counted on the live database. ONE function computes it, ``loss_set``; the plan printed
before a rollback, its ``--accept-data-loss`` gate, the recount under the lock and the put-back
(``putback`` of the answer: what the backup can give back) all use it.
"""

from __future__ import annotations

from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError


def _short(q: str) -> str:
    return q[len("public.") :] if q.startswith("public.") else q


def loss_set(
    settings: Settings, agent: Agent, current: list[str], target: str | None, warn
) -> dict:
    """{"steps": [{"revision", "effects": [item + "count"]}], "putback": {...}, "error"}: the
    downgrades from ``current`` to ``target`` traced on a scratch copy, then counted live.
    ``error`` set: the trace could not be made (every untraced step is assumed to lose data)."""
    from dbops import process
    from dbops.ops.touched import _run_pg

    made = agent.call("downgrade.scratch")
    name = made["name"]
    try:
        rc, markers, messages = _run_pg(
            settings,
            agent.target.pg(process.sh_argv("downgrade-schema-copy", "dbops-schema-copy", name)),
        )
        if markers.get("dump_exit") != "0" or markers.get("load_exit") != "0":
            return {
                "steps": [],
                "putback": {},
                "error": "copying the live schema into a scratch database failed: "
                + ("; ".join(messages[-2:]) or f"status {rc}"),
            }
        traced = agent.call("downgrade.trace", name=name, current=current, target=target)
    except AgentError as exc:
        return {"steps": [], "putback": {}, "error": exc.message}
    finally:
        try:
            agent.call("downgrade.drop", name=name)
        except OpsError as exc:
            warn(f"warning: could not drop the scratch database {name}: {exc.message}")
    traced["steps"] = counted(agent, traced)
    _prune(traced)
    return traced


def _prune(loss: dict) -> None:
    """An UPDATE that changes no live row leaves nothing to put back."""
    for step in loss["steps"]:
        for it in step["effects"]:
            if (
                it["kind"] != "updates"
                or it.get("count") != 0
                or it["table"] not in loss["putback"]
            ):
                continue
            spec = loss["putback"][it["table"]]
            for col in it.get("sets") or {}:
                if str(spec["why"].get(col, "")).startswith("set to"):
                    spec["columns"].pop(col, None)
            if not spec["insert"] and not spec["columns"]:
                del loss["putback"][it["table"]]


def counted(agent: Agent, loss: dict) -> list[dict]:
    """The loss set's items counted on the live database (again: under the lock)."""
    return agent.call("downgrade.count", steps=loss["steps"])["steps"]


def describe(it: dict) -> tuple[str, bool]:
    """("drops column users.bio: 3 non-NULL values", loses data)."""
    t = _short(it["table"])
    kind = it["kind"]
    if kind in ("drops column", "changes type of"):
        text = f"{kind} {t}.{it['column']}" + (f" to {it['to']}" if it.get("to") else "")
        unit = "non-NULL value"
    elif kind == "updates":
        cols = ", ".join(sorted(it.get("sets") or {})) or "?"
        text, unit = f"updates {t} ({cols})", "row"
    elif kind in ("writes", "reads"):
        return f"{kind} {t} ({it['why']}: cannot be counted, assume it drops data)", True
    else:
        text, unit = f"{kind} {t}", "row"
    n = it.get("count")
    if n is None:
        return f"{text} ({it.get('why') or 'cannot count'}: assume it drops data)", True
    where = " (counted with its WHERE)" if kind in ("updates", "deletes from") else ""
    return f"{text}: {n} {unit}{'' if n == 1 else 's'}{where}", n > 0


def apply(steps: list[dict], loss: dict) -> bool:
    """Fill each plan step's ``data_loss`` / ``drops_empty`` from the loss set; True when
    anything would be lost (or cannot be told)."""
    by_rev = {s["revision"]: s["effects"] for s in loss["steps"]}
    for step in steps:
        step["data_loss"], step["drops_empty"] = [], []
        if step["body"] != "code":
            continue
        if step["revision"] not in by_rev:
            why = loss.get("error") or "not traced"
            step["data_loss"].append(f"cannot tell what it destroys ({why}): assume data loss")
            continue
        for it in by_rev[step["revision"]]:
            text, loses = describe(it)
            step["data_loss" if loses else "drops_empty"].append(text)
    return any(s["data_loss"] for s in steps)
