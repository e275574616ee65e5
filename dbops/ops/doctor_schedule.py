"""doctor's ``schedule`` check: a missed scheduled backup tick, named as soon as it is missed.

The ``backups`` check warns at 1.5 × the schedule (36 h on a daily one). This one compares
the newest verified backup with the LAST TICK of DBOPS_BACKUP_SCHEDULE: once the tick is more
than the grace old (``grace_s``: one hour, or half the schedule's interval when that is
shorter, time for the tick's backup to finish) and no verified backup was started at or after
it, the tick was missed — the service is down, or its backup failed (the schedule state file
says which). Quiet when the schedule is off or there is no backup at all (``backups`` says
that); read-only (the backup folder and the schedule state file).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dbops import catalog
from dbops.ops import schedule as sched
from dbops.ops.doctor_facts import OK, WARN, Check, Facts

GRACE_MAX_S = 3600
SLACK_S = 60  # a backup started a moment before the tick still stands for it


def grace_s(interval_s: float) -> float:
    return min(GRACE_MAX_S, interval_s / 2)


def missed_backup_tick(settings, now: datetime | None = None) -> dict | None:
    """{"tick", "newest", "result", "error"} when the last backup tick was missed, else None
    (also None when the schedule is off or there is no verified backup)."""
    now = now or datetime.now(UTC)
    trig = sched.trigger_for(settings, "backup")
    newest = catalog.newest_verified(settings, settings.database)
    if trig is None or newest is None:
        return None
    tick = sched.last_fire(trig, now)
    interval = sched.interval_s(trig, now) or sched.DEFAULT_BACKUP_INTERVAL_S
    if tick is None or (now - tick).total_seconds() <= grace_s(interval):
        return None
    taken = sched.parse_iso(newest.get("created_at"))
    if taken is not None and taken >= tick - timedelta(seconds=SLACK_S):
        return None
    state = sched.read_state(settings, "backup")
    ran = sched.parse_iso(state.get("tick")) == tick
    return {
        "tick": tick,
        "newest": taken,
        "result": state.get("result") if ran else None,
        "error": state.get("error") if ran else None,
    }


def schedule(f: Facts) -> Check | None:
    s = f.settings
    expr = s.get("DBOPS_BACKUP_SCHEDULE")
    if expr == "off" or catalog.newest_verified(s, s.database) is None:
        return None  # nothing scheduled, or no backup at all: the backups check says it
    missed = missed_backup_tick(s)
    if missed is None:
        return Check("schedule", OK, f"backups on '{expr}': the last tick has its backup")
    tick = sched.iso(missed["tick"])[:16] + "Z"
    newest = sched.iso(missed["newest"])[:16] + "Z" if missed["newest"] else "?"
    if missed["result"] == "failed":
        why = f"the scheduled backup for it failed: {missed['error'] or 'see the service log'}"
    else:
        why = "no run of it was recorded: is the dbops service (or the cron job) running?"
    return Check(
        "schedule",
        WARN,
        f"the backup tick at {tick} ('{expr}') was missed: the newest verified backup is "
        f"from {newest}",
        [why, "docker compose --profile ops ps dbops; docker compose --profile ops logs dbops"],
        next="invoke backup",
        why="a scheduled backup was missed",
        data={"tick": tick, "newest": newest, "result": missed["result"]},
    )
