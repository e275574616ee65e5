"""Events of a command: JSON lines on stderr and healthchecks-style pings.

DBOPS_LOG_FORMAT=json (or ``--log-format json`` on an observed task) gives one JSON object
per step (each command run through the seam; each line an operation reports) and one
``summary`` object per command: task, database, target, result, duration, backup,
revisions, and on failure the error, database state and next command. Values pass through
the settings' secret mask; connection strings and passwords are never fields.

DBOPS_NOTIFY_URL receives ``URL/start`` when an observed operation starts, ``URL`` when it
succeeds and ``URL/fail`` when it fails (the healthchecks.io convention), the summary as the
POST body, with DBOPS_NOTIFY_TIMEOUT (default 5 s). A ping that fails is a warning on
stderr, never the operation's failure. The URL itself is never printed (it is a token).
"""

from __future__ import annotations

import functools
import inspect
import io
import json
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

from dbops.errors import OpsError


class _LinesAsEvents(io.TextIOBase):
    """sys.stderr while a JSON command runs: each line an operation prints becomes a step
    event (``level`` warning for ``warning:`` lines), so the stream stays JSON."""

    def __init__(self, command: Command):
        self.command = command
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            if line.strip():
                level = "warning" if line.lstrip().startswith("warning:") else "info"
                self.command.emit("step", message=line.strip(), level=level)
        return len(text)

    def flush(self) -> None:
        pass


class Command:
    """The command being run in this process (one per process: an invoke task or a job)."""

    def __init__(self, task: str, settings=None, log_format: str = "text", notify: bool = False):
        self.task = task
        self.settings = settings
        self.json = log_format == "json"
        self.notify = notify
        self.started = time.monotonic()
        self.summary: dict = {"backup": None, "revisions": None}
        self.stream = sys.stderr  # where events go (sys.stderr is redirected while it runs)

    # --- output ------------------------------------------------------------------
    def _secrets(self) -> list[str]:
        return self.settings.secrets() if self.settings is not None else []

    def emit(self, event: str, **fields) -> None:
        if not self.json:
            return
        s = self.settings
        rec = {
            "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "event": event,
            "task": self.task,
            "database": s.database if s else None,
            "target": s.target if s else None,
            **fields,
        }
        line = json.dumps(rec, default=str, sort_keys=True)
        for secret in self._secrets():
            line = line.replace(json.dumps(secret)[1:-1], "****")
        print(line, file=self.stream, flush=True)

    def step(self, message: str, **fields) -> None:
        self.emit("step", message=message, **fields)

    def note(self, **fields) -> None:
        """What the summary should carry (backup path, revisions, restore seconds, …)."""
        self.summary.update(fields)

    # --- pings -------------------------------------------------------------------
    def ping(self, suffix: str, body: dict | None = None) -> bool:
        url = self.settings.get("DBOPS_NOTIFY_URL") if (self.notify and self.settings) else None
        if not url:
            return False
        full = url.rstrip("/") + suffix
        text = json.dumps(body or {}, default=str)
        for secret in self.settings.secrets():
            text = text.replace(json.dumps(secret)[1:-1], "****")
        data = text.encode()
        req = urllib.request.Request(
            full,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "dbops"},
        )
        try:
            with urllib.request.urlopen(
                req, timeout=self.settings.get("DBOPS_NOTIFY_TIMEOUT")
            ) as r:
                r.read(1024)
            return True
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            print(
                f"warning: notify ping ({suffix or 'success'}) failed: {reason} "
                f"(DBOPS_NOTIFY_URL; the operation is not affected)",
                file=sys.stderr,
                flush=True,
            )
            return False

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self.json:
            sys.stderr = _LinesAsEvents(self)
        self.emit("start")
        self.ping("/start", {"task": self.task, "event": "start"})

    def finish(self, result: str, error: OpsError | None = None) -> dict:
        s = self.settings
        summary = {
            "task": self.task,
            "result": result,
            "duration_s": round(time.monotonic() - self.started, 3),
            "database": s.database if s else None,
            "target": s.target if s else None,
            **self.summary,
        }
        if error is not None:
            summary.update(error=error.message, state=error.state, next_command=error.next_command)
        self.emit(
            "summary",
            **{k: v for k, v in summary.items() if k not in ("task", "database", "target")},
        )
        self.ping("" if result == "ok" else "/fail", summary)
        if s is not None:
            from dbops import metrics

            metrics.write_quietly(s)
        return summary

    def release(self) -> None:
        """Give sys.stderr back (after the summary; the task may still print its error)."""
        if isinstance(sys.stderr, _LinesAsEvents) and sys.stderr.command is self:
            sys.stderr = self.stream


_current: Command | None = None


def current() -> Command | None:
    return _current


def step(message: str, **fields) -> None:
    if _current is not None:
        _current.step(message, **fields)


def note(**fields) -> None:
    if _current is not None:
        _current.note(**fields)


def json_mode() -> bool:
    return _current is not None and _current.json


def run_command(task: str, settings, fn, *, log_format: str | None = None, notify: bool = False):
    """Run ``fn()`` as one observed command: start event and ping, summary and ping, metrics."""
    global _current
    fmt = log_format or (settings.get("DBOPS_LOG_FORMAT") if settings else "text")
    if fmt not in ("text", "json"):
        raise OpsError(f"--log-format={fmt!r} is not text or json", state="unchanged")
    cmd = Command(task, settings, fmt, notify)
    previous, _current = _current, cmd
    cmd.start()
    try:
        result = fn()
    except OpsError as exc:
        cmd.finish("failed", exc)
        raise
    except KeyboardInterrupt:
        cmd.finish("interrupted", OpsError("interrupted"))
        raise
    except Exception as exc:  # an invoke Exit(1) from the task (e.g. doctor found a failure)
        code = getattr(exc, "code", None)
        cmd.finish(
            "ok" if code == 0 else "failed",
            None if code == 0 else OpsError(f"{type(exc).__name__} {code or ''}".strip()),
        )
        raise
    else:
        cmd.finish("ok")
        return result
    finally:
        cmd.release()
        _current = previous


def observed(notify: bool = False):
    """Decorate a task (under @guarded): events, pings, metrics, and a --log-format flag."""

    def deco(fn):
        name = fn.__name__.replace("_", "-")

        @functools.wraps(fn)
        def wrapper(c, *args, log_format=None, **kwargs):
            from dbops.tasks import settings as load

            try:
                s = load(c)
            except OpsError as exc:
                Command(name, None, log_format or "text").finish("failed", exc)
                raise
            return run_command(
                name, s, lambda: fn(c, *args, **kwargs), log_format=log_format, notify=notify
            )

        sig = inspect.signature(fn)
        wrapper.__signature__ = sig.replace(
            parameters=[
                *sig.parameters.values(),
                inspect.Parameter(
                    "log_format", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None
                ),
            ]
        )
        return wrapper

    return deco
