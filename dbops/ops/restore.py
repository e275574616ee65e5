"""invoke restore / verify-backup.

restore: refuse before touching anything (manifest missing, sha256 or size mismatch,
other database, dump from a newer major version), confirm, take the lock, a pre-restore
backup, restore into a NEW database, check it against the manifest (tables, alembic
revision, row counts), then swap by rename and keep the old database under a dated name.
Any failure before the swap drops the new database: the live one is untouched.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from dbops import audit, catalog, seam
from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.confirm import confirm
from dbops.errors import OpsError
from dbops.ops.backup import _drain, _stop, fmt_bytes, take_backup

# Runs next to the server; the archive arrives on stdin. Args: $1 mode (check|restore)
# $2 format (custom|directory) $3 target database (restore) $4 jobs.
RESTORE_SCRIPT = r"""
# dbops restore: read the archive from stdin into pg_restore
set -u
mode=$1; fmt=$2; dbname=$3; jobs=$4
if [ "$fmt" = custom ] && [ "$jobs" -le 1 ]; then
  if [ "$mode" = check ]; then exec pg_restore -f /dev/null; fi
  exec pg_restore --exit-on-error -d "$dbname"
fi
find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'dbops-restore.*' -mmin +1440 -exec rm -rf {} + 2>/dev/null
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dbops-restore.XXXXXX") || exit 70
trap 'rm -rf "$tmp"' EXIT
trap 'exit 143' INT TERM HUP
trap 'exit 141' PIPE
if [ "$fmt" = custom ]; then
  cat > "$tmp/archive.dump" || exit 71; src="$tmp/archive.dump"
else
  mkdir "$tmp/d" && tar -x -C "$tmp/d" || { echo "dbops: the tar archive is unreadable" >&2; exit 71; }
  src="$tmp/d"
