"""Backups: backup, backups, verify-backup, restore. (Issue 3.)"""

from __future__ import annotations

import json

from invoke import task

from dbops.ops import backup as backup_op
from dbops.ops import restore as restore_op
from dbops.tasks import guarded, settings


def _label(revs) -> str:
    return "+".join(r[:12] for r in revs) if revs else "base"


@task(help={"jobs": "parallel dump with N workers (directory format, stored as a .dir.tar)",
            "reason": "recorded in the manifest (default: manual)",
            "no-retention": "do not apply the retention policy after this backup"})
@guarded
def backup(c, jobs=None, reason="manual", no_retention=False):
    """Take a verified backup of the database (pg_dump next to the server, read back in full)."""
    s = settings(c)
    res = backup_op.backup(s, reason=reason, jobs=int(jobs) if jobs else None,
                           prune=not no_retention)
    m = res["manifest"]
    print(f"backup: {res['path']}")
    print(f"  {backup_op.fmt_bytes(m['size'])}, {len(m['tables'])} tables, "
          f"{sum(m['tables'].values())} rows, revision {_label(m['revisions'])}, "
          f"verified (full read), {m['duration_s']:.1f} s, compression {m['compression']}")
    print(f"  manifest: {res['manifest_path']}")
    for p in res["pruned"]:
        print(f"  retention removed: {p}")
    print(f"restore it with: invoke restore {res['path']}")


@task(help={"json": "print the list as JSON (for scripts)",
            "check": "also re-hash every file against its manifest (slower)",
            "all": "list backups of every database in the folder, not only POSTGRES_DB"})
@guarded
def backups(c, json_=False, check=False, all_=False):
    """List backups, newest first: time, size, revision, reason, verified."""
    from dbops import catalog

    s = settings(c)
    entries = catalog.list_backups(s, database=None if all_ else s.database, full=check)
    if json_:
        print(json.dumps(entries, indent=2, default=str))
        return
    if not entries:
        print(f"no backups of {s.database} in {s.backup_dir}")
        return
    print(f"{'created (UTC)':20}  {'size':>9}  {'revision':14} {'reason':13} verified  file")
    for e in entries:
        mark = "yes" if e["verified"] else "NO"
        print(f"{e['created_at'][:19]:20}  {backup_op.fmt_bytes(e['size']):>9}  "
              f"{_label(e['revisions']):14} {(e['reason'] or '?'):13} {mark:8}  {e['path']}")
        for p in e["problems"]:
            print(f"{'':24}NOT A BACKUP: {p}")


@task(help={"restore-test": "also restore into a scratch database and compare row counts, then drop it"})
@guarded
def verify_backup(c, file, restore_test=False):
    """Check a backup (FILE, or 'latest'): sha256 against its manifest and a full read."""
    res = restore_op.verify(settings(c), file, restore_test=restore_test)
    print(f"ok: {res['file']}")
    for line in res["checks"]:
        print(f"  {line}")


@task(help={"yes": "do not ask for confirmation (required with ENVIRONMENT=production and no terminal)",
            "other-database": "allow restoring a backup taken of a differently named database",
            "jobs": "pg_restore workers (default 1 = streamed, or DBOPS_RESTORE_JOBS; N>1 uses a temporary copy next to the server)"})
@guarded
def restore(c, file, yes=False, other_database=False, jobs=None):
    """Restore a backup (FILE, or 'latest'): into a new database, checked, swapped by rename."""
    res = restore_op.restore(settings(c), file, yes=yes, other_database=other_database,
                             jobs=int(jobs) if jobs else None)
    print(f"restored: {res['database']} now holds {res['file']} (revision {_label(res['revisions'])})")
    print(f"  checked: {res['tables']} tables, {res['rows']} rows, alembic revision as in the manifest")
    print(f"  pre-restore backup: {res['pre_restore_backup']}")
    t = res["timings"]
    print(f"  took {t['total_s']:.1f} s: restore {t['pg_restore_s']:.1f} s (pre-restore backup "
          f"{t['pre_restore_backup_s']:.1f} s alongside), checks {t['check_s']:.1f} s, swap {t['swap_s']:.1f} s")
    print(f"  previous database kept as: {res['old_database']}")
    print(f"  drop it when satisfied: {res['drop_command']}")
    if res.get("kept_before"):
        print(f"  also still kept from earlier restores: {', '.join(res['kept_before'])}")


TASKS = [backup, backups, verify_backup, restore]
