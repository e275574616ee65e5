"""invoke backup: a verified pg_dump, written atomically, committed by its manifest.

One agent (lock, versions, size, an exported snapshot, row counts in that snapshot) and
ONE ``target.pg(["sh", "-c", <dbops/sh/backup.sh>, …])`` (a dbops/process.py Job) that runs
pg_dump next to the server on that snapshot and reads the archive back in full (pg_restore
-f /dev/null, fed by tee) while the bytes flow to this host. The host writes ``.partial`` ->
fsync -> rename, hashes what it wrote, and writes the manifest last. Any failure removes what
it wrote.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from dbops import catalog, config, pgbin, process
from dbops.agent_client import Agent, AgentDied, AgentError
from dbops.config import Settings, operator
from dbops.errors import OpsError
from dbops.ops.output import Out, print_note
from dbops.progress import ByteProgress


def compression_setting(settings: Settings, value: str | None = None) -> str:
    """--compression when given (checked like the setting), else DBOPS_BACKUP_COMPRESSION."""
    if value is None:
        return settings.get("DBOPS_BACKUP_COMPRESSION")
    try:
        return config.COMPRESSION_TYPE(value)
    except ValueError as exc:
        raise OpsError(f"--compression={value!r} {exc}", state="unchanged") from None


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def utc_iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sweep_partials(settings: Settings, database: str) -> list[str]:
    """Remove this database's stale ``.partial`` files (we hold its lock: nobody writes them)."""
    folder = Path(settings.backup_dir)
    pat = catalog.partial_pattern(database)
    removed = []
    for p in folder.iterdir() if folder.is_dir() else []:
        if pat.match(p.name):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def backup_folder(settings: Settings) -> Path:
    """The backup folder, checked before any lock or snapshot: created 0700 or safe (owner,
    not group/world-writable), writable (read-only and full told apart, each with its own next
    command; dbops/safefile.py)."""
    from dbops import safefile

    return safefile.writable(catalog.ensure_dir(Path(settings.backup_dir)))


def check_free_space(
    settings: Settings,
    database: str,
    database_size: int,
    z: str = "auto",
    partial_bytes: int | None = None,
) -> dict:
    """Refuse before dumping when the folder cannot hold the expected dump plus a reserve."""
    free = shutil.disk_usage(settings.backup_dir).free
    last = catalog.newest_verified(settings, database)
    if partial_bytes is not None:  # a touched backup: the touched tables' size on disk
        last = None
        database_size = partial_bytes if z in ("0", "none") else partial_bytes * 2
    if z in ("0", "none"):  # uncompressed: about the table data, at most the database's size
        last = None
        estimate = database_size
    else:
        estimate = int(last["size"] * 1.25) if last else database_size // 2
    reserve = int(settings.get("DBOPS_BACKUP_RESERVE_MB") * 1_000_000)
    if free < estimate + reserve:
        basis = (
            "the last backup's size + 25%"
            if last
            else "the database size (uncompressed)"
            if z in ("0", "none")
            else "half the database size"
        )
        raise OpsError(
            f"not enough free space in {settings.backup_dir}: {fmt_bytes(free)} free, a backup of "
            f"{database} needs about {fmt_bytes(estimate)} ({basis}) plus a reserve of "
            f"{fmt_bytes(reserve)} (DBOPS_BACKUP_RESERVE_MB)",
            state="unchanged (nothing was written)",
            next_command=(
                f"df -h {shlex.quote(str(settings.backup_dir))}   # free space (invoke backups "
                "lists old ones) or point DBOPS_BACKUP_DIR elsewhere"
            ),
        )
    return {"free": free, "estimate": estimate}


