"""The seam's process layer: a command started through the seam (dbops/seam.py) as a ``Job``.

A job runs in its own session (``stop`` ends it and every process it started: SIGTERM to the
group, SIGKILL after 10 s). Its stderr is read on a thread and split by ONE parser into
``dbops:key=value`` markers (what the scripts report) and messages (what the tools said,
secrets masked). Its stdout is discarded, or copied into a file by a ``Stream`` (a thread:
sha256 and size as the bytes flow, a progress bar, a write error stops the job).

The POSIX scripts run next to the server live in dbops/sh/*.sh (linted by shellcheck in
scripts/test): ``sh_argv(name, argv0, *args)`` is the ``sh -c`` argv handed to ``target.pg``.
Arguments are positional ($1…); passwords never go there (they travel in the environment).
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

from dbops import seam

CHUNK = 1 << 20
MARKER = re.compile(r"^dbops:([a-z_]+)(?:=(.*))?$")


@functools.cache
def script(name: str) -> str:
    """The text of dbops/sh/<name>.sh (shipped with the package)."""
    return (resources.files("dbops") / "sh" / f"{name}.sh").read_text(encoding="utf-8")


def sh_argv(name: str, argv0: str, *args: str) -> list[str]:
    """``sh -c <dbops/sh/name.sh> argv0 args…``: argv0 is the script's $0 (its name in ps and in
    its own error messages), args its $1…"""
    return ["sh", "-c", script(name), argv0, *args]


def parse(lines: Iterable[str], secrets: Sequence[str] = ()) -> tuple[dict[str, str], list[str]]:
    """A script's stderr: ``dbops:key=value`` (or ``dbops:key``) lines are markers, the last one
    of a key wins; every other non-blank line is a message, secrets masked."""
    markers: dict[str, str] = {}
    messages: list[str] = []
    for line in lines:
        m = MARKER.match(line)
        if m:
            markers[m.group(1)] = m.group(2) or ""
        elif line.strip():
            messages.append(seam.mask(line, secrets))
    return markers, messages


def drain(src, lines: list[str]) -> None:
    """Read a pipe to its end, one decoded line at a time, into ``lines``."""
    for raw in iter(src.readline, b""):
        lines.append(raw.decode(errors="replace").rstrip("\n"))


def stop(proc: subprocess.Popen) -> None:
    """End a process started with start_new_session=True and its whole group: SIGTERM, then
    SIGKILL after 10 s. Nothing when it has already ended."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()


def pump(src, fd: int, state: dict, progress) -> None:
    """Copy ``src`` (a pipe) into the file descriptor ``fd``, hashing it. One preallocated buffer
    (readv into it): no allocation per read. ``state`` receives size, sha256 and, when writing
    failed (OSError: EFBIG, ENOSPC), write_error."""
    import hashlib

    h = hashlib.sha256()
    n = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    rfd = src.fileno()
    try:
        while True:
            got = os.readv(rfd, [buf])
            if not got:
                break
            chunk = view[:got]
            done = 0
            while done < got:
                done += os.write(fd, chunk[done:])
            h.update(chunk)
            n += got
            progress.update(n)
    except BaseException as exc:  # noqa: BLE001 - reported by the caller (OSError: EFBIG, ENOSPC)
        state["write_error"] = exc
    finally:
        state["size"] = n
        state["sha256"] = h.hexdigest()
        progress.update(n, final=True)


def widen_pipe(pipe) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer wake-ups per gigabyte (Linux; ignored elsewhere)."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (OSError, ImportError, ValueError):
        pass


@dataclass(frozen=True)
class Ended:
    """How a job ended: its exit status, its markers, its messages (masked)."""

    rc: int
    markers: dict[str, str]
    messages: list[str]


PR_SET_PDEATHSIG = 1


@functools.cache
def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def dies_with_parent():
    """A preexec_fn: the job gets SIGTERM when this process dies (kill -9 included), and its
    script's TERM trap ends its whole process group (dbops/sh/*.sh). Only from the main thread
    (a preexec_fn is not safe in threads, and the "parent" would be the forking thread); None
    elsewhere, or off Linux."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = _libc().prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return preexec


class Job:
    """A command through the seam, in its own session, its stderr read as it comes."""

    def __init__(self, launch: seam.Launch, *, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL):
        self.secrets = launch.secrets
        self.lines: list[str] = []
        self.proc = seam.start(
            launch,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=dies_with_parent(),
        )
        self._reader = threading.Thread(
            target=drain, args=(self.proc.stderr, self.lines), daemon=True
        )
        self._reader.start()

    def stream_to(self, fd: int, progress) -> Stream:
        """Copy the job's stdout (started with stdout=PIPE) into ``fd``, on a thread."""
        return Stream(self, fd, progress)

    def stop(self) -> None:
        stop(self.proc)

    def finish(self) -> Ended:
        """Wait for the job (stopped if waiting is interrupted), then parse its stderr."""
        try:
            rc = self.proc.wait()
        finally:
            self.stop()
        self._reader.join(timeout=30)
        markers, messages = parse(self.lines, self.secrets)
        return Ended(rc, markers, messages)

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Stream:
    """A job's stdout copied into a file descriptor on a thread (``pump``): ``state`` holds
    size, sha256 and write_error."""

    def __init__(self, job: Job, fd: int, progress):
        self.job = job
        self.state: dict = {}
        widen_pipe(job.proc.stdout)
        self._thread = threading.Thread(
            target=pump, args=(job.proc.stdout, fd, self.state, progress), daemon=True
        )
        self._thread.start()

    @property
    def error(self) -> BaseException | None:
        return self.state.get("write_error")

    def wait(self) -> None:
        """Until the copy has ended; a write error stops the job at once (its stdout closed)."""
        while self._thread.is_alive():
            self._thread.join(0.2)
            if self.error is not None:
                break
        if self.error is not None:
            self.job.proc.stdout.close()
            self.job.stop()
        self._thread.join()


def run_job(launch: seam.Launch, *, stdin=subprocess.DEVNULL) -> Ended:
    """Run to its end with stdout discarded: status, markers, messages."""
    return Job(launch, stdin=stdin).finish()
