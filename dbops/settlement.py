"""The outcome of another run's "applying" line, written by the run that settles it.

:class:`dbops.lifecycle.Operation` writes the records of its own run (its ``op_id``). A run
killed with SIGKILL between its "applying" intent and its outcome leaves the intent alone;
the next migrate, rollback or stamp (or ``invoke doctor --settle``) reads the database and
writes the missing outcome under the dead run's ``op_id`` and action: :func:`write_settlement`
is the one place that does (dbops/ops/settle.py decides what it says). Lifecycle-style, so
that it can move into dbops/lifecycle.py as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from dbops import audit
from dbops.config import Settings

SETTLED = "host_died"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