# The process layer (dbops/process.py); the old private names stay for restore.py's imports.
_pump = process.pump
_widen_pipe = process.widen_pipe
_drain = process.drain
_stop = process.stop


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def take_backup(
    settings: Settings,
    agent: Agent,
    reason: str,
    *,
    jobs: int | None = None,
    prune: bool = True,
    progress: bool | None = None,
    compression: str | None = None,
    touched: dict | None = None,
    warn: Out = print_note,
) -> dict:
    """A verified backup of the live database through an open agent that holds the dbops lock.
    Returns {"path", "manifest", "manifest_path", "pruned", "swept"}; raises OpsError and leaves
    nothing valid-looking behind on any failure. ``compression`` overrides
    DBOPS_BACKUP_COMPRESSION (a pg_dump -Z spec, or auto). ``touched`` (the agent's touched.trace
    answer) makes a PARTIAL backup: the whole schema, the data of the touched tables only
    (every other table's data excluded), the same verification, a manifest marked partial."""
    if jobs is not None and jobs < 1:
        raise OpsError("--jobs must be 1 or more")
    z = compression_setting(settings, compression)
    folder = backup_folder(settings)  # before the snapshot: unsafe, read-only or full
    started = datetime.now(UTC)
    t0 = time.monotonic()
    info = _begin(settings, agent)
    database = info["database"]
    fmt = "directory" if jobs else "custom"
    try:
        swept, final = _place(
            settings, folder, info, reason=reason, started=started, z=z, jobs=jobs, touched=touched
        )
        partial = folder / f".{final.name}.partial"
        result = _dump(
            settings,
            agent,
            info,
            partial,
            final,
            fmt=fmt,
            jobs=jobs or 1,
            z=z,
            touched=touched,
            progress=progress,
        )
    finally:
        _end(agent)
    manifest = _manifest(settings, info, result, final, reason, fmt, jobs or 1, started, t0)
    if touched:  # "tables" then holds the touched tables only: what a put-back checks
        manifest.update(_partial_fields(touched))
    mpath = _record(settings, final, manifest)
    _warn_if_newer(info, result, warn)
    return {
        "path": str(final),
        "manifest": manifest,
        "manifest_path": str(mpath),
        "pruned": _prune(settings, database, warn) if prune else [],
        "swept": swept,
    }


def _begin(settings: Settings, agent: Agent) -> dict:
    """backup.begin: the lock-wait-bounded snapshot and the facts the manifest records."""
    try:
        return agent.call("backup.begin", lock_wait=settings.get("DBOPS_BACKUP_LOCK_WAIT"))
    except AgentError as exc:
        raise OpsError(
            f"backup not started: {exc.message}",
            state="unchanged",
            details=exc.details,
            next_command=exc.next_command or "invoke current   # is the database reachable?",
        ) from None


def _place(
    settings: Settings,
    folder: Path,
    info: dict,
    *,
    reason: str,
    started: datetime,
    z: str,
    jobs: int | None,
    touched: dict | None,
) -> tuple[list[str], Path]:
    """Before dumping: this database's stale .partial files swept, the free space checked, the
    backup's file name chosen. Returns (swept, final path)."""
    database = info["database"]
    swept = sweep_partials(settings, database)
    check_free_space(
        settings,
        database,
        info["database_size"],
        z,
        partial_bytes=touched.get("bytes", 0) if touched else None,
    )
    final = free_name(
        folder,
        catalog.base_name(database, started, info["revisions"], reason),
        ".dir.tar" if jobs else ".dump",
    )
    return swept, final


def _end(agent: Agent) -> None:
    try:
        agent.call("backup.end")
    except Exception:  # the agent may be gone; the snapshot ends with it
        pass


def free_name(folder: Path, name: str, suffix: str) -> Path:
    """``folder/name+suffix``, or name-2, name-3… when that file or its manifest exists."""
    n = 1
    final = folder / (name + suffix)
    while final.exists() or catalog.manifest_path(final).exists():
        n += 1
        final = folder / f"{name}-{n}{suffix}"
    return final


def _manifest(
    settings: Settings,
    info: dict,
    result: dict,
    final: Path,
    reason: str,
    fmt: str,
    jobs: int,
    started: datetime,
    t0: float,
) -> dict:
    finished = datetime.now(UTC)
    return {
        "format_version": catalog.MANIFEST_VERSION,
        "file": final.name,
        "format": fmt,
        "compression": result["compression"],
        "jobs": jobs,
        "sha256": result["sha256"],
        "size": result["size"],
        "database": info["database"],
        "database_size": info["database_size"],
        "encoding": info.get("encoding"),
        "revisions": info["revisions"],
        "server_version": info["server_version"],
        "server_version_num": info["server_version_num"],
        "pg_dump_version": result["pg_dump_version"],
        "started_at": utc_iso(started),
        "finished_at": utc_iso(finished),
        "duration_s": round(time.monotonic() - t0, 3),
        "operator": operator(),
        "reason": reason,
        "target": settings.target,
        "snapshot": info["snapshot"],
        "tables": result["tables"],
        "verification": {
            "ok": True,
            "method": "pg_restore full read of the stream as it was "
            "written (tee), same pass as the dump",
            "at": utc_iso(finished),
        },
    }


