"""Scheduled jobs (backup, drill): their cron triggers, the ticks they are due at, and
running one tick of a job exactly once across every instance of the service.

APScheduler's ``CronTrigger`` reads the schedules (5 cron fields; a 6th leading field adds
seconds). One tick of a job runs under the dbops advisory lock (the backup under the
database's lock, the drill under its own scope), and the tick it ran for is recorded in
``<backup dir>/.dbops-schedule.<db>.<job>.json`` while that lock is held: a second instance that
fires for the same tick either finds the lock taken or the tick already done, and skips.
The same file tells a restarted service which tick it missed.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from dbops import catalog
from dbops.config import Settings
from dbops.cron import (  # noqa: F401  (the schedule's triggers; re-exported)
    DEFAULT_BACKUP_INTERVAL_S,
    JOBS,
    backup_interval_s,
    cron_trigger,
    fires_between,
    interval_s,
    iso,
    last_fire,
    parse_iso,
    trigger_for,
)


# --- the state files: the last tick each job ran for --------------------------------------
def state_path(settings: Settings, job: str) -> Path:
    """One file per database and job, written only under that job's lock (a backup and a
    drill may run at the same time: they never write the same file)."""
    return (
        Path(settings.backup_dir) / f".dbops-schedule.{catalog.slug(settings.database)}.{job}.json"
    )


def read_state(settings: Settings, job: str) -> dict:
    try:
        data = json.loads(state_path(settings, job).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record_tick(settings: Settings, job: str, tick: datetime, result: str, **fields) -> None:
    """Write the job's last tick (atomically; call it holding the job's lock)."""
    catalog.ensure_dir(Path(settings.backup_dir))
    catalog.write_json_atomic(
        state_path(settings, job),
        {
            "database": settings.database,
            "job": job,
            "tick": iso(tick),
            "result": result,
            "at": iso(datetime.now(UTC)),
            **fields,
        },
    )


def last_tick(settings: Settings, job: str) -> datetime | None:
    return parse_iso(read_state(settings, job).get("tick"))


def missed_tick(settings: Settings, job: str, now: datetime | None = None) -> datetime | None:
    """After a restart: the latest tick of ``job`` that passed with no run recorded since the
    last recorded one (None when nothing was missed, or no run was ever recorded)."""
    trig = trigger_for(settings, job)
    before = last_tick(settings, job)
    if trig is None or before is None:
        return None
    latest = last_fire(trig, now)
    return latest if latest is not None and latest > before else None


def lock_scope(job: str) -> str | None:
    """The backup shares the database's lock with every change; a drill has its own."""
    return None if job == "backup" else job


def run_tick(settings: Settings, job: str, tick: datetime) -> dict:
    """Run ``job`` for ``tick`` unless another instance holds its lock or has already run it.
    Returns {"result": "ok"|"skipped", "why"?, plus the job's own result}; raises OpsError when
    the job itself fails (the failed tick is recorded: it is not retried in a loop)."""
    from dbops.agent_client import Agent, AgentError
    from dbops.errors import OpsError

    with Agent(settings) as agent:
        try:
            agent.call("lock.acquire", purpose=f"scheduled {job}", scope=lock_scope(job))
        except AgentError as exc:
            if exc.kind == "locked":
                return {
                    "result": "skipped",
                    "why": f"another instance holds the lock: {exc.message}",
                }
            raise
        done = last_tick(settings, job)
        if done is not None and done >= tick:
            return {"result": "skipped", "why": f"tick {iso(tick)} already ran (another instance)"}
        from dbops import events

        events.begin()  # the tick runs here: now its /start ping
        try:
            if job == "backup":
                from dbops.ops.backup import take_backup

                res = take_backup(settings, agent, "scheduled", progress=False)
                out = {
                    "result": "ok",
                    "backup": res["path"],
                    "revisions": res["manifest"]["revisions"],
                    "pruned": res["pruned"],
                }
            else:
                from dbops.ops.drill import run_drill

                res = run_drill(settings, agent)
                out = {"result": "ok", "backup": res["backup"], "restore_s": res["restore_s"]}
        except OpsError as exc:
            record_tick(settings, job, tick, "failed", error=exc.message)
            raise
        except KeyboardInterrupt:  # stopped: the tick stays due (the next start catches up)
            raise
        record_tick(settings, job, tick, "ok", **{k: v for k, v in out.items() if k in ("backup",)})
        return out


def describe(settings: Settings) -> list[dict]:
    """Each job: its schedule, next and last tick (for `invoke serve --dry-run`, metrics)."""
    now = datetime.now(UTC)
    rows = []
    for job, name in JOBS.items():
        trig = trigger_for(settings, job)
        rows.append(
            {
                "job": job,
                "schedule": settings.get(name),
                "next": iso(trig.get_next_fire_time(None, now)) if trig else None,
                "interval_s": interval_s(trig, now) if trig else None,
                "last_tick": iso(t) if (t := last_tick(settings, job)) else None,
            }
        )
    return rows


def env_for_child(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DBOPS_ENV_FILE", str(settings.get("DBOPS_ENV_FILE")))
    return env
