"""current / history / heads: read-only views of the alembic state."""

from __future__ import annotations

from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError


def read_status(settings: Settings) -> dict:
    with Agent(settings) as agent:
        return call_status(agent)


def call_status(agent: Agent) -> dict:
    try:
        return agent.call("status")
    except AgentError as exc:
        if exc.kind == "connect":
            raise OpsError(
                exc.message,
                details=exc.details,
                state=exc.state,
                next_command=exc.next_command
                or f"check POSTGRES_* in .env and that the server is up "
                f"({agent.target.reach_hint()})",
            ) from None
        raise


def label(revs: list[str] | tuple[str, ...] | None, *, short: bool = False) -> str:
    """How dbops prints a set of revisions (version rows, heads, a target) everywhere: the ids
    joined by ", ", or "base" when there is none; ``short``: 12-character ids joined by "+"
    (a column in a table)."""
    if not revs:
        return "base"
    return "+".join(r[:12] for r in revs) if short else ", ".join(revs)


def format_current(st: dict) -> str:
    msgs = {h["revision"]: h["message"] for h in st["history"]}
    lines = [f"database {st['database']} (PostgreSQL {st['server_version']})"]
    for rev in st["current"] or []:
        lines.append(f"current: {rev}  {msgs.get(rev, '(UNKNOWN to the script directory)')}")
    if not st["current"]:
        lines.append("current: base (no version row)")
    lines.append(f"heads:   {label(st['heads'])}")
    if st["unknown_current"]:
        lines.append(
            "state:   the version row names a revision the script directory does not "
            "have; run: invoke recover"
        )
    elif st["at_head"]:
        lines.append("state:   at head")
    else:
        lines.append(f"state:   {len(st['pending'])} pending: {', '.join(st['pending'])}")
    return "\n".join(lines)


def format_history(st: dict) -> str:
    lines = []
    for h in st["history"]:
        mark = "*" if h["is_current"] else ("+" if h["applied"] else " ")
        tags = " (head)" if h["is_head"] else ""
        tags += f" [{', '.join(h['branch_labels'])}]" if h["branch_labels"] else ""
        lines.append(
            f"{mark} {h['down_revision'] or '<base>'} -> {h['revision']}{tags}  {h['message']}"
        )
    lines.append("(* current, + applied)")
    return "\n".join(lines)


def format_heads(st: dict) -> str:
    msgs = {h["revision"]: h["message"] for h in st["history"]}
    lines = [f"{h}  {msgs.get(h, '')}" for h in st["heads"]]
    if len(st["heads"]) > 1:
        lines.append(
            f"{len(st['heads'])} heads: merge them before migrating: "
            f"alembic merge -m 'merge heads' {' '.join(st['heads'])}"
        )
    return "\n".join(lines)