fi
if [ "$mode" = check ]; then pg_restore -f /dev/null "$src"; exit $?; fi
pg_restore --exit-on-error -j "$jobs" -d "$dbname" "$src"
"""


def resolve(settings: Settings, file: str) -> Path:
    if file == "latest":  # the newest verified backup of this database
        newest = catalog.newest_verified(settings, settings.database)
        if newest is None:
            raise OpsError(f"no verified backup of {settings.database} in {settings.backup_dir}",
                           state="unchanged", next_command="invoke backups --all")
        return Path(newest["path"]).resolve()
    p = Path(file).expanduser()
    if p.name.endswith(catalog.MANIFEST_SUFFIX):  # given the manifest: mean its dump
        try:
            p = catalog.dump_for(p, catalog.read_manifest(p if p.exists() else Path(settings.backup_dir) / p))
        except catalog.ManifestError as exc:
            raise OpsError(str(exc), state="unchanged", next_command="invoke backups") from None
    if not p.exists() and not p.is_absolute() and (Path(settings.backup_dir) / p).exists():
        p = Path(settings.backup_dir) / p
    if not p.exists():
        raise OpsError(f"{file}: no such file", state="unchanged", next_command="invoke backups")
    return p.resolve()


def checked_manifest(settings: Settings, path: Path) -> dict:
    """The manifest of a backup whose size and sha256 match it; OpsError otherwise."""
    manifest, problems = catalog.check_backup(path, full=True)
    if manifest is not None and manifest.get("format") not in ("custom", "directory"):
        problems = [*problems, f"unknown format {manifest.get('format')!r} in the manifest"]
    if manifest is None or problems:
        raise OpsError(f"{path.name} is not a usable backup: {'; '.join(problems)}",
                       state="unchanged (nothing was touched)",
                       next_command="invoke backups   # pick a verified one")
    return manifest


class RestoreJob:
    """pg_restore next to the server, fed the archive on stdin, running in the background."""

    def __init__(self, settings: Settings, target: seam.Target, path: Path, manifest: dict, *,
                 mode: str, dbname: str = "", jobs: int = 1):
        fmt = manifest["format"]
        launch = target.pg(["sh", "-c", RESTORE_SCRIPT, "dbops-restore", mode, fmt, dbname or "-",
                            str(jobs)])
        self.settings = settings
        self.lines: list[str] = []
        self.src = open(path, "rb")
        try:
            self.proc = seam.start(launch, stdin=self.src, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
        except BaseException:
            self.src.close()
            raise
        self.drain = threading.Thread(target=_drain, args=(self.proc.stderr, self.lines), daemon=True)
        self.drain.start()

    def finish(self) -> tuple[int, list[str]]:
        try:
            rc = self.proc.wait()
        finally:
            self.kill()
        self.drain.join(timeout=30)
        return rc, [seam.mask(ln, self.settings.secrets()) for ln in self.lines if ln.strip()]

    def kill(self) -> None:
        _stop(self.proc)
        self.src.close()


def pg_restore_stream(settings: Settings, target: seam.Target, path: Path, manifest: dict, *,
                      mode: str, dbname: str = "", jobs: int = 1) -> tuple[int, list[str]]:
    return RestoreJob(settings, target, path, manifest, mode=mode, dbname=dbname, jobs=jobs).finish()


def verify(settings: Settings, file: str, *, restore_test: bool = False) -> dict:
    path = resolve(settings, file)
    manifest = checked_manifest(settings, path)
    checks = [f"manifest: {manifest['database']} at {'+'.join(manifest['revisions']) or 'base'}, "
              f"{manifest['reason']}, taken {manifest['started_at']} by {manifest.get('operator')}",
              f"sha256 and size ({fmt_bytes(manifest['size'])}) match the manifest"]
    with Agent(settings) as agent:
        if not restore_test:
            rc, lines = pg_restore_stream(settings, agent.target, path, manifest, mode="check")
            if rc != 0:
                raise OpsError(f"{path.name}: the full read (pg_restore) failed with status {rc}: "
                               f"the archive is damaged", details=lines[-8:], state="unchanged")
            checks.append("full read (pg_restore to /dev/null): ok")
            return {"manifest": manifest, "checks": checks, "file": str(path)}
        name = agent.call("restore.scratch")["name"]
        try:
            rc, lines = pg_restore_stream(settings, agent.target, path, manifest, mode="restore",
                                          dbname=name)
            if rc != 0:
                raise OpsError(f"{path.name}: restoring into a scratch database failed (status {rc})",
                               details=lines[-8:], state="unchanged (a scratch database was used)")
            try:
                res = agent.call("restore.check", name=name, tables=manifest["tables"],
                                 revisions=manifest["revisions"])
            except AgentError as exc:
                raise OpsError(exc.message, state="unchanged (a scratch database was used)") from None
        finally:
            try:
                agent.call("restore.scratch_drop", name=name)
            except OpsError as exc:
                print(f"warning: could not drop scratch database {name}: {exc.message}", file=sys.stderr)
    checks.append(f"restore test: {res['tables']} tables, {res['rows']} rows and the alembic "
                  f"revision equal the manifest's (scratch database dropped)")
    return {"manifest": manifest, "checks": checks, "file": str(path)}


def _drop_command(settings: Settings, name: str) -> str:
    """How to drop a kept database, on either target (`invoke psql` goes through the seam)."""
    quoted = '"' + name.replace('"', '""') + '"'
    return shlex.join(["invoke", "psql", "-c", f"DROP DATABASE {quoted}"])


DEFAULT_RESTORE_JOBS = 1


def pre_backup_compression(settings: Settings, database_size: int) -> str | None:
    """DBOPS_RESTORE_PRE_BACKUP_COMPRESSION: "fast" (default) dumps uncompressed when the backup
    folder has room for the whole database plus the reserve — the pre-restore backup runs
    alongside pg_restore, and compression is what makes it the long pole — else falls back
    to DBOPS_BACKUP_COMPRESSION; any other value is a pg_dump -Z spec (or auto)."""
    import shutil

    from dbops.ops.backup import compression_setting

    value = settings.value("DBOPS_RESTORE_PRE_BACKUP_COMPRESSION", "fast").lower()
    if value != "fast":
        return compression_setting(settings, value, key="DBOPS_RESTORE_PRE_BACKUP_COMPRESSION")
    folder = catalog.ensure_dir(Path(settings.backup_dir))
    reserve = float(settings.value("DBOPS_BACKUP_RESERVE_MB", "64")) * 1_000_000
    room = shutil.disk_usage(folder).free - reserve
    return "0" if room >= 1.5 * database_size else None


def restore_jobs(settings: Settings, jobs: int | None) -> int:
    """--jobs, else DBOPS_RESTORE_JOBS, else 1. N > 1: pg_restore -j N from a temporary copy of the
    archive next to the server (1: streamed straight into pg_restore, no temporary copy)."""
    if jobs is None:
        raw = settings.value("DBOPS_RESTORE_JOBS")
        try:
            jobs = int(raw) if raw else DEFAULT_RESTORE_JOBS
        except ValueError:
            raise OpsError(f"DBOPS_RESTORE_JOBS={raw!r} is not a whole number") from None
    if jobs < 1:
        raise OpsError("--jobs must be 1 or more")
    return jobs


def restore(settings: Settings, file: str, *, yes: bool = False, other_database: bool = False,
            jobs: int | None = None) -> dict:
    t0 = time.monotonic()
    jobs = restore_jobs(settings, jobs)
    path = resolve(settings, file)
    manifest = checked_manifest(settings, path)
    if manifest["database"] != settings.database and not other_database:
        raise OpsError(f"{path.name} is a backup of database {manifest['database']!r}, not "
                       f"{settings.database!r}", state="unchanged (nothing was touched)",
                       next_command=f"invoke restore {path} --other-database   # if you mean it")
    with Agent(settings) as agent:
        try:
            facts = agent.call("restore.facts")
        except AgentError as exc:
            raise OpsError(exc.message, state="unchanged (nothing was touched)") from None
        dump_major = int(manifest.get("server_version_num") or 0) // 10000
        server_major = facts["server_version_num"] // 10000
        if dump_major > server_major:
            raise OpsError(f"{path.name} was dumped from PostgreSQL {manifest['server_version']}, "
                           f"newer than this server ({facts['server_version']}): it cannot be restored here",
                           state="unchanged (nothing was touched)",
                           next_command="restore it on a server of the same or a newer major version")
        if not facts["exists"]:
            raise OpsError(f"database {settings.database} does not exist: restore replaces an existing "
                           f"database", state="unchanged",
                           next_command=f"create it empty first (createdb {settings.database}), then re-run")
        rows = sum(manifest["tables"].values())
        confirm(settings, "\n".join([
            f"Restore {path.name}",
            f"  taken {manifest['started_at']} ({manifest['reason']}), revision "
            f"{'+'.join(manifest['revisions']) or 'base'}, {len(manifest['tables'])} tables, {rows} rows",
            f"over database {settings.database} ({settings.target}).",
            f"  1. a pre-restore backup of {settings.database} is taken",
            "  2. the backup is restored into a new database and checked",
            f"  3. {len(facts['sessions'])} session(s) connected to {settings.database} are terminated, "
            f"and the databases are swapped by rename",
            f"  4. the current {settings.database} is kept as {settings.database}_dbops_old_<time>"]),
            yes=yes, expect=settings.database, state="unchanged (nothing was touched)",
            next_command=f"invoke restore {path} --yes")
        try:
            agent.call("lock.acquire", purpose="restore")
        except AgentError as exc:
            raise OpsError(exc.message, state="unchanged",
                           next_command=f"wait for it to finish, then re-run: invoke restore {path}") from None
        pre_z = pre_backup_compression(settings, facts.get("database_size") or 0)
        res = _restore_locked(settings, agent, path, manifest, jobs, t0, pre_z)
        res["kept_before"] = facts["kept_old"]
        res["file"] = str(path)
        return res


# The pre-restore backup reads the live database while pg_restore fills the new one: they
# touch different databases, and neither waits for the other. Both must succeed before the swap.
CONCURRENT_PRE_BACKUP = True


def _restore_locked(settings: Settings, agent: Agent, path: Path, manifest: dict, jobs: int,
                    t0: float, pre_z: str | None = None) -> dict:
    record = {"file": str(path), "sha256": manifest["sha256"], "to": manifest["revisions"],
              "backup_database": manifest["database"]}
    name = None
    swapped = None
    pre = None
    job = None
    try:
        if not CONCURRENT_PRE_BACKUP:
            pre = take_backup(settings, agent, "pre-restore", prune=False, compression=pre_z)
        created = agent.call("restore.create")
        name = created["name"]
        for s in created["swept"]:
            print(f"dropped {s}, left behind by an interrupted restore", file=sys.stderr)
        job = RestoreJob(settings, agent.target, path, manifest, mode="restore", dbname=name, jobs=jobs)
        t_started = time.monotonic()
        if pre is None:
            try:
                pre = take_backup(settings, agent, "pre-restore", prune=False, compression=pre_z)
            except OpsError as exc:
                raise OpsError(f"the pre-restore backup failed: {exc.message}", details=exc.details) from None
        record.update(pre_restore_backup=pre["path"], **{"from": pre["manifest"]["revisions"]})
        print(f"pre-restore backup: {pre['path']}", file=sys.stderr)
        t_pre = time.monotonic()
        rc, lines = job.finish()
        job = None
        t_restored = time.monotonic()
        if rc != 0:
            raise OpsError(f"pg_restore into the new database {name} failed (status {rc})",
                           details=lines[-8:])
        check = agent.call("restore.check", name=name, tables=manifest["tables"],
                           revisions=manifest["revisions"])
        t_checked = time.monotonic()
        sessions = agent.call("restore.facts")["sessions"]
        if sessions:
            print(f"warning: terminating {len(sessions)} session(s) connected to {settings.database}: "
                  + ", ".join(f"pid {s['pid']} {s['application_name'] or '-'} ({s['user']}@{s['client']})"
                              for s in sessions[:10]), file=sys.stderr)
        swapped = agent.call("restore.swap", name=name)
    except (OpsError, KeyboardInterrupt) as exc:
        message = exc.message if isinstance(exc, OpsError) else "interrupted"
        if job is not None:
            job.kill()
        if name and swapped is None:
            try:
                agent.call("restore.drop", name=name)
            except Exception:
                print(f"warning: could not drop {name}; the next restore drops it", file=sys.stderr)
        audit.append(settings, "restore", result="failed", error=message,
                     duration_s=round(time.monotonic() - t0, 3), **record)
        pre_note = f"pre-restore backup: {pre['path']}" if pre else "no pre-restore backup was kept"
        raise OpsError(f"restore failed: {message}", details=getattr(exc, "details", []),
                       state=f"{settings.database} is unchanged (the new database was dropped); {pre_note}",
                       next_command=f"invoke verify-backup {path} --restore-test") from None
    old = swapped["old"]
    timings = {"pre_restore_backup_s": pre["manifest"]["duration_s"],
               "pre_restore_backup_done_after_s": round(t_pre - t_started, 3),
               "pg_restore_s": round(t_restored - t_started, 3),
               "check_s": round(t_checked - t_restored, 3),
               "swap_s": round(time.monotonic() - t_checked, 3),
               "total_s": round(time.monotonic() - t0, 3)}
    audit.append(settings, "restore", result="ok", old_database=old,
                 terminated=len(swapped["terminated"]), duration_s=round(time.monotonic() - t0, 3),
                 timings=timings, **record)
    return {"database": settings.database, "revisions": check["revisions"], "tables": check["tables"],
            "rows": check["rows"], "pre_restore_backup": pre["path"], "old_database": old,
            "drop_command": _drop_command(settings, old), "terminated": swapped["terminated"],
            "timings": timings}
