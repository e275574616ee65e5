"""Unforeseen agent failures told apart by cause (issue 19 item 6), so every task says what
doctor says instead of a traceback: a connection that fails (authentication, refused, too many
connections, missing database, starting), a read-only database or standby, and the project's
own code that does not load (a revision file or env.py with a syntax or import error: the file
and the line). stdlib + psycopg only (a backup never loads alembic)."""

from __future__ import annotations

import re
from pathlib import Path

from dbops.agent import db

# libpq / server messages by cause (the SQLSTATE is not always there on a failed connect).
CONNECT_CAUSES = (
    ("database_missing", ("3D000",), (r'database ".*" does not exist',)),
    (
        "auth",
        ("28P01", "28000"),
        (
            r"password authentication failed",
            r"no pg_hba\.conf entry",
            r'role ".*" does not exist',
            r"no password supplied",
            r"authentication failed",
            r"is not permitted to log in",
        ),
    ),
    (
        "too_many",
        ("53300",),
        (r"too many connections", r"too many clients", r"remaining connection slots are reserved"),
    ),
    ("starting", ("57P03",), (r"the database system is (starting up|shutting down|in recovery)",)),
    (
        "refused",
        (),
        (
            r"Connection refused",
            r"No such file or directory",
            r"could not translate host",
            r"timeout expired",
            r"Network is unreachable",
            r"No route to host",
            r"could not connect to server",
            r"server closed the connection",
            r"the connection is closed",  # lost mid-statement: the server stopped or crashed
            r"terminating connection due to",
        ),
    ),
)


def connect_cause(exc: BaseException) -> str:
    """refused / auth / too_many / database_missing / starting / other."""
    state = getattr(exc, "sqlstate", None)
    text = str(exc)
    for cause, states, patterns in CONNECT_CAUSES:
        if state in states or any(re.search(p, text, re.IGNORECASE) for p in patterns):
            return cause
    return "other"


def connect_failure(exc: BaseException) -> dict | None:
    """The cause of a failed connection (or of a connection lost), else None."""
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the agent always has psycopg
        return None
    if not isinstance(orig, psycopg.OperationalError):
        return None
    cause = connect_cause(orig)
    if cause == "other":
        return None
    full = str(orig)
    return {
        "cause": cause,
        "too_many_for_role": bool(re.search(r"too many connections for role", full)),
        "too_many_for_database": bool(re.search(r"too many connections for database", full)),
    }


def classify(ctx, exc: BaseException) -> dict | None:
    """The protocol answer for an exception no handler expected, when its cause is known."""
    try:
        return _classify(ctx, exc)
    except Exception:  # noqa: BLE001 - never let telling the cause hide the failure itself
        return None


def _classify(ctx, exc: BaseException) -> dict | None:
    found = connect_failure(exc)
    if found:
        try:
            name = db.database()
        except Exception:  # noqa: BLE001 - no database configured: the message says so
            name = "?"
        return _answer("connect", f"cannot connect to database {name}: {db.one_line(exc)}", **found)
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) == "25006":
        return _answer(
            "read_only",
            f"the database is read-only (a standby, or default_transaction_read_only): "
            f"{db.one_line(exc)}",
        )
    where = project_frame(ctx, exc)
    if where:
        path, line = where
        what = type(exc).__name__ + ": " + (getattr(exc, "msg", None) or db.one_line(exc))
        return _answer(
            "script",
            f"the project's code cannot be loaded: {path}, line {line}: {what}",
            file=path,
            line=line,
            error=what,
            syntax=isinstance(exc, SyntaxError),
        )
    return None


def project_frame(ctx, exc: BaseException) -> tuple[str, int] | None:
    """Where in the Alembic project (the folder of alembic.ini: env.py, revision files) the
    exception was raised: a SyntaxError's file and line, else the innermost traceback frame in
    a project file that is not an installed package."""
    root = str(Path(ctx.ini).parent.resolve())
    inside = lambda f: (  # noqa: E731
        f.startswith(root + "/") and "site-packages" not in f and "/dbops/" not in f
    )
    if isinstance(exc, SyntaxError) and exc.filename and inside(str(Path(exc.filename).resolve())):
        return str(exc.filename), int(exc.lineno or 0)
    found = None
    tb = exc.__traceback__
    while tb is not None:
        f = tb.tb_frame.f_code.co_filename
        if inside(f):
            found = (f, tb.tb_lineno)
        tb = tb.tb_next
    if found is None and isinstance(exc, SyntaxError) and exc.filename:
        return str(exc.filename), int(exc.lineno or 0)
    return found


def with_cause(kind: str, message: str, details: dict) -> dict:
    """An expected "connect" failure (raised by a handler) with its cause added."""
    if kind == "connect" and "cause" not in details:
        details = {**details, "cause": connect_cause(_Text(message))}
    return details


class _Text(Exception):
    """A message as an exception, for connect_cause (no SQLSTATE)."""


def _answer(kind: str, message: str, **details) -> dict:
    return {"ok": False, "kind": kind, "error": message, "details": details}
