"""Backups: backup, backups, verify-backup, restore. (Issue 3.)"""

from __future__ import annotations

import json

from invoke import task

from dbops import events
from dbops.config import whole_flag
from dbops.ops import backup as backup_op
from dbops.ops import restore as restore_op
from dbops.ops.output import print_note
from dbops.ops.status import label
from dbops.tasks import guarded, observed_task, render, settings
from dbops.tasks.pitr import RestoreTask


def _partial_note(e: dict) -> list[str]:
    if not e.get("partial"):
        return []
    tables = ((e["manifest"] or {}).get("touched") or {}).get("tables") or []
    return [
        f"partial: data of {len(tables)} touched table(s) only: "
        + ", ".join(tables[:6])
        + (" …" if len(tables) > 6 else "")
    ]


@observed_task(
    {
        "jobs": "parallel dump with N workers (directory format, stored as a .dir.tar)",
        "reason": "recorded in the manifest (default: manual)",
        "no-retention": "do not apply the retention policy after this backup",
        "physical": "a pgBackRest backup of the whole server instead (invoke pitr-enable first)",
        "type": "with --physical: full, diff or incr (default full)",
    },
    notify=True,
)
def backup(c, jobs=None, reason="manual", no_retention=False, physical=False, type=None):  # noqa: A002
    """Take a verified backup of the database (pg_dump next to the server, read back in full)."""
    s = settings(c)
    if physical or type:
        from dbops.tasks.pitr import backup_physical

        return backup_physical(s, type or "full")
    res = backup_op.backup(
        s, reason=reason, jobs=whole_flag("--jobs", jobs), prune=not no_retention, warn=print_note
    )
    m = res["manifest"]
    events.note(backup=res["path"], revisions=m["revisions"], size=m["size"])
    print(f"backup: {res['path']}")
    print(
        f"  {backup_op.fmt_bytes(m['size'])}, {len(m['tables'])} tables, "
        f"{sum(m['tables'].values())} rows, revision {label(m['revisions'], short=True)}, "
        f"verified (full read), {m['duration_s']:.1f} s, compression {m['compression']}"
    )
    print(f"  manifest: {res['manifest_path']}")
    for p in res["pruned"]:
        print(f"  retention removed: {p}")
    print(f"restore it with: {restore_op.restore_command(res['path'])}")
    return {"path": str(res["path"]), "revisions": m["revisions"], "size": m["size"]}


@task(
    help={
        "json": "print the list as JSON (for scripts)",
        "check": "also re-hash every file against its manifest (slower)",
        "all": "list backups of every database in the folder, not only POSTGRES_DB",
    }
)
@guarded
def backups(c, json_=False, check=False, all_=False):
    """List backups, newest first: time, size, revision, reason, verified."""
    from dbops import catalog

    s = settings(c)
    entries = catalog.list_backups(
        s, database=None if all_ else s.database, full=check, hash_missing=True
    )
    from dbops.tasks.pitr import physical_rows  # pgBackRest's, when PITR is set up

    if json_:
        print(json.dumps(entries + physical_rows(s, as_json=True), indent=2, default=str))
        return
    if not entries:
        print(f"no backups of {s.database} in {s.backup_dir}")
        physical_rows(s)
        return
    if render.is_terminal():
        render.table(
            [
                ("created (UTC)", "left"),
                ("size", "right"),
                ("revision", "left"),
                ("reason", "left"),
                ("verified", "left"),
                ("file", "left"),
            ],
            [
                (
                    e["created_at"][:19],
                    backup_op.fmt_bytes(e["size"]),
                    label(e["revisions"], short=True),
                    e["reason"] or "?",
                    ("yes" if e["verified"] else "NO") + (" partial" if e.get("partial") else ""),
                    e["path"],
                )
                for e in entries
            ],
            notes={
                i: [f"NOT A BACKUP: {p}" for p in e["problems"]] + _partial_note(e)
                for i, e in enumerate(entries)
            },
            styles={i: "red" for i, e in enumerate(entries) if not e["verified"]},
        )
        physical_rows(s)
        return
    print(f"{'created (UTC)':20}  {'size':>9}  {'revision':14} {'reason':13} {'verified':11} file")
    for e in entries:
        mark = ("yes" if e["verified"] else "NO") + (" partial" if e.get("partial") else "")
        print(
            f"{e['created_at'][:19]:20}  {backup_op.fmt_bytes(e['size']):>9}  "
            f"{label(e['revisions'], short=True):14} "
            f"{(e['reason'] or '?'):13} {mark:11} {e['path']}"
        )
        for note in _partial_note(e):
            print(f"{'':24}{note}")
        for p in e["problems"]:
            print(f"{'':24}NOT A BACKUP: {p}")
    physical_rows(s)


