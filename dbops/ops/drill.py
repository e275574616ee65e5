"""invoke drill: prove the newest verified backup restores, and how long that takes.

The machinery of ``verify-backup --restore-test``: the backup's sha256 against its manifest,
pg_restore into a scratch database (``restore.scratch``), the tables, row counts and alembic
revision against the manifest (``restore.check``); then the user's checks
(DBOPS_DRILL_CHECKS: every ``*.sql`` in that folder, run on the restored copy with psql
through the seam, must return true), and the scratch database is always dropped. The
restore time (the real RTO) and the result are appended to the audit record as a "drill"
entry (through a lifecycle ``Operation``, on every outcome) — what metrics and doctor
read. The live database is never touched.
"""

from __future__ import annotations

import time
from pathlib import Path

from dbops import audit, catalog, seam
from dbops.agent_client import Agent, AgentError, call_once
from dbops.config import Settings
from dbops.errors import OpsError
from dbops.lifecycle import Operation
from dbops.ops.output import Out, print_note
from dbops.ops.restore import RestoreJob, check_pg_restore, check_restored, checked_manifest
from dbops.progress import follow_file

STATE = "unchanged (the drill restores into a scratch database, which was dropped)"


def user_checks(settings: Settings) -> list[Path]:
    folder = settings.get("DBOPS_DRILL_CHECKS")
    if folder is None:
        return []
    if not folder.is_dir():
        raise OpsError(
            f"DBOPS_DRILL_CHECKS={folder} is not a folder",
            state="unchanged",
            next_command="point DBOPS_DRILL_CHECKS at a folder of *.sql files, or unset it",
        )
    return sorted(folder.glob("*.sql"))


