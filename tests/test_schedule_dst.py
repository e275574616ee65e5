"""Issue 20: schedules across daylight saving (Europe/Berlin, America/New_York): each
wall-clock tick once, strictly forward, and no spin to the iteration cap."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
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
