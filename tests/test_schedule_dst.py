"""Issue 20: schedules across daylight saving (Europe/Berlin, America/New_York): each
wall-clock tick once, strictly forward, and no spin to the iteration cap."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dbops.ops import schedule

BERLIN = ZoneInfo("Europe/Berlin")


def walls(fires, tz=BERLIN) -> list[str]:
    return [f.astimezone(tz).strftime("%H:%M") for f in fires]


def between(expr: str, tz: str, after: datetime, until: datetime) -> list[datetime]:
    trig = schedule.cron_trigger(expr, tz)
    t0 = time.monotonic()
    fires = list(schedule.fires_between(trig, after, until, limit=10_000))
    took = time.monotonic() - t0
    assert took < 5, took  # before: 10,000 iterations of the same fire time (100,000: 2-27 s)
    assert len(fires) < 10_000, "spun to the iteration cap"
    assert fires == sorted(set(fires)), "not strictly forward"
    return fires


def test_autumn_every_ten_minutes_each_wall_clock_tick_once():
    # 25 Oct 2026: 03:00 CEST -> 02:00 CET; 00:00..06:00 local is 7 hours of real time
    after = datetime(2026, 10, 24, 22, 0, tzinfo=UTC) - timedelta(microseconds=1)
    until = datetime(2026, 10, 25, 5, 0, tzinfo=UTC)
    fires = between("*/10 * * * *", "Europe/Berlin", after, until)
    local = walls(fires)
    assert len(local) == len(set(local)) == 6 * 6 + 1  # 00:00 .. 06:00, each once
    assert local[0] == "00:00" and local[-1] == "06:00"
    assert "02:30" in local


def test_autumn_a_daily_job_in_the_repeated_hour_runs_once():
    after = datetime(2026, 10, 24, 12, 0, tzinfo=UTC)
    until = datetime(2026, 10, 26, 12, 0, tzinfo=UTC)
    fires = between("30 2 * * *", "Europe/Berlin", after, until)
    assert [f.astimezone(BERLIN).strftime("%d %H:%M") for f in fires] == ["25 02:30", "26 02:30"]
    assert fires[0] == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first pass
    # the service's tick seen from inside the second pass is still the first-pass one
    trig = schedule.cron_trigger("30 2 * * *", "Europe/Berlin")
    second_pass = datetime(2026, 10, 25, 1, 45, tzinfo=UTC)
    assert schedule.last_fire(trig, second_pass) == fires[0]
    assert schedule.interval_s(trig, after) == 86400 + 3600  # the long day counts


def test_spring_the_missing_hour_fires_once_and_nothing_is_lost():
    # 29 Mar 2026: 02:00 CET -> 03:00 CEST; 02:30 does not exist
    after = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    until = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)
    fires = between("30 2 * * *", "Europe/Berlin", after, until)
    # the missing 02:30 fires once, at 03:30 CEST (one hour after 02:30 CET would have been)
    assert [f.astimezone(BERLIN).strftime("%d %H:%M") for f in fires] == ["29 03:30", "30 02:30"]
    every = between("*/15 * * * *", "Europe/Berlin", datetime(2026, 3, 29, 0, 0, tzinfo=UTC), until)
    gaps = {b - a for a, b in zip(every, every[1:], strict=False)}
    assert gaps == {timedelta(minutes=15)}  # real time keeps its pace through the jump


@pytest.mark.parametrize(
    ("after", "until", "count"),
    [
        # New York: 1 Nov 2026 02:00 EDT -> 01:00 EST; hourly at :30 through the night
        (datetime(2026, 11, 1, 3, 0, tzinfo=UTC), datetime(2026, 11, 1, 10, 0, tzinfo=UTC), 6),
        # 8 Mar 2026 02:00 EST -> 03:00 EDT
        (datetime(2026, 3, 8, 4, 0, tzinfo=UTC), datetime(2026, 3, 8, 10, 0, tzinfo=UTC), 6),
    ],
)
def test_new_york_hourly_across_both_transitions(after, until, count):
    ny = ZoneInfo("America/New_York")
    fires = between("30 * * * *", "America/New_York", after, until)
    local = walls(fires, ny)
    assert len(local) == len(set(local)) == count, local


# --- doctor's schedule check: a missed tick named at once ----------------------------------
def test_a_missed_backup_tick_is_named_before_the_backup_is_stale(settings, invoke, ops_env):
    from dbops.config import load_settings
    from dbops.ops import doctor_schedule, freshness
    from tests.conftest import ROOT

    assert invoke("backup").returncode == 0
    hourly = load_settings(ROOT, environ={**ops_env, "DBOPS_BACKUP_SCHEDULE": "0 * * * *"})
    now = datetime.now(UTC)
    assert doctor_schedule.missed_backup_tick(hourly, now) is None  # fresh
    # 1 h 40 min later: the tick before is 40 min old (> the 30 min grace), its backup missing;
    # the backups check (1.5 x 1 h = 90 min) may still call the newest one fresh at 80 min
    later = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1, minutes=40)
    missed = doctor_schedule.missed_backup_tick(hourly, later)
    assert missed is not None and missed["tick"] == later.replace(minute=0)
    assert missed["result"] is None  # never ran: the service is not running
    # within the grace after the tick: its backup may still be running
    early = later.replace(minute=10)
    assert doctor_schedule.missed_backup_tick(hourly, early) is None
    # a failed run of that tick is named with its error
    schedule.record_tick(hourly, "backup", missed["tick"], "failed", error="disk full")
    again = doctor_schedule.missed_backup_tick(hourly, later)
    assert again["result"] == "failed" and again["error"] == "disk full"
    daily = load_settings(ROOT, environ={**ops_env, "DBOPS_BACKUP_SCHEDULE": "0 3 * * *"})
    # daily at 03:00: 30 h after a backup taken just after a tick, the next tick is missed,
    # while 1.5 x the schedule (36 h) has not passed
    tick = schedule.last_fire(schedule.trigger_for(daily, "backup"), now)
    assert doctor_schedule.missed_backup_tick(daily, tick + timedelta(hours=30)) is not None
    off = load_settings(ROOT, environ={**ops_env, "DBOPS_BACKUP_SCHEDULE": "off"})
    assert doctor_schedule.missed_backup_tick(off, later) is None
    assert freshness.backup_freshness(hourly, now=now + timedelta(minutes=80))[0] is True


def test_doctor_shows_the_missed_tick_with_backup_as_next(invoke, settings):
    import json

    from dbops import catalog

    assert invoke("backup").returncode == 0
    env = {"DBOPS_BACKUP_SCHEDULE": "0 0 1 1 *"}  # the last tick: 1 January, long before
    rep = json.loads(invoke("doctor", "--json", "--no-schema", env=env).stdout)
    [check] = [c for c in rep["checks"] if c["name"] == "schedule"]
    assert check["status"] == "ok", check  # a backup after this year's tick
    # the backup was taken a day ago; the daily tick 2-3 hours ago has none
    [entry] = catalog.list_backups(settings)
    mpath = catalog.manifest_path(Path(entry["path"]))
    manifest = json.loads(mpath.read_text())
    manifest["started_at"] = schedule.iso(datetime.now(UTC) - timedelta(days=1))
    mpath.write_text(json.dumps(manifest))
    hour = (datetime.now(UTC) - timedelta(hours=3)).hour
    env = {"DBOPS_BACKUP_SCHEDULE": f"0 {hour} * * *"}
    done = invoke("doctor", "--json", "--no-schema", env=env)
    rep = json.loads(done.stdout)
    [check] = [c for c in rep["checks"] if c["name"] == "schedule"]
    assert check["status"] == "warn" and "was missed" in check["summary"], check
    assert check["next"] == "invoke backup"
    assert "is the dbops service (or the cron job) running?" in check["details"][0]
    assert [c for c in rep["checks"] if c["name"] == "backups"][0]["status"] == "ok"  # < 36 h
