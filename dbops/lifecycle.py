"""One state-changing operation's lifecycle: its audit record, written on every outcome.

Every task that changes a database (migrate, rollback, stamp, recover --apply, restore,
restore-undo, put-back, drill, pitr) runs its body inside an :class:`Operation`::

    with Operation(settings, "stamp", **{"from": current}) as op:
        op.intent("applying", revision=target)   # durable, before the change; or no change
        done = agent.call("stamp.apply", to=target)
        op.finish(to=done["after"])               # "ok", with what was verified

Whatever ends the body, the record says how, once:

=============  ===========================================================  =========
result         what ended the body                                          exit code
=============  ===========================================================  =========
ok             it returned (``finish()`` called, or implied)                0
failed         an OpsError (a step refused by the agent: ``error_kind``)    1
refused        a :class:`Refused` (a confirmation not given, a guard):       1
               nothing was changed
agent_died     the agent process ended before it answered                    1
interrupted    Ctrl-C or SIGTERM (KeyboardInterrupt), or an OpsError with    130
               exit code 130
failed         any other exception: a dbops bug (``bug: true``)              1
=============  ===========================================================  =========

A host killed with SIGKILL writes nothing here: its "applying"/"swapping" intent line is
what the next run settles (dbops/ops/settle.py, restore-undo). No module in ``dbops/ops``
writes an audit record itself; they all come through this class.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable

from dbops import audit
from dbops.config import Settings
from dbops.errors import OpsError

EXIT_CODES = {
    "ok": 0,
    "failed": 1,
    "refused": 1,
    "agent_died": 1,
    "interrupted": 130,
}


class Refused(OpsError):
    """The operation refused before changing anything (a confirmation not given, a guard)."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def outcome_of(exc: BaseException) -> tuple[str, dict]:
    """The audit result and fields for an exception that ended an operation's body."""
    from dbops.agent_client import AgentDied, AgentError

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", {}
    if isinstance(exc, OpsError):
        fields = {"error": exc.message}
        if exc.state:
            fields["state"] = exc.state
        if isinstance(exc, AgentError):
            return "failed", {**fields, "error_kind": exc.kind}
        if isinstance(exc, AgentDied):
            return "agent_died", fields
        if isinstance(exc, Refused):
            return "refused", fields
        if exc.exit_code == EXIT_CODES["interrupted"]:
            return "interrupted", fields
        return "failed", fields
    return "failed", {"error": f"{type(exc).__name__}: {exc}", "bug": True}


class Operation:
    """One run of a state-changing task: ``record`` is what its audit record holds whatever the
    outcome (grown with :meth:`add`); :meth:`finish` writes the outcome, once; leaving the
    ``with`` block writes it from the exception (or "ok") if the body did not."""

    def __init__(
        self,
        settings: Settings,
        action: str,
        *,
        warn: Callable[[str], None] = _stderr,
        **record,
    ):
        self.settings = settings
        self.action = action
        self.record = dict(record)
        self.warn = warn
        self.op_id = uuid.uuid4().hex[:16]
        self.started = time.monotonic()
        self.written: dict | None = None

    def __enter__(self) -> Operation:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.written is None:
            if exc is None:
                self.finish()
            else:
                result, fields = outcome_of(exc)
                self.finish(result, **fields)
        return False  # never swallowed

    def add(self, **fields) -> None:
        """Fields known as the body goes (the backup taken, the database created, ...)."""
        self.record.update(fields)

    def intent(self, result: str, *, unchanged: str = "nothing was changed", **fields) -> dict:
        """Record, durably (fsync), what is about to change, before it does (``applying``,
        ``swapping``): no change without an audit line. A line that cannot be written stops
        the operation before the change."""
        assert result in audit.INTENTS, result
        try:
            return audit.append(
                self.settings, self.action, op_id=self.op_id, result=result, **fields
            )
        except OSError as exc:
            raise OpsError(
                f"cannot write the audit record {self.settings.audit_log} ({exc.strerror}), "
                f"so {unchanged} ({self.action} stopped before: {result})"
            ) from exc

    def finish(self, result: str = "ok", **fields) -> dict:
        """Write the outcome record (once; a second call returns the first record). An audit
        log that cannot be written is warned about, not raised: the outcome is still printed."""
        if self.written is not None:
            return self.written
        assert result not in audit.INTENTS, result
        record = {
            "op_id": self.op_id,
            **self.record,
            **fields,
            "result": result,
            "duration_s": round(time.monotonic() - self.started, 3),
        }
        try:
            self.written = audit.append(self.settings, self.action, **record)
        except OSError as exc:
            self.written = {}
            self.warn(
                f"warning: the audit record {self.settings.audit_log} could not be written "
                f"({exc.strerror}): this {self.action}'s outcome ({result}) is not recorded there"
            )
        return self.written

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get((self.written or {}).get("result", "ok"), 1)


# --- another run's outcome ------------------------------------------------------------------
# A run killed with SIGKILL between its "applying" intent and its outcome leaves the intent
# alone; the next migrate, rollback, stamp or recover (or ``invoke doctor --settle``) reads the
# database and writes the missing outcome under the dead run's ``op_id`` and action
# (dbops/ops/settle.py decides what it says).
SETTLED = "host_died"


def write_settlement(
    settings: Settings,
    applying: dict,
    *,
    warn: Callable[[str], None] = _stderr,
    **fields,
) -> dict:
    """Append the outcome (``result: host_died`` and ``fields``) of the run that wrote the
    ``applying`` line, under its ``op_id`` and action. An audit log that cannot be written is
    warned about (the settlement is still printed) and the line stays unsettled."""
    assert applying.get("result") == "applying" and applying.get("op_id"), applying
    try:
        return audit.append(
            settings,
            applying.get("action", "migrate"),
            op_id=applying["op_id"],
            result=SETTLED,
            **fields,
        )
    except OSError as exc:
        warn(
            f"warning: the audit record {settings.audit_log} could not be written "
            f"({exc.strerror}): the settlement of {applying['op_id']} is not recorded there"
        )
        return {}
