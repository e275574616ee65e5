"""Run one verb over the fleet: canaries first, then the waves in order, at most ``parallel``
databases at once, no new start once ``max_failures`` have failed.

Each database's operation is the ordinary task — ``invoke <verb>`` in a child process whose
environment points it at that database (its password travels in the environment, never on
argv) — so it takes its own advisory lock, its own verified backup, writes its own audit
record and verifies itself exactly as a single ``invoke migrate`` does. The child's result comes
back through DBOPS_RESULT_FILE; its output goes to one log per database, its metrics to one
file per member (``<DBOPS_METRICS_FILE stem>.<member>.prom`` beside it: node exporter's
textfile collector reads them all, so the fleet's view is complete after every run).

Children die with the runner: each runs in its own process group (a terminal's Ctrl-C reaches
the runner only, which passes one SIGINT on) with PR_SET_PDEATHSIG = SIGINT, so a runner killed
with SIGKILL still interrupts every child, which cleans up as after Ctrl-C. The state file
names each running child's pid: ``--resume`` (or a new run) waits for a previous run's
children that are still winding down instead of calling their database busy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from dbops.audit import utcnow
from dbops.config import Settings
from dbops.errors import ConfigError
from dbops.fleet import plan
from dbops.fleet.state import State

VERBS = ("migrate", "backup", "doctor", "current", "rehearse")
CHANGING_VERBS = ("migrate", "backup", "rehearse")  # zero members is an error for these
Out = Callable[[str], None]
ORPHAN_WAIT_S = 600  # how long a new run waits for a killed run's children to finish


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a reused pid is not our child: it must still be an invoke of this fleet verb
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return b"invoke" in b" ".join(cmd)


def metrics_file_for(settings: Settings, member: str) -> Path | None:
    """The member's own metrics file beside DBOPS_METRICS_FILE (None when that is unset)."""
    path = settings.get("DBOPS_METRICS_FILE")
    if path is None:
        return None
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in member)
    return path.with_name(f"{path.stem}.{safe}{path.suffix or '.prom'}")


@dataclass
class Outcome:
    name: str
    where: str
    status: str  # ok, failed, interrupted, not started, done earlier
    before: str = ""
    after: str = ""
    seconds: float | None = None
    backup: str = ""
    error: str = ""
    state: str = ""
    next: str = ""
    rerun: str = ""
    alone: str = ""
    log: str = ""
    warnings: list[str] | None = None  # doctor: the checks that warn (the run is still ok)


def label(revs) -> str:
    if revs is None:
        return "?"
    if isinstance(revs, str):
        revs = [revs]
    return "+".join(r[:12] for r in revs) if revs else "base"


def _revisions(result: dict) -> tuple[str, str]:
    """from → to as any of the tasks report it: migrate (before/after), backup (revisions),
    current (current), doctor (the status check's data) — '?' when the result does not say."""
    before = result.get("before", result.get("current", result.get("revisions")))
    after = result.get("after", result.get("current", result.get("revisions")))
    return label(before), label(after)


