"""Agent failures in the words doctor uses, for every task (issue 19 item 6).

``Agent.call`` passes every failure answer through ``explain``: a connection that fails
(authentication, refused, too many connections, missing database, starting: classified by
the agent, dbops/agent/classify.py) gets doctor's sentence, details and next command
(dbops/ops/doctor_connect.py); a read-only database and the project's code that does not load
(a revision file or env.py: the file and the line) get theirs. The AgentError keeps its kind,
so the ops that handle a kind (``locked``, ``lock_timeout``, …) still do.
"""

from __future__ import annotations

import shlex
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dbops.agent_client import AgentError
    from dbops.config import Settings

NOT_REACHED = "unknown to this run: the database was not reached (invoke current reads it)"


def explain(settings: Settings, err: AgentError) -> AgentError:
    d = err.agent_details or {}
    if err.kind == "connect" and d.get("cause"):
        from dbops.ops.doctor_connect import _connect_failure

        facts = SimpleNamespace(settings=settings, errors={}, raw={})
        check = _connect_failure(facts, {**d, "error": err.message})
        _set(err, check.summary, check.details, NOT_REACHED, check.next)
    elif err.kind == "read_only":
        _set(
            err,
            err.message,
            ["invoke doctor tells a standby (and its primary) from a read-only database"],
            "unchanged: a read-only database takes no change",
            "invoke doctor",
        )
    elif err.kind == "script" and d.get("file"):
        path, line = str(d["file"]), d.get("line")
        check = (
            shlex.join(["python", "-m", "py_compile", path])
            if d.get("syntax")
            else "invoke history"
        )
        _set(
            err,
            err.message,
            [],
            "unchanged: the project's code did not load, so nothing ran",
            f"{check}   # after fixing {shlex.quote(path)}" + (f" line {line}" if line else ""),
        )
    return err


def _set(err: AgentError, message: str, details: list[str], state: str, nxt: str | None):
    err.message = message
    err.args = (message,)
    err.details = list(details)
    err.state = err.state or state
    err.next_command = err.next_command or nxt
