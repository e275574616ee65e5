"""Retention, run only after a successful backup of the same database.

Keeps: the newest DBOPS_BACKUP_KEEP_LAST (default 10) verified backups, plus the newest of
each of the last DBOPS_BACKUP_KEEP_DAILY (7) days and DBOPS_BACKUP_KEEP_WEEKLY (4) ISO weeks
that have backups, plus ALWAYS the newest verified backup, the newest FULL one, and the newest
of each pre-* reason (pre-migrate, pre-rollback, pre-restore, …; full and touched apart).
Only verified backups are ever deleted (their manifest first, so an interrupted deletion
leaves an invalid dump, never a false backup);
dumps without a valid manifest are reported by ``invoke backups``, never deleted here.
DBOPS_BACKUP_RETENTION=off disables it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from dbops import catalog


def policy(settings) -> dict:
    return {
        "last": settings.get("DBOPS_BACKUP_KEEP_LAST"),
        "daily": settings.get("DBOPS_BACKUP_KEEP_DAILY"),
        "weekly": settings.get("DBOPS_BACKUP_KEEP_WEEKLY"),
    }


def plan(entries: list[dict], pol: dict) -> tuple[list[dict], list[dict]]:
    """(keep, delete) among verified backups given newest first."""
    keep_ids: set[str] = set()
    if entries:
        keep_ids.add(entries[0]["path"])  # the newest verified backup, always
    full = [e for e in entries if not e.get("partial")]
    if full:
        keep_ids.add(full[0]["path"])  # and the newest full one (a touched backup is partial)
    seen_reasons: set[str] = set()
    for e in entries:
        r = (e.get("reason") or "") + (" partial" if e.get("partial") else "")
        if r.startswith("pre-") and r not in seen_reasons:
            seen_reasons.add(r)
            keep_ids.add(e["path"])
    for e in entries[: pol["last"]]:
        keep_ids.add(e["path"])
    for key, limit in (("daily", pol["daily"]), ("weekly", pol["weekly"])):
        buckets: list[str] = []
        for e in entries:
            when = datetime.fromisoformat(e["created_at"].replace("Z", "+00:00"))
            b = (
                when.strftime("%Y-%m-%d")
                if key == "daily"
                else "{}-W{:02d}".format(*when.isocalendar()[:2])
            )
            if b not in buckets:
                if len(buckets) >= limit:
                    break
                buckets.append(b)
                keep_ids.add(e["path"])
    keep = [e for e in entries if e["path"] in keep_ids]
    delete = [e for e in entries if e["path"] not in keep_ids]
    return keep, delete


def apply(settings, database: str) -> list[str]:
    if not settings.get("DBOPS_BACKUP_RETENTION"):
        return []
    entries = catalog.list_backups(settings, database=database, include_invalid=False)
    _, delete = plan(entries, policy(settings))
    removed = []
    for e in delete:
        dump = Path(e["path"])
        catalog.manifest_path(dump).unlink(missing_ok=True)
        dump.unlink(missing_ok=True)
        removed.append(str(dump))
    return removed
