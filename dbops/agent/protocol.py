"""Request/response over stdin/stdout, one JSON object per line.

Request:  {"op": "status", "args": {...}}
Response: {"ok": true, "result": {...}} or
          {"ok": false, "kind": "...", "error": "...", "details": {...}}

One agent process serves every request of one operation, so a lock or a snapshot
taken by one request is still held for the next.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

HANDLERS: dict[str, Callable[..., Any]] = {}

# Which module registers the ops of each prefix ("backup.begin" -> dbops.agent.backup).
# Modules are imported on first use, so a backup session never loads alembic.
MODULES = {
    "hello": "session",
    "lock": "lock",
    "status": "status",
    "backup": "backup",
    "restore": "restore",
    "migrate": "migration",
    "stamp": "migration",
    "check": "migration",
    "plan": "plan",
    "revisions": "plan",
    "recover": "recover",
    "doctor": "doctor",
    "touched": "touched",
    "putback": "putback",
    "downgrade": "downgrade_trace",
    "rehearse": "rehearse",
    "scratch": "scratch",
    "settle": "settle",
    "swap": "swap",
    "pitr": "pitr",
    "batch": "batch",
    "revision": "new_revision",
}


def lookup(op: str) -> Callable[..., Any] | None:
    if op not in HANDLERS and op.split(".")[0] in MODULES:
        import importlib

        importlib.import_module(f"dbops.agent.{MODULES[op.split('.')[0]]}")
    return HANDLERS.get(op)


class AgentFailure(Exception):
    """An expected failure, reported to the host with a kind it can act on."""

    def __init__(self, message: str, kind: str = "failed", **details: Any):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.details = details


def handler(name: str):
    def register(fn):
        if name in HANDLERS:
            raise RuntimeError(f"agent op {name!r} registered twice")
        HANDLERS[name] = fn
        return fn

    return register
