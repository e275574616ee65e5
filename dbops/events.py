"""Events of a command: JSON lines on stderr and healthchecks-style pings.

DBOPS_LOG_FORMAT=json (or ``--log-format json`` on an observed task) gives one JSON object
per step (each command run through the seam; each line an operation reports) and one
``summary`` object per command: task, database, target, result, duration, backup,
revisions, and on failure the error, database state and next command. Values pass through
the settings' secret mask; connection strings and passwords are never fields.

Events are written whole, one per line, under one lock: two threads (the service's
scheduler) never share a line. In JSON mode the error, the database state and the next
command are fields of the summary event, and nothing else is printed.

DBOPS_NOTIFY_URL receives ``URL/start`` when an observed operation starts, ``URL`` when it
succeeds and ``URL/fail`` when it fails (the healthchecks.io convention), the summary as the
POST body; DBOPS_NOTIFY_URL_BACKUP / _DRILL / _MIGRATE replace it for that job (one check per
job). Every ping of one run carries the same ``?rid=<uuid>`` (healthchecks pairs a start with
its finish by it). A scheduled tick sends ``/start`` only once it holds the lock and the tick is
due; a skipped tick and an interrupted run send ``/log`` (a note that changes no check's
state), never a success. A ping runs in its own thread with ONE deadline, DBOPS_NOTIFY_TIMEOUT
(default 5 s), for connect + send + answer: whatever the endpoint does (refuses, hangs,
answers garbage or a 500, drips a byte a second) costs the operation at most that long and
is a warning on stderr, never its failure. The URL itself is never printed (it is a token).
"""

from __future__ import annotations

import functools
import inspect
import io
import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

from dbops.errors import OpsError

_WRITE_LOCK = threading.Lock()  # one event = one whole line, whichever thread writes it
_PENDING_LOCK = threading.Lock()

JOB_URLS = {
    "backup": "DBOPS_NOTIFY_URL_BACKUP",
    "drill": "DBOPS_NOTIFY_URL_DRILL",
    "migrate": "DBOPS_NOTIFY_URL_MIGRATE",
}


def job_of(task: str) -> str:
    """``scheduled-backup`` and ``backup`` are the same job (one check, one metrics series)."""
    return task.removeprefix("scheduled-")


def notify_url_name(task: str, get) -> str | None:
    """The setting whose URL this task pings: its job's own, else DBOPS_NOTIFY_URL."""
    own = JOB_URLS.get(job_of(task))
    if own and get(own):
        return own
    return "DBOPS_NOTIFY_URL" if get("DBOPS_NOTIFY_URL") else None


def ping_url(url: str, suffix: str, rid: str | None) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    if rid:
        query.append(("rid", rid))
    return urllib.parse.urlunsplit(
        parts._replace(path=parts.path.rstrip("/") + suffix, query=urllib.parse.urlencode(query))
    )


