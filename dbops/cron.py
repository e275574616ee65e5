"""Cron schedules, read by APScheduler's ``CronTrigger`` (5 crontab fields; a 6th leading field
adds seconds). Here, not in ``dbops.ops.schedule``, because the settings validate schedules and
``dbops.config`` imports nothing from ``dbops.ops`` (the import graph runs one way)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from dbops.config import Settings


def cron_trigger(expr: str, timezone: str = "UTC"):
    """An APScheduler CronTrigger for 5 fields (crontab) or 6 (seconds first)."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    tz = ZoneInfo(timezone)
    if len(fields) == 5:
        return CronTrigger.from_crontab(expr, timezone=tz)
    if len(fields) == 6:
        second, minute, hour, day, month, dow = fields
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=dow,
            timezone=tz,
        )
    raise ValueError(f"{len(fields)} fields (5 expected, or 6 with seconds first)")


JOBS = {"backup": "DBOPS_BACKUP_SCHEDULE", "drill": "DBOPS_DRILL_SCHEDULE"}
DEFAULT_BACKUP_INTERVAL_S = 24 * 3600


def trigger_for(settings: Settings, job: str):
    expr = settings.get(JOBS[job])
    if expr == "off":
        return None
    return cron_trigger(expr, settings.get("DBOPS_SCHEDULE_TIMEZONE"))


def fires_between(trigger, after: datetime, until: datetime, limit: int = 100_000):
    """The trigger's fire times in (after, until], oldest first: each wall-clock tick once.

    Daylight saving: APScheduler, asked for the fire after ``t`` with ``previous_fire_time=t``
    inside the repeated autumn hour, answers ``t`` again (it spun to ``limit``). So each step
    asks from the instant after the last fire with no previous fire (which APScheduler maps
    to the right absolute time), always strictly forward, and a fire in the second pass of a
    repeated hour (``fold=1``: its wall-clock time already came once) is not a new tick. In
    the spring gap a missing wall-clock time fires once, at the first instant after it."""
    tz = getattr(trigger, "timezone", None)
    # in UTC throughout: two datetimes of ONE zone compare by wall clock, ignoring the fold
    cursor = after.astimezone(UTC) + timedelta(microseconds=1)
    until = until.astimezone(UTC)
    n = 0
    while n < limit:
        fire = trigger.get_next_fire_time(None, cursor)
        if fire is None or fire.astimezone(UTC) > until:
            return
        t = fire.astimezone(UTC)
        cursor = max(t, cursor) + timedelta(microseconds=1)  # strictly forward, always
        n += 1
        if tz is not None and _repeated(t, tz):
            continue
        yield t


def _repeated(t: datetime, tz) -> bool:
    """``t`` is the second time its wall-clock reading happens (the autumn fold)."""
    local = t.astimezone(tz)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def last_fire(trigger, now: datetime | None = None) -> datetime | None:
    """The latest fire time at or before ``now`` (looking back up to ~400 days)."""
    now = now or datetime.now(UTC)
    for window in (timedelta(hours=1), timedelta(days=1), timedelta(days=40), timedelta(days=400)):
        latest = None
        for latest in fires_between(trigger, now - window, now):  # noqa: B007
            pass
        if latest is not None:
            return latest
    return None


def interval_s(trigger, now: datetime | None = None) -> float | None:
    """The longest gap between the next few fire times: what "1.5 × the schedule" scales."""
    now = now or datetime.now(UTC)
    fires = list(itertools.islice(fires_between(trigger, now, now + timedelta(days=800)), 9))
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(fires)]
    return max(gaps) if gaps else None


def backup_interval_s(settings: Settings) -> float:
    trig = trigger_for(settings, "backup")
    return (interval_s(trig) if trig else None) or DEFAULT_BACKUP_INTERVAL_S


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)