def _partial_fields(touched: dict) -> dict:
    return {
        "partial": True,
        "touched": {
            "tables": touched["tables"],
            "sequences": touched["sequences"],
            "why": touched["relations"],
            "excluded_tables": touched["excluded_tables"],
            "lossy": touched.get("lossy", {}),
            "revisions": touched.get("revisions", []),
        },
    }


def _record(settings: Settings, final: Path, manifest: dict) -> Path:
    """The manifest, written last (it commits the backup); on failure the dump is removed."""
    mpath = catalog.manifest_path(final)
    try:
        seen = catalog.hash_cache(settings)  # the digest computed while writing: no re-hash
        seen.put(final, manifest["sha256"])
        seen.save()
        catalog.write_json_atomic(mpath, manifest)
    except BaseException as exc:
        _remove(mpath, mpath.with_name(f".{mpath.name}.partial"), final)
        raise OpsError(
            f"could not write the manifest {mpath}: {exc}; the dump was removed",
            state="unchanged (no backup was recorded)",
        ) from None
    return mpath


def _warn_if_newer(info: dict, result: dict, warn: Out) -> None:
    newer = pgbin.newer_dump_warning(
        result["pg_dump_version"], info["server_version"], info["server_version_num"] // 10000
    )
    if newer:
        warn(newer)


def _prune(settings: Settings, database: str, warn: Out) -> list[str]:
    from dbops.ops import retention

    try:
        return retention.apply(settings, database)
    except Exception as exc:  # retention never fails a good backup
        warn(f"warning: retention skipped: {exc}")
        return []


def exclude_pattern(qualified: str) -> str:
    """A pg_dump table pattern matching exactly "schema.table" (both quoted: no wildcards)."""
    schema, name = qualified.split(".", 1)
    return ".".join('"' + p.replace('"', '""') + '"' for p in (schema, name))


