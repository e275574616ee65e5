"""The host's end of the agent: start it through the seam, send requests, read answers."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

from dbops.config import Settings, operator
from dbops.errors import OpsError
from dbops.seam import Target, mask, start, target_for

# The connection guard's refusals (dbops/agent/guard.py): the same state and next command
# whichever operation hit them.
GUARD_KINDS = {
    "wrong_database": (
        "unchanged (the guard closed env.py's connection before its first statement)",
        "invoke doctor   (check isolation: the env.py change in README 'Your own project')",
    ),
    "version_table": (
        "unchanged (env.py was stopped at context.configure, before its first statement)",
        None,  # the setting to add: from the details
    ),
    "live_changed": (
        "CHANGED: a step meant for a scratch database changed the live one (read it now)",
        "invoke doctor",
    ),
}


class AgentError(OpsError):
    """The agent answered with a failure; ``kind`` says which (locked, connect, upgrade, …)."""

    def __init__(self, message: str, kind: str, details: dict):
        state, next_command = GUARD_KINDS.get(kind, (None, None))
        if kind == "version_table":  # env.py keeps the revision elsewhere: the value to set
            next_command = (
                f"echo DBOPS_VERSION_TABLE={details.get('theirs')} >> .env   # then re-run"
            )
        super().__init__(message, state=state, next_command=next_command)
        self.kind = kind
        self.agent_details = details


class AgentDied(OpsError):
    """The agent process ended before it answered (killed, OOM, container stopped)."""


def _as_is(_settings: Settings, err: AgentError) -> AgentError:
    return err


# An agent failure in doctor's words for a known cause (a refused connection, a read-only
# database, ...): dbops.ops sets it to ops.failures.explain when it is imported (that module
# reads doctor's checks; this one stays below the operations in the import graph).
EXPLAIN: Callable[[Settings, AgentError], AgentError] = _as_is


# How long an interrupted host waits for its agent to cancel, roll back and exit.
STOP_WAIT = 30


class Agent:
    """One agent process for one operation: ``with Agent(settings) as a: a.call("status")``."""

    def __init__(self, settings: Settings, target: Target | None = None):
        self.settings = settings
        self.target = target or target_for(settings)
        self.proc: subprocess.Popen | None = None
        self.hello: dict = {}
        self.relay = None  # JSON mode: the thread turning the agent's stderr into events

    def __enter__(self) -> Agent:
        self.target.ensure_available()
        from dbops import events

        relay = events.json_mode()  # JSON mode: the agent's stderr (a traceback) as events
        self.proc = start(
            self.target.agent(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            **({"stderr": subprocess.PIPE} if relay else {}),
        )
        if relay:
            self.relay = events.relay_lines(self.proc.stderr)
        self.hello = self.call(
            "hello", operator=operator(), maintenance_db=self.settings.maintenance_db
        )
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, wait: float = 60) -> None:
        """End the agent: close its input (an idle agent exits; one still working cancels its
        queries and rolls back, see dbops/agent/lifeline.py) and wait for it to exit."""
        if self.proc is None:
            return
        try:
            if self.proc.stdin and not self.proc.stdin.closed:
                try:
                    self.proc.stdin.close()
                except OSError:  # it is gone already (BrokenPipeError): nothing to tell it
                    pass
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()
            if self.relay is not None:  # its last lines before the summary
                self.relay.join(5)
                self.relay = None
            self.proc = None

    def _send(self, obj: dict) -> None:
        assert self.proc is not None and self.proc.stdin
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:  # BrokenPipeError: the agent is gone; said below from its exit status
            pass

    def call(self, op: str, *, on_ready: Callable[[dict], bool] | None = None, **args: Any) -> dict:
        """Send one request, return its result. ``on_ready`` answers the agent's
        ``ready_to_commit`` questions (the commit handshake): True lets it commit; without it
        the agent is told not to. Interrupted (Ctrl-C, SIGTERM): the agent is stopped and has
        exited (its work rolled back) before the interruption goes on."""
        if self.proc is None:
            raise AgentDied(f"the dbops agent was stopped before '{op}'")
        try:
            self._send({"op": op, "args": args})
            while True:
                resp = self._read(op)
                if "ready_to_commit" not in resp:
                    break
                go = bool(on_ready(resp["ready_to_commit"])) if on_ready else False
                self._send({"commit": go})
        except BaseException:
            self.close(wait=STOP_WAIT)
            raise
        if not resp.get("ok"):
            raise EXPLAIN(
                self.settings,
                AgentError(
                    mask(resp.get("error", "unknown error"), self.settings.secrets()),
                    resp.get("kind", "failed"),
                    resp.get("details") or {},
                ),
            )
        return resp["result"]

    def _read(self, op: str) -> dict:
        assert self.proc is not None and self.proc.stdout
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise AgentDied(
                f"the dbops agent exited (status {code}) before answering '{op}'"
                + ("; its error output is above" if code not in (-9, 137) else " (killed)")
            )
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise OpsError(
                f"the dbops agent answered '{op}' with something that is not JSON: "
                f"{mask(line.decode(errors='replace')[:200], self.settings.secrets())}"
            ) from None


def call_once(settings: Settings, op: str, **args: Any) -> dict:
    with Agent(settings) as agent:
        return agent.call(op, **args)
