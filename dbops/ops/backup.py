"""invoke backup: a verified pg_dump, written atomically, committed by its manifest.

One agent (lock, versions, size, an exported snapshot, row counts in that snapshot) and
ONE ``target.pg(["sh", "-c", DUMP_SCRIPT, …])`` that runs pg_dump next to the server on
that snapshot and reads the archive back in full (pg_restore -f /dev/null, fed by tee)
while the bytes flow to this host. The host writes ``.partial`` -> fsync -> rename,
hashes what it wrote, and writes the manifest last. Any failure removes what it wrote.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from dbops import catalog, config, pgbin, seam
from dbops.agent_client import Agent, AgentError
from dbops.config import Settings, operator
from dbops.errors import OpsError
from dbops.ops.output import Out, print_note
from dbops.progress import ByteProgress

CHUNK = 1 << 20
# Runs next to the server (db container, or this machine). Positional args:
#   $1 snapshot  $2 server major  $3 custom|directory  $4 jobs  $5 compression (auto|pg_dump -Z)
#   $6 --lock-wait-timeout for pg_dump's ACCESS SHARE locks (fail, rather than queue forever)
#   $7… more pg_dump options (a touched backup: --exclude-table-data for every untouched table)
# The archive goes to stdout; dbops:key=value markers and pg tools' messages to stderr.
DUMP_SCRIPT = r"""
# dbops backup: pg_dump on the snapshot, read back in full as it streams
set -u
snap=$1; server_major=$2; fmt=$3; jobs=$4; z=$5; lockwait=$6
shift 6  # the rest: more pg_dump options (a touched backup's --exclude-table-data=…)
v=$(pg_dump --version 2>&1) || { echo "dbops:error=pg_dump not found: $v" >&2; exit 69; }
echo "dbops:pg_dump_version=$v" >&2
# the major version without another process: "pg_dump (PostgreSQL) 15.4 (Debian …)" -> 15
case "$v" in "pg_dump (PostgreSQL) "[0-9]*) major=${v#pg_dump (PostgreSQL) }; major=${major%%[!0-9]*} ;; *) major= ;; esac
if [ -z "$major" ] || [ "$major" -lt "$server_major" ]; then
  echo "dbops:too_old=${major:-unknown}" >&2; exit 68
fi
if [ "$z" = auto ]; then
  z=1
  if [ "$major" -ge 16 ]; then
    # zstd:1 if this build has it (checked without connecting anywhere), else gzip level 1
    probe=$(pg_dump -Z zstd:1 -s -f /dev/null -d "host=/nonexistent-dbops-probe connect_timeout=1" 2>&1)
    case "$probe" in *"does not support"*|*"not supported"*|*"invalid"*) ;; *connect*) z=zstd:1 ;; esac
  fi
fi
echo "dbops:compression=$z" >&2
# leftovers of a dump whose shell was killed outright (a day old: no backup runs that long here)
# (in the background: it never touches this run's folder, and the dump need not wait for it)
find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'dbops-backup.*' -mmin +1440 -exec rm -rf {} + >/dev/null 2>&1 &
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dbops-backup.XXXXXX") || { echo "dbops:error=mktemp failed" >&2; exit 70; }
trap 'rm -rf "$tmp"' EXIT
# PIPE too: if the host dies, writing a marker to stderr must still end in the cleanup
trap 'exit 143' INT TERM HUP
trap 'exit 141' PIPE
mkfifo "$tmp/verify" || exit 70
if [ "$fmt" = custom ]; then
  pg_restore -f /dev/null < "$tmp/verify" & vpid=$!
  { pg_dump --snapshot="$snap" --lock-wait-timeout="$lockwait" -Fc -Z "$z" "$@"; echo "dbops:dump_exit=$?" >&2; } |
    { tee "$tmp/verify"; echo "dbops:stream_exit=$?" >&2; }
  wait $vpid; echo "dbops:verify_exit=$?" >&2
else
  pg_dump --snapshot="$snap" --lock-wait-timeout="$lockwait" -Fd -j "$jobs" -Z "$z" --no-sync -f "$tmp/d" "$@"
  rc=$?; echo "dbops:dump_exit=$rc" >&2
  [ "$rc" -eq 0 ] || exit 1
  echo "dbops:dumped" >&2
  # The full read and the transfer overlap: both read the same files (page cache).
  pg_restore -f /dev/null "$tmp/d" & vpid=$!
  tar -C "$tmp/d" -cf - . ; echo "dbops:stream_exit=$?" >&2
  wait $vpid; echo "dbops:verify_exit=$?" >&2
