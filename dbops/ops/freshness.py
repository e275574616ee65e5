"""Is the safety net current? The newest verified backup against the backup schedule, the
last restore drill against DBOPS_DRILL_MAX_AGE_DAYS. Read-only, host side (the backup folder
and the audit record). Each check returns (ok, message, next_command); doctor shows them
and alert rules in docs/operations.md say the same with metrics.
"""

from __future__ import annotations

from datetime import UTC, datetime

from dbops import catalog
from dbops.config import Settings
from dbops.ops import schedule

BACKUP_FACTOR = 1.5


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def backup_freshness(settings: Settings, now: datetime | None = None) -> tuple[bool, str, str]:
    """The newest verified backup is younger than 1.5 × the backup schedule's interval
    (24 h when DBOPS_BACKUP_SCHEDULE is off)."""
    now = now or datetime.now(UTC)
    limit = BACKUP_FACTOR * schedule.backup_interval_s(settings)
    newest = catalog.newest_verified(settings, settings.database)
    if newest is None:
        return False, f"no verified backup of {settings.database}", "invoke backup"
    taken = schedule.parse_iso(newest["created_at"])
    age = (now - taken).total_seconds() if taken else float("inf")
    if age > limit:
        return (
            False,
            f"newest verified backup is {_human(age)} old (> {_human(limit)}: 1.5 × the "
            f"backup schedule); is the dbops service running?",
            "invoke backup",
        )
    return True, f"newest verified backup is {_human(age)} old (limit {_human(limit)})", ""


def drill_freshness(settings: Settings, now: datetime | None = None) -> tuple[bool, str, str]:
    """The last restore drill passed and is younger than DBOPS_DRILL_MAX_AGE_DAYS (8)."""
    from dbops.ops.drill import last_drill

    now = now or datetime.now(UTC)
    max_days = settings.get("DBOPS_DRILL_MAX_AGE_DAYS")
    rec = last_drill(settings)
    if rec is None:
        # Never drilled: a warning once backups have existed longer than a drill may be old
        # (a new install is not an incident; a month of untested backups is).
        verified = catalog.list_backups(settings, database=settings.database, include_invalid=False)
        oldest = schedule.parse_iso(verified[-1]["created_at"]) if verified else None
        if oldest is not None and (now - oldest).total_seconds() > max_days * 86400:
            return (
                False,
                "no restore drill recorded, and backups go back "
                f"{_human((now - oldest).total_seconds())}: nobody has proven one restores",
                "invoke drill",
            )
        return (
            True,
            "no restore drill recorded yet (invoke drill proves a backup restores)",
            "invoke drill",
        )
    when = schedule.parse_iso(rec.get("ts"))
    age = (now - when).total_seconds() if when else float("inf")
    if rec.get("result") != "ok":
        return (
            False,
            f"the last restore drill ({_human(age)} ago) failed: {rec.get('error', '?')}",
            "invoke drill",
        )
    if age > max_days * 86400:
        return (
            False,
            f"the last restore drill passed {_human(age)} ago (> {max_days:g} days)",
            "invoke drill",
        )
    return (
        True,
        (
            f"the last restore drill passed {_human(age)} ago, restore took "
            f"{rec.get('restore_s', 0):.1f} s"
        ),
        "",
    )


CHECKS = (("backup freshness", backup_freshness), ("restore drill", drill_freshness))


def checks(settings: Settings) -> list[tuple[str, bool, str, str]]:
    """[(name, ok, message, next_command)] for doctor and metrics."""
    return [(name, *fn(settings)) for name, fn in CHECKS]