@observed_task(
    {"restore-test": "also restore into a scratch database and compare row counts, then drop it"}
)
def verify_backup(c, file, restore_test=False):
    """Check a backup (FILE, or 'latest'): sha256 against its manifest and a full read."""
    res = restore_op.verify(settings(c), file, restore_test=restore_test, warn=print_note)
    print(f"ok: {res['file']}")
    for line in res["checks"]:
        print(f"  {line}")


@observed_task(
    {
        "yes": "do not ask for confirmation (required with ENVIRONMENT=production and no terminal)",
        "other-database": "allow restoring a backup taken of a differently named database",
        "jobs": (
            "pg_restore workers (default 1 = streamed, or DBOPS_RESTORE_JOBS; N>1 uses a "
            "temporary copy next to the server)"
        ),
        "pre-backup": (
            "also dump the live database first (the kept old database is already the undo)"
        ),
        "drop-old": "drop the previous database after the swap (needs --pre-backup)",
        "to-time": "point in time (pgBackRest, no FILE): the database as it was at T",
        "to-lsn": "point in time (pgBackRest, no FILE): the database as of WAL position L",
        "before": "point in time (pgBackRest, no FILE): just before a migrate/rollback "
        "(its audit record's ts, or a revision it ran)",
        "keep-side": "keep the side instance a point-in-time restore recovered into",
    },
    notify=True,
    klass=RestoreTask,
)
def restore(
    c,
    file,
    yes=False,
    other_database=False,
    jobs=None,
    pre_backup=False,
    drop_old=False,
    to_time=None,
    to_lsn=None,
    before=None,
    keep_side=False,
):
    """Restore a backup (FILE, or 'latest'), or a point in time (--to-time/--to-lsn/--before): into a new database, checked, swapped by rename."""  # noqa: E501
    if to_time or to_lsn or before or keep_side or not file:
        from dbops.tasks.pitr import restore_point_in_time

        return restore_point_in_time(
            settings(c), file, to_time, to_lsn, before, yes=yes, keep_side=keep_side
        )
    res = restore_op.restore(
        settings(c),
        file,
        yes=yes,
        other_database=other_database,
        jobs=whole_flag("--jobs", jobs),
        pre_backup=pre_backup,
        drop_old=drop_old,
        out=print_note,
        warn=print_note,
    )
    events.note(backup=res["file"], revisions=res["revisions"])
    if res.get("partial"):
        print(
            f"restored (partial): {res['tables']} touched table(s) of {res['database']} hold the "
            f"rows of {res['file']} again ({res['rows']} rows, counts checked in the same "
            f"transaction); {res['timings']['total_s']:.1f} s"
        )
        return
    print(
        f"restored: {res['database']} now holds {res['file']} (revision "
        f"{label(res['revisions'], short=True)})"
    )
    print(
        f"  checked: {res['tables']} tables, {res['rows']} rows, alembic "
        "revision as in the manifest"
    )
    t = res["timings"]
    if res["pre_restore_backup"]:
        print(f"  pre-restore backup: {res['pre_restore_backup']}")
        print(
            f"  took {t['total_s']:.1f} s: restore {t['pg_restore_s']:.1f} s (pre-restore "
            f"backup {t['pre_restore_backup_s']:.1f} s alongside), "
            f"checks {t['check_s']:.1f} s, swap {t['swap_s']:.1f} s"
        )
    else:
        print(
            f"  took {t['total_s']:.1f} s: restore {t['pg_restore_s']:.1f} s, checks "
            f"{t['check_s']:.1f} s, swap {t['swap_s']:.1f} s"
        )
    if res["old_database"]:
        print(f"  previous database kept as: {res['old_database']}")
        print(f"  undo (rename it back): {res['undo_command']}")
        print(f"  drop it when satisfied: {res['drop_command']}")
    else:
        print(f"  previous database dropped: {res['dropped_old']}")
        print(f"  undo: {res['undo_command']}")
    if res.get("kept_before"):
        print(f"  also still kept from earlier restores: {', '.join(res['kept_before'])}")


@observed_task(
    {
        "name": "the kept database to swap back in (default: the newest <db>_dbops_old_<time>)",
        "yes": "do not ask for confirmation (required with ENVIRONMENT=production and no terminal)",
    },
    notify=True,
)
def restore_undo(c, name=None, yes=False):
    """Undo a restore: swap the kept <db>_dbops_old_<time> (NAME, default the newest) back in by rename."""  # noqa: E501
    res = restore_op.undo(settings(c), name, yes=yes)
    if res.get("repaired"):  # an interrupted swap was repaired, nothing swapped back
        print(f"repaired: {res['said']}")
        return
    print(f"swapped back: {res['database']} is again {res['swapped_in']}")
    print(f"  the replaced database is kept as: {res['old_database']}")
    print(f"  drop it when satisfied: {res['drop_command']}")
