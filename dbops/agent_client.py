"""The host's end of the agent: start it through the seam, send requests, read answers."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from dbops.config import Settings, operator
from dbops.errors import OpsError
from dbops.seam import Target, mask, start, target_for


class AgentError(OpsError):
    """The agent answered with a failure; ``kind`` says which (locked, connect, upgrade, …)."""

    def __init__(self, message: str, kind: str, details: dict):
        super().__init__(message)
        self.kind = kind
        self.agent_details = details


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

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
            self.proc.wait(timeout=60)
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

    def call(self, op: str, **args: Any) -> dict:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write((json.dumps({"op": op, "args": args}) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # reported below from the exit status
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise OpsError(
                f"the dbops agent exited (status {code}) before answering '{op}'; "
                f"its error output is above"
            )
        try:
            resp = json.loads(line)
        except json.JSONDecodeError:
            raise OpsError(
                f"the dbops agent answered '{op}' with something that is not JSON: "
                f"{mask(line.decode(errors='replace')[:200], self.settings.secrets())}"
            ) from None
        if not resp.get("ok"):
            raise AgentError(
                mask(resp.get("error", "unknown error"), self.settings.secrets()),
                resp.get("kind", "failed"),
                resp.get("details") or {},
            )
        return resp["result"]


def call_once(settings: Settings, op: str, **args: Any) -> dict:
    with Agent(settings) as agent:
        return agent.call(op, **args)
