"""Point-in-time recovery with pgBackRest: pitr-enable (docs/pitr.md). The physical backup and
the point-in-time restore are flags of backup and restore (dbops/tasks/backups.py)."""

from __future__ import annotations

from invoke import Task
from invoke.parser import Argument

from dbops.ops import pitr as pitr_op
from dbops.ops.backup import fmt_bytes
from dbops.ops.output import print_note
from dbops.tasks import observed_task, settings

POINT_FLAGS = ("to_time", "to_lsn", "before")


class _FileOrPoint(Argument):
    """restore's FILE: required (as invoke requires a positional), unless a point in time is
    given (--to-time, --to-lsn, --before): then it reads as "" and invoke asks for no FILE."""

    points: tuple[Argument, ...] = ()

    @property
    def value(self):
        if self._value is None and any(p._value is not None for p in self.points):
            return ""
        return Argument.value.fget(self)

    @value.setter
    def value(self, arg) -> None:
        self.set_value(arg, cast=True)


class RestoreTask(Task):
    """``invoke restore FILE`` and ``invoke restore --to-time=T`` (no FILE) from one task."""

    def arg_opts(self, name, default, taken_names):
        # invoke's automatic short flag for to-time/to-lsn would be "-" once -t, -o are taken
        opts = super().arg_opts(name, default, taken_names)
        opts["names"] = [n for n in opts["names"] if n.strip("-_")]
        return opts

    def get_arguments(self, ignore_unknown_help=None):
        args = super().get_arguments(ignore_unknown_help)
        by_name = {a.name: a for a in args}
        file = by_name["file"]
        file.__class__ = _FileOrPoint
        file.points = tuple(by_name[n] for n in POINT_FLAGS)
        return args


@observed_task(
    {"yes": "do not ask for confirmation (required with no terminal)"},
)
def pitr_enable(c, yes=False):
    """Turn on WAL archiving to a pgBackRest repository (config, archive settings, stanza)."""
    res = pitr_op.enable(settings(c), yes=yes, out=print_note)
    if res["restart_needed"]:
        print(
            "WAL archiving is configured; archive_mode takes effect after a server restart. "
            "Restart the server:"
        )
        print(f"  {res['restart_command']}")
        print("then run again to check that archiving works: invoke pitr-enable")
    else:
        print(f"WAL archiving works: pgbackrest check passed (stanza {res['stanza']})")
        print("next: invoke backup --physical   # the base backup every restore starts from")
    return res


def print_physical(entries: list[dict]) -> None:
    """The physical (pgBackRest) backups under the dumps in `invoke backups`."""
    print()
    if not entries:
        print("physical (pgBackRest): none yet   (invoke backup --physical)")
        return
    print("physical (pgBackRest):")
    print(f"{'finished (UTC)':20}  {'type':4}  {'size':>9}  {'WAL range':51} {'verified':8} label")
    for e in entries:
        verified = {True: "yes", False: "NO", None: "not yet"}[e["verified"]]
        size = fmt_bytes(e["size"]) if e["size"] is not None else "?"
        print(
            f"{e['finished_at'][:19]:20}  {e['type']:4}  {size:>9}  "
            f"{(e['wal_start'] or '?') + '-' + (e['wal_stop'] or '?'):51} {verified:8} "
            f"{e['label']}"
        )


def physical_rows(s, *, as_json: bool = False) -> list[dict]:
    """Print (or return, ``as_json``: each with kind "physical") the physical backups; nothing
    when PITR is not set up. A repository that cannot be read is one line, never a crash."""
    from dbops.errors import OpsError

    try:
        entries = pitr_op.list_physical(s)
    except OpsError as exc:
        if not as_json:
            print(f"\nphysical (pgBackRest): cannot be listed: {exc.message}")
        return []
    if entries is None:
        return []
    if as_json:
        return [{"kind": "physical", **e} for e in entries]
    print_physical(entries)
    return entries


def backup_physical(s, kind: str) -> dict:
    res = pitr_op.physical_backup(s, kind, out=print_note)
    verified = {True: "verified (pgbackrest verify)", False: "VERIFY FAILED", None: "not verified"}
    print(f"physical backup: {res['label']} ({res['type']})")
    print(
        f"  {fmt_bytes(res['size'] or 0)} (stored {fmt_bytes(res['stored'] or 0)}), WAL "
        f"{res['wal_start']} - {res['wal_stop']}, {res['duration_s']:.1f} s, "
        f"{verified[res['verified']]} in {res['verify_s']:.1f} s"
    )
    print("restore to any later moment with: invoke restore --to-time='YYYY-MM-DD HH:MM:SS+00'")
    return {k: res[k] for k in ("label", "type", "size", "verified")}


def restore_point_in_time(s, file, to_time, to_lsn, before, *, yes: bool, keep_side: bool):
    from dbops.errors import OpsError
    from dbops.ops.status import label

    if file:
        raise OpsError(
            "restore takes FILE or a point in time (--to-time, --to-lsn, --before), not both",
            state="unchanged (nothing was touched)",
        )
    if not (to_time or to_lsn or before):
        raise OpsError(
            "restore needs FILE (a dump, or 'latest') or a point in time "
            "(--to-time, --to-lsn, --before)",
            state="unchanged (nothing was touched)",
            next_command="invoke backups",
        )
    res = pitr_op.restore_to(
        s,
        to_time=to_time,
        to_lsn=to_lsn,
        before=before,
        yes=yes,
        keep_side=keep_side,
        out=print_note,
        warn=print_note,
    )
    t = res["pitr_timings"]
    print(
        f"restored: {res['database']} is as it was at {res['target']} (revision "
        f"{label(res['revisions'], short=True)}), from physical backup {res['physical_backup']}"
    )
    print(f"  checked: {res['tables']} tables, {res['rows']} rows")
    print(
        f"  took {t['total_s']:.1f} s: side instance (restore + WAL replay) "
        f"{t['side_instance_s']:.1f} s, dump {t['dump_s']:.1f} s, restore and swap "
        f"{t['restore_s']:.1f} s; the live server kept running"
    )
    print(f"  dump of that moment (a verified backup): {res['dump']}")
    if res["old_database"]:
        print(f"  previous database kept as: {res['old_database']}")
        print(f"  undo (rename it back): {res['undo_command']}")
    if res["side"]:
        print(f"  side instance kept: {res['side']['psql']}")
        print(f"  remove it when done: {res['side']['remove']}")
    return {
        "target": res["target"],
        "revisions": res["revisions"],
        "old_database": res["old_database"],
        "dump": res["dump"],
    }
