"""invoke restore of a whole backup, once the lock is held (dbops/ops/restore.py refused what
cannot work and confirmed): pg_restore into a NEW database (the pre-restore backup, if asked,
taken alongside), checked against the manifest, then swapped in by rename, its intent recorded
first. Any failure before the swap drops the new database: the live one is untouched. A
failure or an interruption during the swap is read back from the server's catalog and named
with the command that settles it (restore-undo repairs an interrupted swap)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from dbops.agent_client import Agent
from dbops.config import Settings
from dbops.errors import OpsError
from dbops.lifecycle import EXIT_CODES, Operation, outcome_of
from dbops.ops.backup import take_backup
from dbops.ops.output import Out
from dbops.ops.restore import RestoreJob, _drop_command, _state_after_failure, restore_command
from dbops.progress import follow_file


@dataclass
class FullRestore:
    """One restore after the lock: what it has made so far, for its steps and its clean-up."""

    settings: Settings
    agent: Agent
    path: Path
    manifest: dict
    op: Operation
    out: Out
    warn: Out
    name: str | None = None  # the new database, once created
    job: RestoreJob | None = None  # pg_restore, while it runs
    pre: dict | None = None  # the pre-restore backup, once taken
    swapping: bool = False  # the swap's intent is recorded: the swap may have begun
    swapped: dict | None = None  # restore.swap's answer
    marks: dict[str, float] = field(default_factory=dict)  # monotonic times of the steps


def restore_locked(
    settings: Settings,
    agent: Agent,
    path: Path,
    manifest: dict,
    op: Operation,
    *,
    jobs: int,
    pre_z: str | None,
    pre_backup: bool,
    drop_old: bool,
    from_revisions: list | None,
    out: Out,
    warn: Out,
) -> dict:
    """Restore, check, swap; then drop the old database if asked. The outcome goes to ``op``."""
    run = FullRestore(settings, agent, path, manifest, op, out, warn)
    op.add(
        file=str(path),
        sha256=manifest["sha256"],
        to=manifest["revisions"],
        backup_database=manifest["database"],
    )
    try:
        _start_pg_restore(run, jobs)
        _pre_restore_backup(run, pre_backup, pre_z, from_revisions)
        _wait_for_pg_restore(run)
        check = _check_new(run)
        _swap(run)
    except (OpsError, KeyboardInterrupt) as exc:
        raise _failed(run, exc) from None
    return _finish(run, check, drop_old)


def _start_pg_restore(run: FullRestore, jobs: int) -> None:
    """Create the new database (sweeping an interrupted restore's) and start pg_restore into it."""
    created = run.agent.call("restore.create")
    run.name = created["name"]
    for s in created["swept"]:
        run.out(f"dropped {s}, left behind by an interrupted restore")
    run.job = RestoreJob(
        run.settings,
        run.agent.target,
        run.path,
        run.manifest,
        mode="restore",
        dbname=run.name,
        jobs=jobs,
    )
    run.marks["started"] = time.monotonic()


def _pre_restore_backup(
    run: FullRestore, pre_backup: bool, pre_z: str | None, from_revisions: list | None
) -> None:
    """The pre-restore backup reads the live database while pg_restore (started before) fills
    the new one: different databases, neither waits. Both must succeed before the swap."""
    if pre_backup:
        try:
            run.pre = take_backup(
                run.settings, run.agent, "pre-restore", prune=False, compression=pre_z
            )
        except OpsError as exc:
            raise OpsError(
                f"the pre-restore backup failed: {exc.message}",
                details=exc.details,
                exit_code=exc.exit_code,  # an interrupted backup stays interrupted (130)
            ) from None
    if run.pre is not None:
        run.op.add(pre_restore_backup=run.pre["path"], **{"from": run.pre["manifest"]["revisions"]})
        run.out(f"pre-restore backup: {run.pre['path']}")
    else:
        run.op.add(**{"from": from_revisions})
    run.marks["pre"] = time.monotonic()


def _wait_for_pg_restore(run: FullRestore) -> None:
    job = run.job
    follow_file(job.proc, job.src, f"restore: pg_restore {run.path.name}", run.manifest["size"])
    rc, lines = job.finish()
    run.job = None
    run.marks["restored"] = time.monotonic()
    if rc != 0:
        raise OpsError(
            f"pg_restore into the new database {run.name} failed (status {rc})",
            details=lines[-8:],
        )


def _check_new(run: FullRestore) -> dict:
    """The new database against the manifest (tables, row counts, alembic revision)."""
    m = run.manifest
    check = run.agent.call(
        "restore.check", name=run.name, tables=m["tables"], revisions=m["revisions"]
    )
    run.marks["checked"] = time.monotonic()
    return check


def _swap(run: FullRestore) -> None:
    """Terminate the live database's sessions (said first) and swap by rename. The intent
    first: a swap cut short is then named by its record as well as by the catalog (doctor,
    restore-undo read the catalog: dbops/agent/swap.py)."""
    sessions = run.agent.call("restore.facts")["sessions"]
    if sessions:
        run.warn(
            f"warning: terminating {len(sessions)} session(s) "
            f"connected to {run.settings.database}: "
            + ", ".join(
                f"pid {s['pid']} {s['application_name'] or '-'} ({s['user']}@{s['client']})"
                for s in sessions[:10]
            )
        )
    run.op.intent("swapping", new_database=run.name, **run.op.record)
    run.swapping = True
    run.swapped = run.agent.call("restore.swap", name=run.name)


def _failed(run: FullRestore, exc: OpsError | KeyboardInterrupt) -> OpsError:
    """Clean up what the failed or interrupted restore made (pg_restore, the new database if
    the swap had not begun), record the state read back from the server, and say it."""
    result, outcome = outcome_of(exc)
    interrupted = result == "interrupted"
    message = exc.message if isinstance(exc, OpsError) else "interrupted"
    if run.job is not None:
        run.job.kill()
    dropped_new = False
    if run.name and run.swapped is None and not run.swapping:
        try:
            run.agent.call("restore.drop", name=run.name)
            dropped_new = True
        except Exception:
            run.warn(f"warning: could not drop {run.name}; the next restore drops it")
    pre_note = (
        f"pre-restore backup: {run.pre['path']}" if run.pre else "no pre-restore backup was kept"
    )
    state, nxt = _state_after_failure(run.settings, run.name, dropped_new, run.swapping)
    run.op.finish(result, **{**outcome, "error": message, "state": state})
    return OpsError(
        f"restore {'interrupted' if interrupted else 'failed: ' + message}",
        details=getattr(exc, "details", []),
        state=f"{state}; {pre_note}",
        next_command=nxt or _next_after(run.path, interrupted),
        exit_code=EXIT_CODES["interrupted"] if interrupted else 1,
    )


def _next_after(path, interrupted: bool) -> str:
    """Interrupted: the restore again (it drops the copy this one left); failed: whether the
    backup restores at all, on a scratch database."""
    from dbops.errors import command
    from dbops.ops.restore import restore_command

    if interrupted:
        return restore_command(path) + "   # drops the copy this one left, then restores"
    return command("invoke", "verify-backup", path, "--restore-test")


def _drop_old(run: FullRestore, old: str) -> str | None:
    """--drop-old (only with a verified pre-restore backup, checked before anything): the
    dropped database's name, or None with a warning naming the command that drops it."""
    try:
        return run.agent.call("restore.drop", name=old)["dropped"]
    except OpsError as exc:
        run.warn(
            f"warning: could not drop the previous database {old}: {exc.message}; "
            f"drop it with: {_drop_command(old)}"
        )
        return None


def _timings(run: FullRestore) -> dict:
    t, pre = run.marks, run.pre
    now = time.monotonic()
    return {
        "pre_restore_backup_s": pre["manifest"]["duration_s"] if pre else None,
        "pre_restore_backup_done_after_s": round(t["pre"] - t["started"], 3) if pre else None,
        "pg_restore_s": round(t["restored"] - t["started"], 3),
        "check_s": round(t["checked"] - t["restored"], 3),
        "swap_s": round(now - t["checked"], 3),
        "total_s": round(now - run.op.started, 3),
    }


def _finish(run: FullRestore, check: dict, drop_old: bool) -> dict:
    """After the swap: drop the old database if asked, record the outcome, say how to undo."""
    old = run.swapped["old"]
    dropped = _drop_old(run, old) if drop_old else None
    timings = _timings(run)
    kept = None if dropped else old
    run.op.finish(
        old_database=kept,
        dropped_old=dropped,
        terminated=len(run.swapped["terminated"]),
        timings=timings,
    )
    pre = run.pre
    return {
        "database": run.settings.database,
        "revisions": check["revisions"],
        "tables": check["tables"],
        "rows": check["rows"],
        "pre_restore_backup": pre["path"] if pre else None,
        "old_database": kept,
        "dropped_old": dropped,
        "drop_command": _drop_command(kept) if kept else None,
        "undo_command": f"invoke restore-undo --name {kept} --yes"
        if kept
        else restore_command(pre["path"], "--yes"),
        "terminated": run.swapped["terminated"],
        "timings": timings,
    }
