"""The dbops service: scheduled backups and restore drills (``invoke serve``; the compose
service ``dbops`` runs ``python -m dbops.serve``).

APScheduler's BlockingScheduler fires each job on its CronTrigger (DBOPS_BACKUP_SCHEDULE,
DBOPS_DRILL_SCHEDULE). Each firing runs ONE child process, ``python -m dbops.serve job NAME
--tick T``, which takes the job's advisory lock and runs the tick unless another instance
already did (dbops/ops/schedule.py): a job's work never shares a process with the
scheduler, so SIGTERM can stop it cleanly. On start, a tick missed while the service was
down (the state file names the last one that ran) is run at once and reported as an event.

SIGTERM / SIGINT: no new job starts, each running child gets SIGTERM, which it turns into
an interruption — a backup removes its ``.partial`` file, a drill drops its scratch
database — and the service exits 0 once they have finished.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from dbops import events, metrics
from dbops.config import Settings, load_settings
from dbops.errors import OpsError
from dbops.ops import schedule

CHILD_GRACE_S = 120
METRICS_REFRESH_S = 60


class Service:
    def __init__(self, settings: Settings, log_format: str | None = None):
        self.settings = settings
        self.log_format = log_format or settings.get("DBOPS_LOG_FORMAT")
        self.out = events.Command("serve", settings, self.log_format)
        self.children: set[subprocess.Popen] = set()
        self.guard = threading.Lock()
        self.stopping = False
        self.scheduler = None

    def say(self, event: str, text: str, **fields) -> None:
        if self.out.json:
            self.out.emit(event, message=text, **fields)
        else:
            print(f"serve: {text}", file=sys.stderr, flush=True)

    # --- jobs --------------------------------------------------------------------
    def fire(self, job: str) -> None:
        """Called by the scheduler: run the tick this firing stands for."""
        tick = schedule.last_fire(schedule.trigger_for(self.settings, job)) or datetime.now(UTC)
        self.run(job, tick)

    def run(self, job: str, tick: datetime) -> int | None:
        argv = [
            sys.executable,
            "-m",
            "dbops.serve",
            "job",
            job,
            "--tick",
            schedule.iso(tick),
            "--project-dir",
            str(self.settings.project_dir),
            "--log-format",
            self.log_format,
        ]
        with self.guard:
            if self.stopping:
                return None
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, env=schedule.env_for_child(self.settings)
            )
            self.children.add(proc)
        self.say(
            "job",
            f"{job} for tick {schedule.iso(tick)} started (pid {proc.pid})",
            job=job,
            tick=schedule.iso(tick),
            pid=proc.pid,
        )
        try:
            rc = proc.wait()
        finally:
            with self.guard:
                self.children.discard(proc)
        self.say(
            "job",
            f"{job} for tick {schedule.iso(tick)} ended with status {rc}",
            job=job,
            tick=schedule.iso(tick),
            status=rc,
        )
        metrics.write_quietly(self.settings)
        return rc

    def _scheduler_log(self) -> None:
        """APScheduler's own warnings (a firing skipped while the last run still goes on,
        a job that raised) as the service's events, not bare log lines."""
        import logging

        service = self

        class ToEvents(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                service.say("scheduler", record.getMessage(), level=record.levelname.lower())

        log = logging.getLogger("apscheduler")
        log.handlers[:] = [ToEvents(level=logging.WARNING)]
        log.propagate = False

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> int:
        from apscheduler.schedulers.blocking import BlockingScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        s = self.settings
        self._scheduler_log()
        self.scheduler = BlockingScheduler(timezone=ZoneInfo(s.get("DBOPS_SCHEDULE_TIMEZONE")))
        jobs = 0
        for job in schedule.JOBS:
            trig = schedule.trigger_for(s, job)
            if trig is None:
                self.say("schedule", f"{job}: off ({schedule.JOBS[job]}=off)", job=job)
                continue
            jobs += 1
            # one run of a job at a time in this instance; a late firing still runs once
            self.scheduler.add_job(
                self.fire,
                trig,
                args=[job],
                id=job,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
            missed = schedule.missed_tick(s, job)
            if missed is not None:
                self.say(
                    "missed",
                    f"{job}: the tick at {schedule.iso(missed)} was missed while "
                    f"the service was down; running it now",
                    job=job,
                    tick=schedule.iso(missed),
                )
                self.scheduler.add_job(
                    self.run, args=[job, missed], id=f"{job}-missed", misfire_grace_time=None
                )
            nxt = trig.get_next_fire_time(None, datetime.now(UTC))
            self.say(
                "schedule",
                f"{job}: '{s.get(schedule.JOBS[job])}' "
                f"({s.get('DBOPS_SCHEDULE_TIMEZONE')}), next at {schedule.iso(nxt)}",
                job=job,
                next=schedule.iso(nxt),
            )
        if not jobs:
            raise OpsError(
                "nothing to schedule: DBOPS_BACKUP_SCHEDULE and DBOPS_DRILL_SCHEDULE are both off",
                state="unchanged",
                next_command="invoke settings   # then set DBOPS_BACKUP_SCHEDULE "
                "(e.g. '0 3 * * *') in .env",
            )
        self.scheduler.add_job(
            metrics.write_quietly,
            IntervalTrigger(seconds=METRICS_REFRESH_S),
            args=[s],
            id="metrics",
            coalesce=True,
        )
        metrics.write_quietly(s)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        self.say("start", f"serving {s.database} ({s.target}); stop with SIGTERM")
        self.scheduler.start()  # returns after stop()
        self.wait_children()
        self.say("stop", "stopped")
        return 0

    def stop(self, signum=None, frame=None) -> None:
        with self.guard:
            if self.stopping:
                return
            self.stopping = True
            running = list(self.children)
        self.say("stopping", f"signal {signum}: stopping {len(running)} running job(s)")
        for proc in running:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)

    def wait_children(self) -> None:
        for proc in list(self.children):
            try:
                proc.wait(timeout=CHILD_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def serve(settings: Settings, log_format: str | None = None) -> int:
    return Service(settings, log_format).start()


# --- the child: one tick of one job ----------------------------------------------------
def _interrupt(_signum, _frame):
    # Once: a second signal (Ctrl-C reaches the whole process group, then the service's
    # SIGTERM follows) must not interrupt the cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def run_job(settings: Settings, job: str, tick: datetime, log_format: str | None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    def body():
        res = schedule.run_tick(settings, job, tick)
        events.note(
            **{k: v for k, v in res.items() if k in ("backup", "revisions", "restore_s")},
            outcome=res["result"],
            tick=schedule.iso(tick),
        )
        if res["result"] == "skipped":
            print(f"{job}: skipped: {res['why']}", file=sys.stderr, flush=True)
        return res

    try:
        events.run_command(
            f"scheduled-{job}",
            settings,
            body,
            log_format=log_format,
            notify=True,
            defer_start=True,  # /start once the tick holds its lock and is due
        )
    except OpsError as exc:
        if not getattr(exc, "reported", False):  # JSON mode: the summary event carries it
            print(exc.render(), file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{job}: interrupted; nothing partial was left", file=sys.stderr, flush=True)
        return 143
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dbops.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--project-dir", default=".", help="where .env and the backups folder are")
    p.add_argument("--log-format", choices=("text", "json"), default=None)
    sub = p.add_subparsers(dest="command")
    j = sub.add_parser("job", help="run one tick of one job now (what the service runs)")
    j.add_argument("job", choices=sorted(schedule.JOBS))
    j.add_argument("--tick", help="the scheduled time (ISO, UTC) this run stands for; default now")
    j.add_argument("--project-dir", dest="job_project_dir", default=None)
    j.add_argument("--log-format", dest="job_log_format", choices=("text", "json"), default=None)
    a = p.parse_args(argv)
    project = Path(getattr(a, "job_project_dir", None) or a.project_dir)
    log_format = getattr(a, "job_log_format", None) or a.log_format
    try:
        settings = load_settings(project)
        if a.command == "job":
            tick = schedule.parse_iso(a.tick) if a.tick else datetime.now(UTC)
            return run_job(settings, a.job, tick, log_format)
        return serve(settings, log_format)
    except OpsError as exc:
        if a.command == "job":  # a bad setting: the job's /fail ping (when the URL reads)
            fmt = log_format or events._raw_setting("DBOPS_LOG_FORMAT") or "text"
            failed = events.Command(
                f"scheduled-{a.job}", None, "json" if fmt == "json" else "text", notify=True
            )
            failed.finish("failed", exc)
            if failed.json:
                return exc.exit_code
        print(exc.render(), file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