class FleetRun:
    def __init__(
        self,
        settings: Settings,
        verb: str,
        *,
        flags: list[str],
        parallel: int,
        canary: int,
        max_failures: int,
        resume: bool,
        only: list[str] | None,
        out: Out,
        per_server: int = 0,
    ):
        if verb not in VERBS:
            raise ConfigError(f"invoke fleet {verb}: not a fleet verb (one of: {', '.join(VERBS)})")
        if parallel < 1:
            raise ConfigError("--parallel must be 1 or more")
        if canary < 0 or max_failures < 0 or per_server < 0:
            raise ConfigError("--canary, --max-failures and --per-server must be 0 or more")
        self.per_server = per_server
        self.settings, self.verb, self.flags, self.out = settings, verb, flags, out
        self.parallel, self.canary, self.max_failures = parallel, canary, max_failures
        self.dir: Path = settings.get("DBOPS_FLEET_DIR")
        self.members = plan.load(settings)
        if not self.members and verb in CHANGING_VERBS:
            fleet_file = settings.get("DBOPS_FLEET_FILE")
            raise ConfigError(
                f"{fleet_file}: no databases (no [[database]] entry, and no [[discover]] "
                f"matched any): invoke fleet {verb} would change nothing and report success",
                state="nothing was started",
                next_command="invoke fleet current   # lists the members; then add [[database]] "
                "entries (docs/scaling.md)",
            )
        if only:
            known = {m.name for m in self.members}
            missing = [n for n in only if n not in known]
            if missing:
                raise ConfigError(
                    f"--only: not in the fleet: {', '.join(missing)}",
                    next_command="invoke fleet current   (lists every member)",
                )
            self.members = [m for m in self.members if m.name in only]
        state_path = self.dir / f"{verb}.state.json"
        self._hold_run_lock(self.dir / f"{verb}.lock")
        previous = State.load(state_path)
        # --only reruns the named members inside the current run's state (so a --resume after
        # it still knows the rest); --resume alone skips what completed.
        self.skip_completed, self.partial = resume, bool(only)
        if only and not resume and previous and previous.doc.get("flags") == flags:
            self.state = previous
        elif resume:
            if previous is None:
                raise ConfigError(
                    f"nothing to resume: no state file {state_path}",
                    next_command=f"invoke fleet {verb}",
                )
            if previous.doc.get("flags") != flags:
                raise ConfigError(
                    f"the run being resumed used: invoke fleet {verb} "
                    f"{' '.join(previous.doc.get('flags') or [])}; resume it with the same flags"
                )
            self.state = previous
            self.state.doc["resumed"] = [*self.state.doc.get("resumed", []), utcnow()]
        else:
            if previous and not previous.doc.get("finished") and not only:
                out(
                    f"note: the previous fleet {verb} (started {previous.doc.get('started')}) did "
                    "not finish; starting over (--resume would have skipped what it completed)"
                )
            self.state = State.new(state_path, verb, flags, settings.get("DBOPS_FLEET_FILE"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = False
        self.running_now = 0
        self.max_running = 0
        self._count_lock = threading.Lock()

    def _hold_run_lock(self, path: Path) -> None:
        """One runner per verb and fleet folder: a second one would overwrite the state file.
        (Each database is protected by its own advisory lock either way.) Held until exit."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_file = open(path, "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            raise ConfigError(
                f"another invoke fleet {self.verb} is running on {self.dir} ({holder})",
                state="nothing was started by this run",
                next_command=f"invoke fleet {self.verb} --resume   # once it has finished "
                f"(its state: {self.dir / (self.verb + '.state.json')})",
            ) from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"pid {os.getpid()}, started {utcnow()}\n")
        self._lock_file.flush()

    # --- one database ------------------------------------------------------------------
    def _paths(self, name: str) -> tuple[Path, Path]:
        safe = name.replace("/", "__")
        logs = self.dir / "logs" / self.verb
        logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        return logs / f"{safe}.log", logs / f"{safe}.result.json"

    def run_one(self, m: plan.Member) -> Outcome:
        log, result_file = self._paths(m.name)
        result_file.unlink(missing_ok=True)
        attempts = self.state.databases.get(m.name, {}).get("attempts", 0) + 1
        self.state.update(
            m.name,
            status="running",
            started=utcnow(),
            where=m.where,
            attempts=attempts,
            log=str(log),
        )
        env = {**m.environ(dict(os.environ)), "DBOPS_RESULT_FILE": str(result_file)}
        own_metrics = metrics_file_for(self.settings, m.name)
        if own_metrics is not None:
            env["DBOPS_METRICS_FILE"] = str(own_metrics)
        # dbops.fleet.child sets the death signal, then execs `python -m invoke VERB FLAGS`
        argv = [sys.executable, "-m", "dbops.fleet.child", self.verb, *self.flags]
        env["DBOPS_FLEET_RUNNER_PID"] = str(os.getpid())
        t0 = time.monotonic()
        with self._count_lock:
            self.running_now += 1
            self.max_running = max(self.max_running, self.running_now)
        try:
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "ab") as f:
                f.write(
                    f"--- {utcnow()} invoke {self.verb} on "
                    f"{m.where} (attempt {attempts})\n".encode()
                )
                f.flush()
                proc = subprocess.Popen(
                    argv,
                    cwd=self.settings.project_dir,
                    env=env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    process_group=0,  # Ctrl-C reaches the runner, which passes it on once
                )
                self.procs[m.name] = proc
                self.state.update(m.name, pid=proc.pid)
                code = proc.wait()
        finally:
            with self._count_lock:
                self.running_now -= 1
            self.procs.pop(m.name, None)
        seconds = round(time.monotonic() - t0, 2)
        outcome = Outcome(
            m.name,
            m.where,
            "ok" if code == 0 else "failed",
            seconds=seconds,
            log=str(log),
            rerun=f"invoke fleet {self.verb} --only {m.name}",
            alone=m.command(self.verb, self.flags),
        )
        try:
            res = json.loads(result_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            res = None
        if res is not None:
            data = res.get("result") or {}
            outcome.warnings = [
                f"{c.get('name')}: {c.get('summary', '')}".strip()
                for c in data.get("checks", []) or []
                if isinstance(c, dict) and c.get("status") == "warn"
            ] or None
            outcome.before, outcome.after = _revisions(data)
            outcome.backup = str(data.get("backup") or data.get("path") or "")
            outcome.error, outcome.state, outcome.next = (
                res.get("error") or "",
                res.get("state") or "",
                res.get("next") or "",
            )
        if code != 0 and not outcome.error:
            outcome.error = _last_line(log) or f"exited with status {code}"
        if code != 0 and not outcome.state:
            outcome.state = "unknown: the task wrote no result (read its log)"
        if code != 0 and not outcome.next:
            outcome.next = f"invoke fleet {self.verb} --only {m.name}   # after reading its log"
        if code != 0 and (self.stopping or code in (130, -signal.SIGINT, -signal.SIGTERM)):
            outcome.status = "interrupted"
        self.state.update(
            m.name,
            status=outcome.status,
            pid=None,
            finished=utcnow(),
            seconds=seconds,
            exit_code=code,
            before=outcome.before,
            after=outcome.after,
            backup=outcome.backup,
            error=outcome.error,
            state=outcome.state,
            next=outcome.next,
        )
        return outcome

    def _next(self, queue: list[plan.Member], running) -> plan.Member | None:
        """The first queued member whose server has room (--per-server); None: wait."""
        busy: dict[str, int] = {}
        for m in running:
            busy[m.server] = busy.get(m.server, 0) + 1
        for i, m in enumerate(queue):
            if not self.per_server or busy.get(m.server, 0) < self.per_server:
                return queue.pop(i)
        return None

    @contextlib.contextmanager
    def _interrupts_children(self):
        """On Ctrl-C / SIGTERM: stop starting, pass SIGINT to every running child (each records
        itself as interrupted), and let the pool wait for them before leaving."""
        try:
            yield
        except KeyboardInterrupt:
            self.stopping = True
            for proc in list(self.procs.values()):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            raise

    def wait_for_previous_children(self, previous: State) -> None:
        """A killed run's children get SIGINT (their death signal) and wind down; until they
        have, their databases' locks are held by them. Wait for them, naming each."""
        left = {
            name: d["pid"]
            for name, d in previous.databases.items()
            if d.get("status") == "running" and d.get("pid") and d["pid"] != os.getpid()
        }
        deadline = time.monotonic() + ORPHAN_WAIT_S
        for name, pid in left.items():
            if not _alive(pid):
                continue
            self.out(
                f"waiting for pid {pid}: the previous run's invoke {self.verb} on {name}, "
                f"interrupted when that run died, is still finishing"
            )
            while _alive(pid):
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"pid {pid} (the previous run's invoke {self.verb} on {name}) is still "
                        f"running after {ORPHAN_WAIT_S} s",
                        state="nothing was started by this run",
                        next_command=f"kill -INT {pid}; then: invoke fleet {self.verb} --resume",
                    )
                time.sleep(0.5)

    # --- the run -------------------------------------------------------------------------
    def phases(self) -> list[tuple[str, list[plan.Member]]]:
        canaries = self.members[: self.canary]
        rest = self.members[self.canary :]
        phases = [("canary", canaries)] if canaries else []
        for wave in sorted({m.wave for m in rest}):
            phases.append((f"wave {wave}", [m for m in rest if m.wave == wave]))
        return phases

    def run(self) -> dict:
        outcomes: dict[str, Outcome] = {}
        phases = self.phases()
        todo = sum(
            1 for m in self.members if not (self.skip_completed and self.state.completed(m.name))
        )
        self.out(
            f"fleet {self.verb}: {len(self.members)} database(s), {todo} to run; "
            + ", ".join(f"{n} ({len(ms)})" for n, ms in phases)
            + f"; at most {self.parallel} at once"
            + (f", {self.per_server} per server" if self.per_server else "")
            + "; "
            + (
                f"no new start after {self.max_failures} failure(s)"
                if self.max_failures
                else "no failure limit"
            )
            + f"; state: {self.state.path}"
        )
        for m in self.members:
            if self.skip_completed and self.state.completed(m.name):
                prev = self.state.databases[m.name]
                outcomes[m.name] = Outcome(
                    m.name,
                    m.where,
                    "done earlier",
                    prev.get("before", ""),
                    prev.get("after", ""),
                    prev.get("seconds"),
                    prev.get("backup", ""),
                    log=prev.get("log", ""),
                )
        failures, stop_reason, finished = 0, "", 0
        on_disk = State.load(self.state.path)  # the last run's, until this one writes
        if on_disk is not None:
            self.wait_for_previous_children(on_disk)
        self.state.plan({m.name: m.where for m in self.members})
        previous_term = _sigterm_as_interrupt()
        try:
            with ThreadPoolExecutor(max_workers=self.parallel) as pool, self._interrupts_children():
                for phase, members in phases:
                    queue = [m for m in members if m.name not in outcomes]
                    running: dict[Future, plan.Member] = {}
                    while queue or running:
                        while queue and len(running) < self.parallel and not stop_reason:
                            m = self._next(queue, running.values())
                            if m is None:
                                break
                            running[pool.submit(self.run_one, m)] = m
                        if not running:
                            break
                        done, _ = wait(running, return_when=FIRST_COMPLETED)
                        for fut in done:
                            m = running.pop(fut)
                            o = fut.result()
                            outcomes[m.name] = o
                            finished += 1
                            self.out(
                                f"[{finished}/{todo}] {phase}: {m.name}: {o.status} in "
                                f"{o.seconds:.1f} s ({o.before} → {o.after})"
                                + (f": {o.error}" if o.status != "ok" else "")
                            )
                            if o.status != "ok":
                                failures += 1
                                already = bool(stop_reason)
                                if phase == "canary" and not stop_reason:
                                    stop_reason = f"canary {m.name} failed"
                                elif (
                                    self.max_failures
                                    and failures >= self.max_failures
                                    and not stop_reason
                                ):
                                    stop_reason = (
                                        f"{failures} failure(s) reached "
                                        f"--max-failures {self.max_failures}"
                                    )
                                if stop_reason and not already:  # said once
                                    self.out(
                                        f"stopping: {stop_reason}; no new database is started, "
                                        f"{len(running)} running one(s) finish"
                                    )
                    if stop_reason:
                        break
        except KeyboardInterrupt:
            # The pool's threads have been waited for (each child interrupted and recorded).
            stop_reason = "interrupted"
        finally:
            for m in self.members:
                if m.name not in outcomes:
                    st = self.state.databases.get(m.name, {})
                    outcomes[m.name] = Outcome(
                        m.name,
                        m.where,
                        "interrupted"
                        if st.get("status") in ("running", "interrupted")
                        else "not started",
                        st.get("before", ""),
                        st.get("after", ""),
                        st.get("seconds"),
                        st.get("backup", ""),
                        st.get("error", ""),
                        st.get("state", ""),
                        st.get("next", ""),
                        log=st.get("log", ""),
                        rerun=f"invoke fleet {self.verb} --only {m.name}",
                        alone=m.command(self.verb, self.flags),
                    )
            if not self.stopping and (
                not self.partial
                or all(d.get("status") == "ok" for d in self.state.databases.values())
            ):
                self.state.finish()
            if previous_term is not None:
                signal.signal(signal.SIGTERM, previous_term)
        rows = [outcomes[m.name] for m in self.members]
        return {
            "verb": self.verb,
            "flags": self.flags,
            "stopped": stop_reason or None,
            "max_running": self.max_running,
            "parallel": self.parallel,
            "state_file": str(self.state.path),
            "databases": [asdict(r) for r in rows],
            "counts": {
                s: sum(1 for r in rows if r.status == s)
                for s in ("ok", "done earlier", "failed", "interrupted", "not started")
            },
        }


def _sigterm_as_interrupt():
    """SIGTERM (a CI job cancelled, a pod evicted) stops the run like Ctrl-C: no new start, the
    running children are interrupted and recorded. Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(_signum, _frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or [""])[-1]


def format_summary(report: dict) -> str:
    rows = report["databases"]
    head = ("database", "from → to", "result", "seconds", "backup")
    table = [
        (
            r["name"],
            f"{r['before'] or '?'} → {r['after'] or '?'}" if r["seconds"] is not None else "",
            r["status"] + (f", {len(r['warnings'])} warning(s)" if r.get("warnings") else ""),
            f"{r['seconds']:.1f}" if r["seconds"] is not None else "",
            r["backup"] or "",
        )
        for r in rows
    ]
    widths = [
        max(len(head[i]), *(len(t[i]) for t in table)) if table else len(head[i]) for i in range(5)
    ]
    fmt = "  ".join(f"{{:{w}}}" for w in widths[:-1]) + "  {}"
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*t).rstrip() for t in table]
    c = report["counts"]
    lines.append(
        f"{c['ok']} ok, {c['done earlier']} done earlier, {c['failed']} failed, "
        f"{c['interrupted']} interrupted, {c['not started']} not started; "
        f"at most {report['max_running']} at once (--parallel {report['parallel']})"
        + (f"; stopped: {report['stopped']}" if report["stopped"] else "")
    )
    for r in rows:
        for w in r.get("warnings") or []:
            lines.append(f"warning: {r['name']}: {w}")
    for r in rows:
        if r["status"] in ("failed", "interrupted"):
            lines.append(f"\n{r['name']} ({r['where']}): {r['status']}: {r['error']}")
            if r["state"]:
                lines.append(f"  database state: {r['state']}")
            if r["next"]:
                lines.append(f"  next: {r['next']}")
            lines.append(f"  log:   {r['log']}")
            lines.append(f"  rerun: {r['rerun']}")
            lines.append(f"  alone: {r['alone']}")
    if c["not started"] or c["failed"] or c["interrupted"]:
        flags = " ".join(report["flags"])
        lines.append(
            f"\nthen the rest: invoke fleet {report['verb']} "
            f"{flags + ' ' if flags else ''}--resume   (skips every database that completed)"
        )
    return "\n".join(lines)