def dump_argv(
    settings: Settings, info: dict, *, fmt: str, jobs: int, z: str, touched: dict | None
) -> list[str]:
    """dbops/sh/backup.sh's ``sh -c`` argv: on the snapshot, at least the server's major."""
    extra = (
        [f"--exclude-table-data={exclude_pattern(q)}" for q in touched["excluded_tables"]]
        if touched
        else []
    )
    return process.sh_argv(
        "backup",
        "dbops-backup",
        info["snapshot"],
        str(info["server_version_num"] // 10000),
        fmt,
        str(jobs),
        z,
        settings.get("DBOPS_BACKUP_LOCK_WAIT"),
        *extra,
    )


def _dump(
    settings: Settings,
    agent: Agent,
    info: dict,
    partial: Path,
    final: Path,
    *,
    fmt: str,
    jobs: int,
    z: str,
    progress: bool,
    touched: dict | None = None,
) -> dict:
    """The dump streamed into ``partial`` (0600, created here), checked, renamed to ``final``;
    on any failure neither file is left."""
    launch = agent.target.pg(dump_argv(settings, info, fmt=fmt, jobs=jobs, z=z, touched=touched))
    fd: int | None = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    job = None
    ok = False
    try:
        job = process.Job(launch, stdout=subprocess.PIPE)
        stream = job.stream_to(
            fd, ByteProgress(f"dumping {info['database']}", info["database_size"], progress)
        )
        tables, counts_error = _count_rows(agent, touched)
        if isinstance(counts_error, AgentDied):  # the snapshot died with it: stop the dump
            job.stop()
        stream.wait()
        ended = job.finish()
        _check(settings, info, ended, stream.state, counts_error)
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(partial, final)
        catalog.fsync_dir(final.parent)
        ok = True
        return {
            "sha256": stream.state["sha256"],
            "size": stream.state["size"],
            "tables": tables,
            "compression": ended.markers.get("compression", z),
            "pg_dump_version": ended.markers.get("pg_dump_version", ""),
        }
    finally:
        if fd is not None:
            os.close(fd)
        if job is not None:
            job.stop()
        if not ok:
            _remove(partial, final)


def _count_rows(agent: Agent, touched: dict | None) -> tuple[dict, OpsError | None]:
    """Row counts in the dump's snapshot (while the dump streams); a failure is kept for
    ``_check``, after the dump has ended."""
    try:
        answer = agent.call("backup.counts", tables=touched["tables"] if touched else None)
    except OpsError as exc:
        return {}, exc
    return answer["tables"], None


def _check(settings: Settings, info: dict, ended: process.Ended, state: dict, counts_error) -> None:
    """Raise when the dump, its full read, the transfer or the write failed."""
    markers = {"server_version": info["server_version"], **ended.markers}
    problem = _diagnose(settings, ended.rc, markers, state, counts_error)
    if not problem:
        return
    messages = ended.messages
    if "write_error" in state:  # we stopped the dump ourselves: its complaints are noise
        messages = [
            m for m in messages if m.strip() not in ("Terminated", "pg_dump: terminated by user")
        ]
    raise OpsError(
        problem,
        details=messages[-8:],
        state="unchanged (a backup only reads); no backup was written",
        next_command=_next_for(problem, settings),
    )


def _diagnose(settings: Settings, rc: int, markers: dict, state: dict, counts_error) -> str | None:
    if "too_old" in markers:
        m = re.search(r"\) (\S+)", markers.get("pg_dump_version", ""))
        return (
            f"pg_dump {m.group(1) if m else markers['too_old']} is older than the server "
            f"(PostgreSQL {markers['server_version']}): pg_dump must be at least the server's "
            f"major version; refused before dumping, nothing was dumped"
        )
    if "write_error" in state:
        exc = state["write_error"]
        what = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return (
            f"writing the backup to {settings.backup_dir} failed after "
            f"{fmt_bytes(state.get('size', 0))}: {what}"
        )
    if markers.get("dump_exit") not in ("0",):
        why = (
            f"exit status {markers['dump_exit']}"
            if "dump_exit" in markers
            else f"the dump script ended with status {rc} before pg_dump finished"
        )
        return f"pg_dump failed ({why}); its messages follow"
    if markers.get("verify_exit") != "0":
        return (
            f"the full read of the archive (pg_restore) failed "
            f"(status {markers.get('verify_exit', 'unknown')}): the dump is not restorable"
        )
    if markers.get("stream_exit") != "0":
        return (
            "streaming the archive to this host failed (status "
            f"{markers.get('stream_exit', 'unknown')})"
        )
    if rc != 0:
        return f"the dump script exited with status {rc}"
    if state.get("size", 0) == 0:
        return "pg_dump produced 0 bytes"
    if counts_error is not None:
        return f"counting rows in the dump's snapshot failed: {counts_error}"
    return None


def _next_for(problem: str, settings: Settings) -> str:
    too_old = re.search(r"older than the server \(PostgreSQL (\d+)", problem)
    if too_old:
        return (
            f"DBOPS_PG_BINDIR=/usr/lib/postgresql/{too_old.group(1)}/bin invoke backup   "
            f"# with pg_dump {too_old.group(1)} or newer installed there, or use "
            f"DBOPS_TARGET=compose (pg_dump runs in the db container)"
        )
    if problem.startswith("writing"):
        return (
            f"df -h {shlex.quote(str(settings.backup_dir))}   # free space, then re-run: "
            "invoke backup"
        )
    return "invoke current   # is the server up? then re-run: invoke backup"


def backup(
    settings: Settings,
    *,
    reason: str = "manual",
    jobs: int | None = None,
    prune: bool = True,
    warn: Out = print_note,
) -> dict:
    """Standalone ``invoke backup``: its own agent, the lock with purpose "backup"."""
    backup_folder(settings)  # nothing is locked or snapshotted for a folder that cannot take it
    with Agent(settings) as agent:
        try:
            agent.call("lock.acquire", purpose="backup")
        except AgentError as exc:
            if exc.kind != "locked":  # busy only when the lock query said so
                raise
            raise OpsError(
                exc.message,
                state="unchanged",
                next_command="invoke backup   # once the holder above has finished",
            ) from None
        return take_backup(settings, agent, reason, jobs=jobs, prune=prune, warn=warn)