def failure_reason(stderr: str) -> str:
    """PostgreSQL's ``ERROR:`` line out of psql's stderr (not the ``LINE 1:`` and caret lines
    that follow it), without psql's ``psql:<stdin>:N:`` prefix; else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        _, sep, rest = line.partition("ERROR:")
        if sep:
            return "ERROR: " + rest.strip()
    for line in lines:
        _, sep, rest = line.partition("FATAL:")
        if sep:
            return "FATAL: " + rest.strip()
    return lines[-1] if lines else ""


def run_check(settings: Settings, target: seam.Target, dbname: str, path: Path) -> tuple[bool, str]:
    """(passed, what it returned): the file's last statement must return true."""
    launch = target.pg(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", dbname])
    done = seam.run(launch, input=path.read_bytes(), timeout=600)
    out = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode != 0:
        err = seam.mask(done.stderr.decode(errors="replace").strip(), settings.secrets())
        return False, f"error: {failure_reason(err) or f'psql exited {done.returncode}'}"
    last = out[-1].strip() if out else ""
    return last == "t", f"returned {last or 'nothing'}"


def run_drill(
    settings: Settings,
    agent: Agent,
    *,
    file: str = "latest",
    progress: bool = False,
    warn: Out = print_note,
) -> dict:
    """The drill through an open agent (the caller holds the "drill" lock if it wants one),
    inside its Operation: a "drill" record on every outcome; the scratch copy always dropped."""
    with Operation(settings, "drill", warn=warn, backup=None) as op:
        checks = user_checks(settings)
        path, manifest = drill_source(settings, agent, op, file)
        made = agent.call("restore.scratch")
        name = made["name"]
        try:
            for old in made.get("swept", []):
                warn(f"dropped {old}, left behind by a killed drill or restore-test")
            restore_into(settings, agent, op, path, manifest, name, progress)
            t_checks = time.monotonic()
            res = check_restored(
                agent,
                name,
                manifest,
                state=STATE,  # the agent's message already says "does not match the backup"
                next_command="invoke backup   # a new verified backup, then invoke drill",
            )
            op.add(tables=res["tables"], rows=res["rows"])
            run_checks(settings, agent, op, path, name, checks, t_checks)
        finally:
            _drop(agent, name, warn)
        written = op.finish()
    return {**op.record, "duration_s": written.get("duration_s", 0.0)}


def drill_source(settings: Settings, agent: Agent, op: Operation, file: str) -> tuple[Path, dict]:
    """The backup to drill, its manifest checked (sha256) and restorable by this pg_restore."""
    from dbops.ops.restore import resolve

    try:
        path = resolve(settings, file)
    except OpsError as exc:
        raise OpsError(
            f"nothing to drill: {exc.message}", state=STATE, next_command="invoke backup"
        ) from exc
    op.add(backup=str(path))
    manifest = checked_manifest(path)
    op.add(
        sha256=manifest["sha256"],
        revisions=manifest["revisions"],
        backup_taken_at=manifest["started_at"],
        size=manifest["size"],
    )
    check_pg_restore(settings, agent.target, path, manifest, agent.call("restore.facts"))
    return path, manifest


def restore_into(
    settings: Settings,
    agent: Agent,
    op: Operation,
    path: Path,
    manifest: dict,
    name: str,
    progress: bool,
) -> None:
    """pg_restore the backup into the scratch database ``name``; its time is the RTO."""
    t_restore = time.monotonic()
    job = RestoreJob(settings, agent.target, path, manifest, mode="restore", dbname=name)
    try:
        follow_file(job.proc, job.src, f"drill: restoring {path.name}", manifest["size"], progress)
    except BaseException:
        job.kill()
        raise
    rc, lines = job.finish()
    op.add(restore_s=round(time.monotonic() - t_restore, 3))
    if rc != 0:
        raise OpsError(
            f"{path.name}: pg_restore into the scratch database failed (status {rc})",
            details=lines[-8:],
            state=STATE,
            next_command=f"invoke verify-backup {path}   # then take a new backup: invoke backup",
        )


def run_checks(
    settings: Settings,
    agent: Agent,
    op: Operation,
    path: Path,
    name: str,
    checks: list[Path],
    started: float,
) -> None:
    """The user's checks on the restored copy: each must return true. ``check_s``: the time
    since ``started`` (the restore's end)."""
    results = []
    for check in checks:
        ok, said = run_check(settings, agent.target, name, check)
        results.append({"check": check.name, "ok": ok, "said": said})
    op.add(checks=results, check_s=round(time.monotonic() - started, 3))
    failed = [r for r in results if not r["ok"]]
    if failed:
        raise OpsError(
            f"{len(failed)} drill check(s) failed on the restored copy of {path.name}",
            details=[f"{r['check']}: {r['said']}" for r in failed],
            state=STATE,
            next_command=f"psql the restored data yourself: invoke verify-backup {path} "
            f"--restore-test; fix the data or the check in "
            f"{settings.get('DBOPS_DRILL_CHECKS')}",
        )


def _drop(agent: Agent, name: str | None, warn: Out) -> None:
    if not name:
        return
    try:
        if agent.proc is None:  # stopped by an interruption: a fresh one drops it
            call_once(agent.settings, "restore.scratch_drop", name=name)
        else:
            agent.call("restore.scratch_drop", name=name)
    except OpsError as exc:
        warn(f"warning: could not drop scratch database {name}: {exc.message}")


def drill(
    settings: Settings, *, file: str = "latest", progress: bool = False, warn: Out = print_note
) -> dict:
    """Standalone ``invoke drill``: its own agent and the "drill" lock (not the database's:
    a drill never blocks a backup or a migration)."""
    catalog.ensure_dir(Path(settings.backup_dir))
    with Agent(settings) as agent:
        try:
            agent.call("lock.acquire", purpose="drill", scope="drill")
        except AgentError as exc:
            if exc.kind != "locked":  # busy only when the lock query said so
                raise
            raise OpsError(
                exc.message,
                state="unchanged",
                next_command="invoke drill   # once the running drill has finished",
            ) from None
        return run_drill(settings, agent, file=file, progress=progress, warn=warn)


def last_drill(settings: Settings) -> dict | None:
    """The newest drill record of this database in the audit record."""
    for rec in reversed(audit.read(settings)):
        if rec.get("action") == "drill" and rec.get("database") == settings.database:
            return rec
    return None