fi
"""  # noqa: E501

MARKER = re.compile(r"^dbops:([a-z_]+)(?:=(.*))?$")


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


def _pump(src, fd: int, state: dict, progress: ByteProgress) -> None:
    """Copy the archive from the dump's stdout into the .partial file, hashing it.
    One preallocated buffer (readv into it): no allocation per read."""
    import hashlib

    h = hashlib.sha256()
    n = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    rfd = src.fileno()
    try:
        while True:
            got = os.readv(rfd, [buf])
            if not got:
                break
            chunk = view[:got]
            done = 0
            while done < got:
                done += os.write(fd, chunk[done:])
            h.update(chunk)
            n += got
            progress.update(n)
    except BaseException as exc:  # noqa: BLE001 - reported by the caller (OSError: EFBIG, ENOSPC)
        state["write_error"] = exc
    finally:
        state["size"] = n
        state["sha256"] = h.hexdigest()
        progress.update(n, final=True)


def _widen_pipe(pipe) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer wake-ups per gigabyte (Linux; ignored elsewhere)."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (OSError, ImportError, ValueError):
        pass


def _drain(src, lines: list[str]) -> None:
    for raw in iter(src.readline, b""):
        lines.append(raw.decode(errors="replace").rstrip("\n"))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()


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
    try:
        info = agent.call("backup.begin", lock_wait=settings.get("DBOPS_BACKUP_LOCK_WAIT"))
    except AgentError as exc:
        raise OpsError(
            f"backup not started: {exc.message}",
            state="unchanged",
            details=exc.details,
            next_command=exc.next_command or "invoke current   # is the database reachable?",
        ) from None
    database = info["database"]
    try:
        swept = sweep_partials(settings, database)
        check_free_space(
            settings,
            database,
            info["database_size"],
            z,
            partial_bytes=touched.get("bytes", 0) if touched else None,
        )
        fmt = "directory" if jobs else "custom"
        name = catalog.base_name(database, started, info["revisions"], reason)
        suffix = ".dir.tar" if jobs else ".dump"
        n = 1
        while (folder / (name + suffix)).exists() or catalog.manifest_path(
            folder / (name + suffix)
        ).exists():
            n += 1
            name = catalog.base_name(database, started, info["revisions"], reason) + f"-{n}"
        final = folder / (name + suffix)
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
        try:
            agent.call("backup.end")
        except Exception:  # the agent may be gone; the snapshot ends with it
            pass
    finished = datetime.now(UTC)
    manifest = {
        "format_version": catalog.MANIFEST_VERSION,
        "file": final.name,
        "format": fmt,
        "compression": result["compression"],
        "jobs": jobs or 1,
        "sha256": result["sha256"],
        "size": result["size"],
        "database": database,
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
    if touched:  # "tables" then holds the touched tables only: what a put-back checks
        manifest["partial"] = True
        manifest["touched"] = {
            "tables": touched["tables"],
            "sequences": touched["sequences"],
            "why": touched["relations"],
            "excluded_tables": touched["excluded_tables"],
            "lossy": touched.get("lossy", {}),
            "revisions": touched.get("revisions", []),
        }
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
    newer = pgbin.newer_dump_warning(
        result["pg_dump_version"], info["server_version"], info["server_version_num"] // 10000
    )
    if newer:
        warn(newer)
    pruned: list[str] = []
    if prune:
        from dbops.ops import retention

        try:
            pruned = retention.apply(settings, database)
        except Exception as exc:  # retention never fails a good backup
            warn(f"warning: retention skipped: {exc}")
    return {
        "path": str(final),
        "manifest": manifest,
        "manifest_path": str(mpath),
        "pruned": pruned,
        "swept": swept,
    }


def exclude_pattern(qualified: str) -> str:
    """A pg_dump table pattern matching exactly "schema.table" (both quoted: no wildcards)."""
    schema, name = qualified.split(".", 1)
    return ".".join('"' + p.replace('"', '""') + '"' for p in (schema, name))


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
    target = agent.target
    server_major = info["server_version_num"] // 10000
    extra = (
        [f"--exclude-table-data={exclude_pattern(q)}" for q in touched["excluded_tables"]]
        if touched
        else []
    )
    launch = target.pg(
        [
            "sh",
            "-c",
            DUMP_SCRIPT,
            "dbops-backup",
            info["snapshot"],
            str(server_major),
            fmt,
            str(jobs),
            z,
            settings.get("DBOPS_BACKUP_LOCK_WAIT"),
            *extra,
        ]
    )
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    fd_open = True
    state: dict = {}
    stderr_lines: list[str] = []
    proc = None
    ok = False
    try:
        proc = seam.start(
            launch,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        _widen_pipe(proc.stdout)
        pump = threading.Thread(
            target=_pump,
            args=(
                proc.stdout,
                fd,
                state,
                ByteProgress(f"dumping {info['database']}", info["database_size"], progress),
            ),
            daemon=True,
        )
        drain = threading.Thread(target=_drain, args=(proc.stderr, stderr_lines), daemon=True)
        pump.start()
        drain.start()
        counts_error = None
        try:
            tables = agent.call("backup.counts", tables=touched["tables"] if touched else None)[
                "tables"
            ]
        except OpsError as exc:
            counts_error, tables = exc, {}
        while pump.is_alive():
            pump.join(0.2)
            if "write_error" in state:
                break
        if "write_error" in state:
            proc.stdout.close()
            _stop(proc)
        rc = proc.wait()
        pump.join()
        drain.join(timeout=30)
        markers = {}
        messages = []
        for line in stderr_lines:
            m = MARKER.match(line)
            if m:
                markers[m.group(1)] = m.group(2) or ""
            elif line.strip():
                messages.append(seam.mask(line, settings.secrets()))
        markers.setdefault("server_version", info["server_version"])
        problem = _diagnose(settings, rc, markers, state, counts_error)
        if problem:
            if "write_error" in state:  # we stopped the dump ourselves: its complaints are noise
                messages = [
                    m
                    for m in messages
                    if m.strip() not in ("Terminated", "pg_dump: terminated by user")
                ]
            raise OpsError(
                problem,
                details=messages[-8:],
                state="unchanged (a backup only reads); no backup was written",
                next_command=_next_for(problem, settings),
            )
        os.fsync(fd)
        os.close(fd)
        fd_open = False
        os.replace(partial, final)
        catalog.fsync_dir(final.parent)
        ok = True
        return {
            "sha256": state["sha256"],
            "size": state["size"],
            "tables": tables,
            "compression": markers.get("compression", z),
            "pg_dump_version": markers.get("pg_dump_version", ""),
        }
    finally:
        if fd_open:
            os.close(fd)
        if proc is not None and proc.poll() is None:
            _stop(proc)
        if not ok:
            _remove(partial, final)


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
