"""``python -m dbops.agent --ini alembic.ini``: serve JSON-line requests on stdin."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback

from dbops.agent import classify, db, masking
from dbops.agent.context import AgentContext
from dbops.agent.lifeline import LIFELINE, HostGone
from dbops.agent.protocol import AgentFailure, lookup


def _masked(text: str) -> str:
    """``text`` with every form of the password (raw, percent-encoded as urllib and SQLAlchemy
    write it, %-doubled for configparser) replaced; the host masks again with the same forms."""
    try:
        pw = db.password()
    except Exception:
        pw = None
    return masking.masked(text, pw) if pw else text


def serve(ctx: AgentContext, requests) -> None:
    """Answer each request; stop when the host is gone or a signal says so (the handler that
    runs is interrupted, its transaction rolled back: see lifeline)."""
    try:
        for line in requests:
            if not line.strip():
                continue
            with LIFELINE.busy():
                resp = answer(ctx, line)
            if LIFELINE.gone.is_set() or not LIFELINE.reply(resp):
                return
    except (KeyboardInterrupt, HostGone):
        return


def answer(ctx: AgentContext, line) -> dict:
    try:
        req = json.loads(line)
        fn = lookup(str(req.get("op")))
        if fn is None:
            raise AgentFailure(f"unknown agent op {req.get('op')!r}", kind="internal")
        return {"ok": True, "result": fn(ctx, **(req.get("args") or {}))}
    except AgentFailure as exc:
        return {
            "ok": False,
            "kind": exc.kind,
            "error": _masked(exc.message),
            "details": classify.with_cause(exc.kind, exc.message, exc.details),
        }
    except Exception as exc:  # a bug or an unforeseen failure: say what, keep serving
        if LIFELINE.gone.is_set():  # the failure is our own cancellation: nobody to tell
            raise HostGone(LIFELINE.reason) from exc
        known = classify.classify(ctx, exc)  # connection, read-only, the project's code
        if known is not None:
            return {**known, "error": _masked(known["error"])}
        sys.stderr.write(_masked(traceback.format_exc()))
        return {
            "ok": False,
            "kind": "internal",
            "error": _masked(f"{type(exc).__name__}: {exc}".splitlines()[0]),
            "details": {},
        }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dbops.agent")
    parser.add_argument("--ini", required=True, help="the Alembic project's alembic.ini")
    args = parser.parse_args()
    # The protocol owns the real stdout; anything else that prints (alembic, env.py) goes to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    LIFELINE.start(sys.stdin.buffer, out)
    ctx = AgentContext(args.ini)
    LIFELINE.on_stop(ctx.cancel)
    try:
        serve(ctx, LIFELINE.requests())
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # nothing may interrupt the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ctx.close()
    # Served and every connection closed (the lock with it): skip the interpreter's teardown
    # (module finalisers, garbage collection of sqlalchemy/alembic when loaded): the host
    # waits for this exit, ~30 ms of every operation.
    out.flush()
    sys.stderr.flush()
    os._exit(130 if LIFELINE.gone.is_set() else 0)


if __name__ == "__main__":
    main()