def send_ping(url: str, body: bytes, timeout: float) -> str | None:
    """POST ``body`` to ``url``; None when it was answered with a 2xx, else why not. The whole
    exchange runs in a daemon thread joined with ``timeout``: a drip or a hang costs at most
    ``timeout`` seconds in all (the socket timeout alone bounds each read, not the sum)."""
    outcome: dict = {}

    def post() -> None:
        try:
            req = urllib.request.Request(
                url,
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "dbops"},
            )
            with urllib.request.urlopen(req, timeout=timeout) as r:
                r.read(1024)
            outcome["ok"] = True
        except Exception as exc:  # noqa: BLE001 - garbage, 500, refused, reset: all a warning
            reason = getattr(exc, "reason", None) or exc
            outcome["error"] = f"{type(exc).__name__}: {reason}"

    worker = threading.Thread(target=post, name="dbops-ping", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return f"no answer within {timeout:g} s"
    return None if outcome.get("ok") else outcome.get("error", "no answer")


def _raw_setting(name: str) -> str | None:
    """A setting read without parsing the others (when loading the settings failed): the
    process environment, then DBOPS_ENV_FILE or ./.env."""
    if os.environ.get(name, "").strip():
        return os.environ[name].strip()
    try:
        from dotenv import dotenv_values

        env_file = Path(os.environ.get("DBOPS_ENV_FILE") or ".env")
        value = dotenv_values(env_file).get(name) if env_file.is_file() else None
    except Exception:  # noqa: BLE001 - an unreadable .env: no value
        return None
    return value.strip() if value and value.strip() else None


class _LinesAsEvents(io.TextIOBase):
    """sys.stderr while a JSON command runs: each line an operation prints becomes a step
    event (``level`` warning for ``warning:`` lines), so the stream stays JSON."""

    def __init__(self, command: Command):
        self.command = command
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with _PENDING_LOCK:
            self.pending += text
            lines = []
            while "\n" in self.pending:
                line, self.pending = self.pending.split("\n", 1)
                lines.append(line)
        for line in lines:
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
        self.started_at = datetime.now(UTC)
        self.summary: dict = {"backup": None, "revisions": None}
        self.stream = sys.stderr  # where events go (sys.stderr is redirected while it runs)
        self.run_id = str(uuid.uuid4())  # pairs the /start ping with its finish
        self.defer_start = False  # a scheduled tick: /start once it is known to run
        self.start_pinged = False

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
        with _WRITE_LOCK:
            self.stream.write(line + "\n")
            self.stream.flush()

    def step(self, message: str, **fields) -> None:
        self.emit("step", message=message, **fields)

    def note(self, **fields) -> None:
        """What the summary should carry (backup path, revisions, restore seconds, …)."""
        self.summary.update(fields)

    # --- pings -------------------------------------------------------------------
    def _get(self, name: str):
        if self.settings is not None:
            return self.settings.get(name)
        return _raw_setting(name)

    def ping(self, suffix: str, body: dict | None = None) -> bool:
        """One ping; True when it was answered. Never raises, never takes longer than
        DBOPS_NOTIFY_TIMEOUT (a bad timeout value: 5 s)."""
        if not self.notify:
            return False
        try:
            name = notify_url_name(self.task, self._get)
            if name is None:
                return False
            url = str(self._get(name))
            try:
                timeout = float(self._get("DBOPS_NOTIFY_TIMEOUT") or 5)
            except (TypeError, ValueError):
                timeout = 5.0
            text = json.dumps({**(body or {}), "rid": self.run_id}, default=str)
            for secret in self._secrets() or [url]:
                text = text.replace(json.dumps(secret)[1:-1], "****")
            error = send_ping(ping_url(url, suffix, self.run_id), text.encode(), timeout)
        except Exception as exc:  # noqa: BLE001 - a ping never fails the operation
            name, error = "DBOPS_NOTIFY_URL", f"{type(exc).__name__}: {exc}"
        if error is None:
            return True
        self.warn(
            f"warning: notify ping ({suffix.lstrip('/') or 'success'}) failed: {error} "
            f"({name}; the operation is not affected)"
        )
        return False

    def warn(self, text: str) -> None:
        """A warning of the command itself: an event in JSON mode, a line otherwise."""
        if self.json:
            self.emit("warning", message=text, level="warning")
        else:
            print(text, file=self.stream, flush=True)

    def begin(self) -> None:
        """The work is about to start for real: the deferred /start ping."""
        if not self.start_pinged:
            self.start_pinged = True
            self.ping("/start", {"task": self.task, "event": "start"})

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self.json:
            sys.stderr = _LinesAsEvents(self)
        self.emit("start")
        if not self.defer_start:
            self.begin()

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
        skipped = self.summary.get("outcome") == "skipped"
        if result == "ok" and not skipped:
            self.ping("", summary)
        elif result == "failed":
            self.ping("/fail", summary)
        else:  # skipped or interrupted: a note, neither success nor failure
            self.ping("/log", summary)
        if s is not None:
            from dbops import metrics
            from dbops.errors import ConfigError

            if not skipped and not isinstance(error, ConfigError):  # refused before anything ran
                metrics.record_run_quietly(
                    s, job_of(self.task), result, self.started_at, summary["duration_s"]
                )
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


def begin() -> None:
    """A scheduled tick holds its lock and is due: send the deferred /start ping now."""
    if _current is not None:
        _current.begin()


def relay_lines(pipe) -> threading.Thread:
    """A child's stderr pipe, line by line, into this command's stderr (in JSON mode: step
    events, a traceback included), from a daemon thread until the pipe closes."""
    sink = sys.stderr

    def pump() -> None:
        with pipe:
            for raw in iter(pipe.readline, b""):
                sink.write(raw.decode(errors="replace"))

    worker = threading.Thread(target=pump, name="dbops-relay", daemon=True)
    worker.start()
    return worker


def json_mode() -> bool:
    return _current is not None and _current.json


def run_command(
    task: str,
    settings,
    fn,
    *,
    log_format: str | None = None,
    notify: bool = False,
    defer_start: bool = False,
):
    """Run ``fn()`` as one observed command: start event and ping, summary and ping, metrics.
    ``defer_start``: the /start ping waits for ``events.begin()`` (a scheduled tick that may
    be skipped). An OpsError raised in JSON mode is marked ``reported`` (the summary event
    carries it; the task prints nothing more)."""
    global _current
    fmt = log_format or (settings.get("DBOPS_LOG_FORMAT") if settings else "text")
    if fmt not in ("text", "json"):
        raise OpsError(f"--log-format={fmt!r} is not text or json", state="unchanged")
    cmd = Command(task, settings, fmt, notify)
    cmd.defer_start = defer_start
    previous, _current = _current, cmd
    cmd.start()
    try:
        result = fn()
    except OpsError as exc:
        cmd.finish("failed", exc)
        exc.reported = cmd.json
        raise
    except KeyboardInterrupt as exc:
        cmd.finish("interrupted", OpsError("interrupted"))
        exc.reported = cmd.json  # the summary said it
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
            from dbops.config import from_invoke as load

            try:
                s = load(c)
            except OpsError as exc:  # a bad setting: its event, and /fail when the URL reads
                fmt = log_format or _raw_setting("DBOPS_LOG_FORMAT") or "text"
                failed = Command(name, None, fmt if fmt == "json" else "text", notify)
                failed.finish("failed", exc)
                exc.reported = failed.json
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
