"""Invoke task modules, one per domain; ``tasks.py`` joins them into one namespace.

Tasks are thin: declare flags and help, call one operation in ``dbops.ops``, print.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import pkgutil
import signal
import sys
import threading
from pathlib import Path

from invoke import Collection, Exit, task

from dbops.config import Settings, from_invoke
from dbops.errors import OpsError


def settings(c) -> Settings:
    return from_invoke(c)


def write_result(result) -> None:
    """A task's result as JSON in DBOPS_RESULT_FILE, when set (invoke fleet reads it per
    database); written to a temporary file and renamed, so a reader never sees half of it."""
    path = os.environ.get("DBOPS_RESULT_FILE")
    if not path:
        return
    from dbops import safefile

    safefile.write_atomic(Path(path), json.dumps(result, default=str))


def guarded(fn):
    """Turn an OpsError into its message, the database state, the next command and exit 1.
    A task that returns a dict has it written to DBOPS_RESULT_FILE (ok); a failure writes the
    error there too."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = stop_on_signals()
        try:
            result = fn(*args, **kwargs)
            if isinstance(result, dict):
                write_result({"ok": True, "result": result})
            return result
        except OpsError as exc:
            write_result(
                {"ok": False, "error": exc.message, "state": exc.state, "next": exc.next_command}
            )
            if not getattr(exc, "reported", False):  # JSON mode: the summary event said it
                print(exc.render(), file=sys.stderr, flush=True)
                if debugging(args):
                    print(causes(exc), file=sys.stderr, flush=True)
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt as exc:
            if not getattr(exc, "reported", False):
                print("interrupted", file=sys.stderr)
            raise Exit(code=130) from None
        except Exit:  # the task's own exit status (doctor found a failure, ...)
            raise
        except Exception as exc:  # not an OpsError: a dbops bug, said as one
            print(bug_report(exc, debugging(args)), file=sys.stderr, flush=True)
            raise Exit(code=EXIT_BUG) from None
        finally:
            for sig, handler in previous.items():
                if handler is not None:  # None: not set from Python; left as it is
                    signal.signal(sig, handler)

    return wrapper


EXIT_BUG = 70  # EX_SOFTWARE: an exception dbops did not expect (every other failure: 1 or 130)


def debugging(args) -> bool:
    """DBOPS_DEBUG=1 (.env or environment): print the chain of causes behind an error."""
    try:
        return bool(settings(args[0]).get("DBOPS_DEBUG"))
    except Exception:  # noqa: BLE001  (the settings themselves may be what failed)
        return os.environ.get("DBOPS_DEBUG") == "1"


def causes(exc: BaseException) -> str:
    """The tracebacks behind an error, outermost last (as Python prints them), including the
    context an error raised ``from None`` hides from the user."""
    import traceback

    cause = exc.__cause__ or exc.__context__
    if cause is None:
        return "debug: no underlying exception (the error above is dbops' own finding)"
    return "debug: what caused it:\n" + "".join(traceback.format_exception(cause)).rstrip()


def bug_report(exc: BaseException, debug: bool) -> str:
    """A dbops bug: which exception, that it is a bug, how to report it; the traceback only
    with DBOPS_DEBUG=1 (a user sees no traceback for anything dbops expects)."""
    import traceback

    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" at {where[0].filename}:{where[0].lineno}" if where else ""
    lines = [
        f"error: dbops bug: {type(exc).__name__}: {exc}{at}",
        "database state: not known from here: read it with `invoke current`, then `invoke doctor`",
        "report it: run the same command with DBOPS_DEBUG=1 and send its output "
        "(README, Reporting a bug)",
    ]
    if debug:
        lines.append("".join(traceback.format_exception(exc)).rstrip())
        if exc.__cause__ or exc.__context__:
            lines.append(causes(exc))
    return "\n".join(lines)


def _stop(_signum, _frame):
    # Once: a second signal (Ctrl-C reaches the whole process group; `docker stop` may follow
    # with another) must not interrupt the clean-up the first one started (stopping the agent,
    # reading the state back, the audit record).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def stop_on_signals() -> dict:
    """SIGTERM (docker stop, Kubernetes, CI cancel, timeout) stops a task as Ctrl-C does:
    the agent rolls back what it was doing, the state is read back, the audit record says
    interrupted, exit 130. Also as PID 1 in a container, where an unhandled SIGTERM is ignored.
    Returns the handlers it replaced (restored when the task ends)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}


LOG_FORMAT_HELP = "text or json: JSON events on stderr (default DBOPS_LOG_FORMAT)"


def observed_task(flags: dict[str, str], *, notify: bool = False, **task_options):
    """``@task(help=flags)`` over ``guarded`` over ``events.observed(notify)``: a task whose run
    is observed (events, pings, metrics) and that has the --log-format flag, documented here
    once."""
    from dbops import events

    def deco(fn):
        return task(help={**flags, "log-format": LOG_FORMAT_HELP}, **task_options)(
            guarded(events.observed(notify)(fn))
        )

    return deco


def namespace() -> Collection:
    """Every task of every module in this package, at the top level (``invoke migrate``, not
    ``invoke schema.migrate``): each module's tasks are found by ``Collection.from_module``,
    so a new task needs no list to be kept by hand. A name defined twice is an error."""
    ns = Collection()
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, declared in Collection.from_module(module).tasks.items():
            if name in ns.tasks:
                raise RuntimeError(f"invoke task {name!r} is defined twice ({info.name})")
            ns.add_task(declared, name=name)
    return ns
