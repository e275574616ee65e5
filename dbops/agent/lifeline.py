"""The agent never outlives its host's decision.

A reader thread owns stdin and queues the host's lines. When stdin ends (the host exited,
was killed, or its ``docker compose run`` client went away) or the agent gets SIGTERM/SIGINT
(``PR_SET_PDEATHSIG`` sends SIGTERM when the local parent dies) while a handler runs, the agent
cancels the queries of every connection it opened, the handler's transaction rolls back, and
the agent exits: its connections end, the advisory lock with them. (So a request followed at
once by the end of input, ``echo '{"op": …}' | python -m dbops.agent``, is not served: the
host waits for each answer before it sends more or closes.)

The commit handshake: before a migration's transaction commits, ``ask_commit`` writes
``{"ready_to_commit": {...}}`` to the host and waits for ``{"commit": true}``; anything else
(the host gone, an "abort") raises ``HostGone`` inside SQLAlchemy's commit event, so the
transaction rolls back instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Iterator

EOF = None
HOST_GONE = "the host closed the agent's input while it worked (it exited or was killed)"


class HostGone(BaseException):
    """The host is gone or said no: the work in progress must not commit. A BaseException so
    that no handler's ``except Exception`` turns it into an ordinary failure and carries on."""


class Lifeline:
    def __init__(self) -> None:
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.out = None
        self.gone = threading.Event()  # the host is gone (EOF) or a signal said stop
        self.eof = threading.Event()  # stdin ended: the normal end, unless a handler runs
        self.reason = ""
        self._busy = False
        # The main thread waits in ask_commit (the queue's EOF wakes it) / was interrupted
        # once already: a later signal must not interrupt its roll-back (a KeyboardInterrupt
        # inside SQLAlchemy's pool reset is logged with a traceback, and cuts the clean-up).
        self._asking = False
        self._interrupted = False
        self._tracked: weakref.WeakSet = weakref.WeakSet()
        self._cancellers: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    # --- start-up -------------------------------------------------------------------------
    def start(self, stdin, out) -> None:
        self.out = out
        threading.Thread(target=self._read, args=(stdin,), name="stdin", daemon=True).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        die_with_parent()

    def _read(self, stdin) -> None:
        try:
            for line in iter(stdin.readline, b""):
                self.lines.put(line)
        except (OSError, ValueError):
            pass
        self.eof.set()
        self.lines.put(EOF)
        if self._busy:
            self.stop(HOST_GONE)

    def _on_signal(self, signum, frame) -> None:
        self.stop(f"signal {signal.Signals(signum).name}", interrupt=False)
        if self._interrupted:  # already stopping: let the roll-back finish
            return
        self._interrupted = True
        raise KeyboardInterrupt

    # --- the host's lines -------------------------------------------------------------------
    def requests(self) -> Iterator[bytes]:
        while not self.gone.is_set():
            line = self.lines.get()
            if line is EOF:
                return
            yield line

    def reply(self, obj: dict) -> bool:
        """Write one protocol line; False when the host is no longer there to read it."""
        if self.gone.is_set() or self.out is None:
            return False
        try:
            self.out.write(json.dumps(obj, default=str) + "\n")
            self.out.flush()
        except (OSError, ValueError):
            self.stop("the host stopped reading the agent's output")
            return False
        return True

    def ask_commit(self, what: dict) -> None:
        """Block until the host says commit; raise HostGone otherwise (the caller's transaction
        then rolls back)."""
        self._asking = True  # from here a stop wakes us through the queue, not a signal
        try:
            if not self.reply({"ready_to_commit": what}):
                line = EOF
            else:
                line = self.lines.get()
        finally:
            self._asking = False
        if line is EOF:
            self._interrupted = True
            raise HostGone(self.reason or "the host is gone")
        try:
            answer = json.loads(line)
        except ValueError:
            answer = {}
        if answer.get("commit") is not True:
            raise HostGone(f"the host did not say commit (it said {line[:80]!r})")

    # --- stopping ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """A handler runs: the host's going now interrupts it."""
        self._busy = True
        try:
            if self.eof.is_set():  # the host sent this and went: it waits for nothing
                self.stop(HOST_GONE)
            yield
        finally:
            self._busy = False

    def track(self, conn) -> None:
        """A DBAPI connection (psycopg or psycopg2) whose query is cancelled when we stop."""
        try:
            self._tracked.add(conn)
        except TypeError:
            pass

    def on_stop(self, fn: Callable[[], None]) -> None:
        self._cancellers.append(fn)

    def stop(self, reason: str, interrupt: bool = True) -> None:
        """Cancel every query in flight; interrupt the handler that runs (if one does)."""
        with self._lock:
            if self.gone.is_set():
                return
            self.gone.set()
            self.reason = reason
        print(f"dbops agent: stopping: {reason}", file=sys.stderr, flush=True)
        for conn in list(self._tracked):
            _cancel(conn)
        for fn in self._cancellers:
            try:
                fn()
            except Exception:  # noqa: BLE001 - best effort; the exit ends the sessions anyway
                pass
        if interrupt and self._busy and not self._asking:
            # KeyboardInterrupt in the main thread, also waking a sleep; psycopg cancels the
            # query it waits on and re-raises.
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        elif interrupt:
            self.lines.put(EOF)  # wake a main thread waiting for the next request or the commit


def _cancel(conn) -> None:
    try:
        if not getattr(conn, "closed", False):
            conn.cancel()
    except Exception:  # noqa: BLE001
        pass


def die_with_parent() -> None:
    """Linux: SIGTERM when the parent process dies (a local agent whose invoke was killed).
    The kernel fires it when the parent's *thread* that started the agent ends: hosts start
    agents from their main thread (a worker thread's agent would be stopped with the thread)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() == 1 and os.getpid() != 1:  # orphaned before prctl: the parent is gone
            os.kill(os.getpid(), signal.SIGTERM)
    except Exception:  # noqa: BLE001 - an optional safety net; stdin's EOF is the main one
        pass


LIFELINE = Lifeline()
