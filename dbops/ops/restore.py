"""invoke restore / verify-backup.

restore: refuse before touching anything (manifest missing, sha256 or size mismatch,
other database, dump from a newer major version), confirm, take the lock, restore into a NEW
database, check it against the manifest (tables, alembic revision, row counts), then swap by
rename and keep the old database under a dated name. The kept database IS the pre-restore
state (undo = rename it back: `invoke restore-undo`), so a pre-restore dump is only taken on
request (--pre-backup) or when the old database is to be dropped (--drop-old needs one).
Any failure before the swap drops the new database: the live one is untouched.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from pathlib import Path

from dbops import audit, catalog, pgbin, seam
from dbops.agent_client import Agent, AgentError, call_once
from dbops.config import Settings
from dbops.confirm import confirm
from dbops.errors import OpsError, command
from dbops.ops.backup import _drain, _stop, fmt_bytes, take_backup
from dbops.ops.output import Out, print_note
from dbops.progress import follow_file


def restore_command(path: Path | str, *flags: str) -> str:
    """The one form of the restore command dbops prints: ``invoke restore FILE [flags]``."""
    return shlex.join(["invoke", "restore", str(path), *flags])


# Runs next to the server; the archive arrives on stdin. Args: $1 mode (check|restore|
# restore-data: schema and data without the post-data section, for a partial backup whose
# foreign keys may point at rows it does not hold) $2 format (custom|directory)
# $3 target database (restore) $4 jobs.
RESTORE_SCRIPT = r"""
# dbops restore: read the archive from stdin into pg_restore
set -u
mode=$1; fmt=$2; dbname=$3; jobs=$4
if [ "$mode" = restore-data ]; then set -- --section=pre-data --section=data; else set --; fi
if [ "$fmt" = custom ] && [ "$jobs" -le 1 ]; then
  if [ "$mode" = check ]; then exec pg_restore -f /dev/null; fi
  exec pg_restore --exit-on-error "$@" -d "$dbname"
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
pg_restore --exit-on-error "$@" -j "$jobs" -d "$dbname" "$src"
"""  # noqa: E501


def resolve(settings: Settings, file: str) -> Path:
    if file == "latest":  # the newest verified backup of this database
        newest = catalog.newest_verified(settings, settings.database)
        if newest is None:
            raise OpsError(
                f"no verified backup of {settings.database} in {settings.backup_dir}",
                state="unchanged",
                next_command="invoke backups --all",
            )
        return Path(newest["path"]).resolve()
    p = Path(file).expanduser()
    if p.name.endswith(catalog.MANIFEST_SUFFIX):  # given the manifest: mean its dump
        try:
            p = catalog.dump_for(
                p, catalog.read_manifest(p if p.exists() else Path(settings.backup_dir) / p)
            )
        except catalog.ManifestError as exc:
            raise OpsError(str(exc), state="unchanged", next_command="invoke backups") from None
    if not p.exists() and not p.is_absolute() and (Path(settings.backup_dir) / p).exists():
        p = Path(settings.backup_dir) / p
    if not p.exists():
        raise OpsError(f"{file}: no such file", state="unchanged", next_command="invoke backups")
    return p.resolve()


def checked_manifest(path: Path) -> dict:
    """The manifest of a backup whose size and sha256 match it; OpsError otherwise."""
    manifest, problems = catalog.check_backup(path, full=True)
    if manifest is not None and manifest.get("format") not in ("custom", "directory"):
        problems = [*problems, f"unknown format {manifest.get('format')!r} in the manifest"]
    if manifest is None or problems:
        raise OpsError(
            f"{path.name} is not a usable backup: {'; '.join(problems)}",
            state="unchanged (nothing was touched)",
            next_command="invoke backups   # pick a verified one",
        )
    return manifest


SENDS_TRANSACTION_TIMEOUT = pgbin.SENDS_TRANSACTION_TIMEOUT
UNTOUCHED = "unchanged (nothing was touched)"


def pg_restore_refusal(
    settings: Settings,
    file: str,
    restore: tuple[int, str],
    dump: tuple[int, str] | None,
    server: tuple[int, str] | None,
) -> OpsError | None:
    """Why pg_restore ``restore`` (major, version) cannot restore ``file``, written by pg_dump
    ``dump``, into ``server`` (None: only read it), or None. An older pg_restore cannot read a
    newer pg_dump's archive format (pg_dump 17 writes 1.16: pg_restore 15 stops with
    "unsupported version (1.16) in file header"); pg_restore 17+ fails against a server before
    17. One line naming both versions, and the fix: a pg_restore of the dump's major."""
    how = (
        "python scripts/lib/pg_majors.py bindir {m}   # installs one; set DBOPS_PG_BINDIR to "
        "the folder it prints"
        if settings.target == "local"
        else f"invoke settings   # use a db image whose pg_restore is {{m}} "
        f"(DBOPS_TARGET={settings.target} runs the server's own tools), or DBOPS_TARGET=local "
        f"with DBOPS_PG_BINDIR"
    )
    if (
        server
        and dump
        and server[0] < SENDS_TRANSACTION_TIMEOUT <= dump[0]
        and (restore[0] < dump[0] or restore[0] >= SENDS_TRANSACTION_TIMEOUT)
    ):
        return OpsError(
            f"{file} was written by pg_dump {dump[1]}: only pg_restore {dump[0]} or "
            "newer reads it, and pg_restore 17+ cannot restore into PostgreSQL "
            f"{server[1]} (it sends SET transaction_timeout, which servers before 17 "
            f"reject); pg_restore here is {restore[1]}",
            state=UNTOUCHED,
            next_command=f"restore it into a PostgreSQL {dump[0]}+ server; or by hand: pg_restore "
            f"{dump[0]} -f plain.sql {file}, delete its 'SET transaction_timeout' "
            f"line, psql -f plain.sql; and back up this server with pg_dump "
            f"{server[0]} from now on",
        )
    if dump and restore[0] < dump[0]:
        return OpsError(
            f"pg_restore {restore[1]} cannot read {file}: it was written by pg_dump "
            f"{dump[1]}, whose archive format only pg_restore {dump[0]} or newer reads",
            state=UNTOUCHED,
            next_command=how.format(m=dump[0])
            + f"   # restore with pg_restore {dump[0]}, the dump's pg_dump major",
        )
    if server and server[0] < SENDS_TRANSACTION_TIMEOUT <= restore[0]:
        want = dump[0] if dump else server[0]
        return OpsError(
            f"pg_restore {restore[1]} cannot restore into PostgreSQL {server[1]}: "
            f"pg_restore 17 and newer send SET transaction_timeout, which servers "
            f"before 17 reject",
            state=UNTOUCHED,
            next_command=how.format(m=want)
            + f"   # restore with pg_restore {want}, the major of the pg_dump "
            f"{dump[1] if dump else '?'} that wrote the file",
        )
    return None


def check_pg_restore(
    settings: Settings, target: seam.Target, path: Path, manifest: dict, facts: dict | None
) -> None:
    """Refuse, before anything is changed, a pg_restore that cannot restore this archive (into
    this server: ``facts`` from restore.facts; None when the archive is only read)."""
    done = seam.run(target.pg(["pg_restore", "--version"]), timeout=60)
    restore = (
        pgbin.parse_version(done.stdout.decode(errors="replace")) if done.returncode == 0 else None
    )
    if restore is None:  # no pg_restore, or one that does not say: the restore itself reports it
        return
    server = (
        (facts["server_version_num"] // 10000, str(facts["server_version"]).split()[0])
        if facts and facts.get("server_version_num")
        else None
    )
    refusal = pg_restore_refusal(
        settings, path.name, restore, pgbin.parse_version(manifest.get("pg_dump_version")), server
    )
    if refusal is not None:
        raise refusal


class RestoreJob:
    """pg_restore next to the server, fed the archive on stdin, running in the background."""

    def __init__(
        self,
        settings: Settings,
        target: seam.Target,
        path: Path,
        manifest: dict,
        *,
        mode: str,
        dbname: str = "",
        jobs: int = 1,
    ):
        fmt = manifest["format"]
        launch = target.pg(
            ["sh", "-c", RESTORE_SCRIPT, "dbops-restore", mode, fmt, dbname or "-", str(jobs)]
        )
        self.settings = settings
        self.lines: list[str] = []
        self.src = open(path, "rb")
        try:
            self.proc = seam.start(
                launch,
                stdin=self.src,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except BaseException:
            self.src.close()
            raise
        self.drain = threading.Thread(
            target=_drain, args=(self.proc.stderr, self.lines), daemon=True
        )
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


def pg_restore_stream(
    settings: Settings,
    target: seam.Target,
    path: Path,
    manifest: dict,
    *,
    mode: str,
    dbname: str = "",
    jobs: int = 1,
) -> tuple[int, list[str]]:
    return RestoreJob(
        settings, target, path, manifest, mode=mode, dbname=dbname, jobs=jobs
    ).finish()


def check_restored(
    agent: Agent,
    name: str,
    manifest: dict,
    *,
    state: str,
    prefix: str = "",
    next_command: str | None = None,
) -> dict:
    """``restore.check`` of the restored copy *name* against *manifest* (tables, row counts,
    alembic revision). A mismatch raises OpsError with the caller's *prefix*, state and next
    command."""
    try:
        return agent.call(
            "restore.check",
            name=name,
            tables=manifest["tables"],
            revisions=manifest["revisions"],
        )
    except AgentError as exc:
        raise OpsError(prefix + exc.message, state=state, next_command=next_command) from None


def verify(
    settings: Settings, file: str, *, restore_test: bool = False, warn: Out = print_note
) -> dict:
    path = resolve(settings, file)
    manifest = checked_manifest(path)
    checks = [
        f"manifest: {manifest['database']} at {'+'.join(manifest['revisions']) or 'base'}, "
        f"{manifest['reason']}, taken {manifest['started_at']} by {manifest.get('operator')}",
        f"sha256 and size ({fmt_bytes(manifest['size'])}) match the manifest",
    ]
    with Agent(settings) as agent:
        check_pg_restore(
            settings,
            agent.target,
            path,
            manifest,
            agent.call("restore.facts") if restore_test else None,
        )
        if not restore_test:
            rc, lines = pg_restore_stream(settings, agent.target, path, manifest, mode="check")
            if rc != 0:
                raise OpsError(
                    f"{path.name}: the full read (pg_restore) failed with status {rc}: "
                    f"the archive is damaged",
                    details=lines[-8:],
                    state="unchanged",
                )
            checks.append("full read (pg_restore to /dev/null): ok")
            return {"manifest": manifest, "checks": checks, "file": str(path)}
        made = agent.call("restore.scratch")
        name = made["name"]
        for old in made.get("swept", []):
            warn(f"dropped {old}, left behind by a killed drill or restore-test")
        partial = bool(manifest.get("partial"))
        try:
            rc, lines = pg_restore_stream(
                settings,
                agent.target,
                path,
                manifest,
                mode="restore-data" if partial else "restore",
                dbname=name,
            )
            if rc != 0:
                raise OpsError(
                    f"{path.name}: restoring into a scratch database failed (status {rc})",
                    details=lines[-8:],
                    state="unchanged (a scratch database was used)",
                )
            res = check_restored(
                agent, name, manifest, state="unchanged (a scratch database was used)"
            )
        finally:
            try:
                agent.call("restore.scratch_drop", name=name)
            except OpsError as exc:
                warn(f"warning: could not drop scratch database {name}: {exc.message}")
    checks.append(
        f"restore test: {res['tables']} tables, {res['rows']} rows and the alembic "
        f"revision equal the manifest's (scratch database dropped)"
    )
    if manifest.get("partial"):
        checks.append(
            "partial (touched) backup: the whole schema and the touched tables' rows were "
            "restored; indexes and constraints (post-data) were not built, as its foreign "
            "keys may point at rows of tables whose data it does not hold"
        )
    return {"manifest": manifest, "checks": checks, "file": str(path)}


def psql_create(name: str) -> str:
    """How to create an empty database, on either target (invoke psql, from postgres)."""
    quoted = '"' + name.replace('"', '""') + '"'
    return "POSTGRES_DB=postgres " + shlex.join(
        ["invoke", "psql", "-c", f"CREATE DATABASE {quoted}"]
    )


def _drop_command(name: str) -> str:
    """How to drop a kept database, on either target (`invoke psql` goes through the seam)."""
    quoted = '"' + name.replace('"', '""') + '"'
    return shlex.join(["invoke", "psql", "-c", f"DROP DATABASE {quoted}"])


def lock_for_restore(agent: Agent, path) -> None:
    """The dbops lock, or a refusal naming its holder with the command to re-run."""
    try:
        agent.call("lock.acquire", purpose="restore")
    except AgentError as exc:
        if exc.kind != "locked":  # busy only when the lock query said so
            raise
        raise OpsError(
            exc.message,
            state="unchanged",
            next_command=f"{restore_command(path)}   # once the holder above has finished",
        ) from None


def pre_backup_compression(settings: Settings, database_size: int) -> str | None:
    """DBOPS_RESTORE_PRE_BACKUP_COMPRESSION: "fast" (default) dumps uncompressed when the backup
    folder has room for the whole database plus the reserve — the pre-restore backup runs
    alongside pg_restore, and compression is what makes it the long pole — else falls back
    to DBOPS_BACKUP_COMPRESSION; any other value is a pg_dump -Z spec (or auto)."""
    import shutil

    value = settings.get("DBOPS_RESTORE_PRE_BACKUP_COMPRESSION")
    if value != "fast":
        return value
    folder = catalog.ensure_dir(Path(settings.backup_dir))
    reserve = settings.get("DBOPS_BACKUP_RESERVE_MB") * 1_000_000
    room = shutil.disk_usage(folder).free - reserve
    return "0" if room >= 1.5 * database_size else None


def restore_jobs(settings: Settings, jobs: int | None) -> int:
    """--jobs, else DBOPS_RESTORE_JOBS, else 1. N > 1: pg_restore -j N from a temporary copy of the
    archive next to the server (1: streamed straight into pg_restore, no temporary copy)."""
    if jobs is None:
        jobs = settings.get("DBOPS_RESTORE_JOBS")
    if jobs < 1:
        raise OpsError("--jobs must be 1 or more")
    return jobs


def restore(
    settings: Settings,
    file: str,
    *,
    yes: bool = False,
    other_database: bool = False,
    jobs: int | None = None,
    pre_backup: bool = False,
    drop_old: bool = False,
    out: Out = print_note,
    warn: Out = print_note,
) -> dict:
    t0 = time.monotonic()
    jobs = restore_jobs(settings, jobs)
    if drop_old and not pre_backup:
        raise OpsError(
            "--drop-old drops the previous database, the only other copy of the "
            "pre-restore state: it needs --pre-backup (a verified dump of it first)",
            state="unchanged (nothing was touched)",
            next_command=restore_command(file, "--pre-backup", "--drop-old"),
        )
    path = resolve(settings, file)
    manifest = checked_manifest(path)
    if manifest["database"] != settings.database and not other_database:
        raise OpsError(
            f"{path.name} is a backup of database {manifest['database']!r}, not "
            f"{settings.database!r}",
            state="unchanged (nothing was touched)",
            next_command=f"{restore_command(path, '--other-database')}   # if you mean it",
        )
    with Agent(settings) as agent:
        try:
            facts = agent.call("restore.facts")
        except AgentError as exc:
            raise OpsError(exc.message, state="unchanged (nothing was touched)") from None
        dump_major = int(manifest.get("server_version_num") or 0) // 10000
        server_major = facts["server_version_num"] // 10000
        if dump_major > server_major:
            raise OpsError(
                f"{path.name} was dumped from PostgreSQL {manifest['server_version']}, "
                f"newer than this server ({facts['server_version']}): it cannot be restored here",
                state="unchanged (nothing was touched)",
                next_command="restore it on a server of the same or a newer major version",
            )
        check_pg_restore(settings, agent.target, path, manifest, facts)
        if not facts["exists"]:
            raise OpsError(
                f"database {settings.database} does not exist: restore replaces an existing "
                f"database",
                state="unchanged",
                next_command=psql_create(settings.database)
                + "   # create it empty first, then re-run the restore",
            )
        if manifest.get("partial"):
            return _restore_partial(settings, agent, path, manifest, facts, yes=yes, t0=t0)
        rows = sum(manifest["tables"].values())
        confirm(
            settings,
            "\n".join(
                [
                    f"Restore {path.name}",
                    f"  taken {manifest['started_at']} ({manifest['reason']}), revision "
                    f"{'+'.join(manifest['revisions']) or 'base'}, "
                    f"{len(manifest['tables'])} tables, {rows} rows",
                    f"over database {settings.database} ({settings.target}).",
                    "  1. "
                    + (
                        f"a pre-restore backup of {settings.database} is taken (--pre-backup)"
                        if pre_backup
                        else "no pre-restore dump (the old database is kept instead; "
                        "--pre-backup for one)"
                    ),
                    "  2. the backup is restored into a new database and checked",
                    f"  3. {len(facts['sessions'])} session(s) connected to {settings.database} "
                    "are terminated, and the databases are swapped by rename",
                    f"  4. the current {settings.database} is "
                    + (
                        "DROPPED after the swap (--drop-old)"
                        if drop_old
                        else (
                            f"kept as {settings.database}_dbops_old_<time> "
                            "(undo: invoke restore-undo)"
                        )
                    ),
                ]
            ),
            yes=yes,
            expect=settings.database,
            state="unchanged (nothing was touched)",
            next_command=restore_command(path, "--yes"),
        )
        lock_for_restore(agent, path)
        pre_z = (
            pre_backup_compression(settings, facts.get("database_size") or 0)
            if pre_backup
            else None
        )
        res = _restore_locked(
            settings,
            agent,
            path,
            manifest,
            jobs,
            t0,
            pre_z,
            pre_backup=pre_backup,
            drop_old=drop_old,
            from_revisions=facts.get("revisions"),
            out=out,
            warn=warn,
        )
        res["kept_before"] = facts["kept_old"]
        res["file"] = str(path)
        return res


def _restore_locked(
    settings: Settings,
    agent: Agent,
    path: Path,
    manifest: dict,
    jobs: int,
    t0: float,
    pre_z: str | None = None,
    *,
    pre_backup: bool = True,
    drop_old: bool = False,
    from_revisions: list | None = None,
    out: Out = print_note,
    warn: Out = print_note,
) -> dict:
    record = {
        "file": str(path),
        "sha256": manifest["sha256"],
        "to": manifest["revisions"],
        "backup_database": manifest["database"],
    }
    name = None
    swapped = None
    swapping = False
    pre = None
    job = None
    try:
        created = agent.call("restore.create")
        name = created["name"]
        for s in created["swept"]:
            out(f"dropped {s}, left behind by an interrupted restore")
        job = RestoreJob(
            settings, agent.target, path, manifest, mode="restore", dbname=name, jobs=jobs
        )
        t_started = time.monotonic()
        # The pre-restore backup reads the live database while pg_restore (started above) fills
        # the new one: different databases, neither waits. Both must succeed before the swap.
        if pre_backup:
            try:
                pre = take_backup(settings, agent, "pre-restore", prune=False, compression=pre_z)
            except OpsError as exc:
                raise OpsError(
                    f"the pre-restore backup failed: {exc.message}", details=exc.details
                ) from None
        if pre is not None:
            record.update(pre_restore_backup=pre["path"], **{"from": pre["manifest"]["revisions"]})
            out(f"pre-restore backup: {pre['path']}")
        else:
            record["from"] = from_revisions
        t_pre = time.monotonic()
        follow_file(job.proc, job.src, f"restore: pg_restore {path.name}", manifest["size"])
        rc, lines = job.finish()
        job = None
        t_restored = time.monotonic()
        if rc != 0:
            raise OpsError(
                f"pg_restore into the new database {name} failed (status {rc})", details=lines[-8:]
            )
        check = agent.call(
            "restore.check", name=name, tables=manifest["tables"], revisions=manifest["revisions"]
        )
        t_checked = time.monotonic()
        sessions = agent.call("restore.facts")["sessions"]
        if sessions:
            warn(
                f"warning: terminating {len(sessions)} session(s) "
                f"connected to {settings.database}: "
                + ", ".join(
                    f"pid {s['pid']} {s['application_name'] or '-'} ({s['user']}@{s['client']})"
                    for s in sessions[:10]
                )
            )
        # The intent first: a swap cut short is then named by its record as well as by the
        # catalog (doctor, restore-undo read the catalog: dbops/agent/swap.py).
        audit.append(settings, "restore", result="swapping", new_database=name, **record)
        swapping = True
        swapped = agent.call("restore.swap", name=name)
    except (OpsError, KeyboardInterrupt) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        message = exc.message if isinstance(exc, OpsError) else "interrupted"
        if job is not None:
            job.kill()
        dropped_new = False
        if name and swapped is None and not swapping:
            try:
                agent.call("restore.drop", name=name)
                dropped_new = True
            except Exception:
                warn(f"warning: could not drop {name}; the next restore drops it")
        pre_note = f"pre-restore backup: {pre['path']}" if pre else "no pre-restore backup was kept"
        state, nxt = _state_after_failure(settings, name, dropped_new, swapping)
        audit.append(
            settings,
            "restore",
            result="interrupted" if interrupted else "failed",
            error=message,
            state=state,
            duration_s=round(time.monotonic() - t0, 3),
            **record,
        )
        raise OpsError(
            f"restore {'interrupted' if interrupted else 'failed: ' + message}",
            details=getattr(exc, "details", []),
            state=f"{state}; {pre_note}",
            next_command=nxt or f"invoke verify-backup {path} --restore-test",
            exit_code=130 if interrupted else 1,
        ) from None
    old = swapped["old"]
    dropped = None
    if drop_old:  # only with a verified pre-restore backup (checked before anything)
        try:
            dropped = agent.call("restore.drop", name=old)["dropped"]
        except OpsError as exc:
            warn(
                f"warning: could not drop the previous database {old}: {exc.message}; "
                f"drop it with: {_drop_command(old)}"
            )
    timings = {
        "pre_restore_backup_s": pre["manifest"]["duration_s"] if pre else None,
        "pre_restore_backup_done_after_s": round(t_pre - t_started, 3) if pre else None,
        "pg_restore_s": round(t_restored - t_started, 3),
        "check_s": round(t_checked - t_restored, 3),
        "swap_s": round(time.monotonic() - t_checked, 3),
        "total_s": round(time.monotonic() - t0, 3),
    }
    kept = None if dropped else old
    audit.append(
        settings,
        "restore",
        result="ok",
        old_database=kept,
        dropped_old=dropped,
        terminated=len(swapped["terminated"]),
        duration_s=round(time.monotonic() - t0, 3),
        timings=timings,
        **record,
    )
    return {
        "database": settings.database,
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
        "terminated": swapped["terminated"],
        "timings": timings,
    }


def undo(settings: Settings, name: str | None = None, *, yes: bool = False) -> dict:
    """Swap a kept <db>_dbops_old_<time> back in (the undo of a restore: two renames, no copy).
    The database it replaces is kept in turn under a new <db>_dbops_old_<time> name."""
    t0 = time.monotonic()
    with Agent(settings) as agent:
        swap_state = agent.call("swap.state")
        if swap_state["interrupted"]:
            return _repair_swap(settings, agent, swap_state, yes=yes, t0=t0)
        facts = agent.call("restore.facts")
        kept = facts["kept_old"]
        if name is None:
            if not kept:
                raise OpsError(
                    f"no kept previous database of {settings.database} (nothing to undo)",
                    state="unchanged",
                )
            name = sorted(kept)[-1]
        elif name not in kept:
            raise OpsError(
                f"{name} is not a kept previous database of {settings.database} "
                f"(kept: {', '.join(kept) or 'none'})",
                state="unchanged (nothing was touched)",
                next_command="invoke restore-undo   # the newest kept one",
            )
        confirm(
            settings,
            "\n".join(
                [
                    f"Swap {name} back in as {settings.database} ({settings.target}).",
                    f"  {len(facts['sessions'])} session(s) connected to "
                    f"{settings.database} are terminated;",
                    f"  the current {settings.database} is kept as "
                    f"{settings.database}_dbops_old_<time>.",
                ]
            ),
            yes=yes,
            expect=settings.database,
            state="unchanged (nothing was touched)",
            next_command=f"invoke restore-undo --name {name} --yes",
        )
        try:
            agent.call("lock.acquire", purpose="restore")
        except AgentError as exc:
            if exc.kind != "locked":  # busy only when the lock query said so
                raise
            raise OpsError(
                exc.message,
                state="unchanged",
                next_command=(
                    command(
                        "invoke",
                        "restore-undo",
                        "--name",
                        name,
                        why="once the holder above has finished",
                    )
                ),
            ) from None
        try:
            swapped = agent.call("restore.swap", name=name)
        except AgentError as exc:
            audit.append(settings, "restore-undo", result="failed", error=exc.message, kept=name)
            raise OpsError(
                f"undo failed: {exc.message}",
                state=f"{settings.database} is unchanged",
                next_command=f"invoke restore-undo --name {name} --yes",
            ) from None
    old = swapped["old"]
    audit.append(
        settings,
        "restore-undo",
        result="ok",
        swapped_in=name,
        old_database=old,
        terminated=len(swapped["terminated"]),
        duration_s=round(time.monotonic() - t0, 3),
    )
    return {
        "database": settings.database,
        "swapped_in": name,
        "old_database": old,
        "drop_command": _drop_command(old),
        "terminated": swapped["terminated"],
    }


def _state_after_failure(
    settings: Settings, name: str | None, dropped_new: bool, swapping: bool
) -> tuple[str, str | None]:
    """What the failed restore left, read from the server's catalog by a fresh agent (the
    operation's own may be dead); and the next command when it is not the default."""
    try:
        st = call_once(settings, "swap.state")
    except (OpsError, KeyboardInterrupt):
        return (
            f"unknown: the server could not be read after the failure"
            f"{' during the swap' if swapping else ''}",
            "invoke doctor",
        )
    if st["interrupted"]:
        return describe_swap(st), "invoke restore-undo"
    if swapping:
        return f"{settings.database} is open (read from the server after the failure)", (
            "invoke doctor"
        )
    new = (
        "the new database was dropped"
        if dropped_new or not name
        else f"the new database {name} is left (the next restore drops it)"
    )
    return f"{settings.database} is unchanged ({new})", None


def describe_swap(st: dict) -> str:
    """An interrupted swap's state, as the server's catalog shows it (dbops/agent/swap.py)."""
    live, old = st["live"], st["old"]
    return {
        "closed": f"an interrupted restore swap left {live} refusing connections "
        f"(datallowconn off); it was not renamed",
        "moved_away": f"an interrupted restore swap renamed {live} to {old} (closed to "
        f"connections) and did not put the restored copy in: {live} does not exist",
        "old_closed": f"an interrupted restore swap completed but left the kept {old} closed to "
        f"connections",
    }.get(st["interrupted"] or "", "no interrupted swap")


def _repair_swap(settings: Settings, agent: Agent, st: dict, *, yes: bool, t0: float) -> dict:
    """restore-undo after an interrupted swap: finish what can only be finished one way, undo
    the rest (live back in place, open again)."""
    confirm(
        settings,
        f"{describe_swap(st)}.\nRepair it (reopen / rename back {settings.database})?",
        yes=yes,
        expect=settings.database,
        state=describe_swap(st),
        next_command="invoke restore-undo --yes",
    )
    try:
        agent.call("lock.acquire", purpose="restore")
    except AgentError as exc:
        raise OpsError(
            exc.message,
            state=describe_swap(st),
            next_command="wait for it to finish, then re-run: invoke restore-undo",
        ) from None
    res = agent.call("swap.repair")
    audit.append(
        settings,
        "restore-undo",
        result="ok",
        repaired=res["repaired"],
        old_database=res["old"],
        said=res["said"],
        duration_s=round(time.monotonic() - t0, 3),
    )
    return {
        "database": settings.database,
        "repaired": res["repaired"],
        "said": res["said"],
        "swapped_in": None,
        "old_database": res["old"],
        "drop_command": None,
        "terminated": [],
    }


def _restore_partial(
    settings: Settings,
    agent: Agent,
    path: Path,
    manifest: dict,
    facts: dict,
    *,
    yes: bool,
    t0: float,
) -> dict:
    """A touched (partial) backup holds the data of some relations only: it can only be put
    back into a database at the backup's revision (same schema), in one transaction."""
    from dbops.ops.touched import putback

    want, live = sorted(manifest["revisions"]), sorted(facts.get("revisions") or [])
    rev = "+".join(want) or "base"
    if facts.get("revisions") is None or want != live:
        raise OpsError(
            f"{path.name} is a partial (touched) backup taken at {rev}; {settings.database} "
            f"is at {'+'.join(live) or 'base'}: its tables can only be put back at the "
            f"backup's revision",
            state="unchanged (nothing was touched)",
            next_command=f"invoke rollback --to={want[0] if want else 'base'}   "
            f"# downgrades, then puts these tables back from it",
        )
    tables = manifest["tables"]
    confirm(
        settings,
        "\n".join(
            [
                f"Put back the data of {len(tables)} table(s) from {path.name} (partial, "
                f"taken {manifest['started_at']}, revision {rev}) into "
                f"{settings.database} ({settings.target}):",
                "  " + ", ".join(sorted(tables)),
                "  their current rows are REPLACED by the backup's, in one "
                "transaction checked against",
                "  the manifest's row counts; every other table is left as it is",
            ]
        ),
        yes=yes,
        expect=settings.database,
        state="unchanged (nothing was touched)",
        next_command=restore_command(path, "--yes"),
    )
    lock_for_restore(agent, path)
    again = agent.call("restore.facts")
    if sorted(again.get("revisions") or []) != want:
        raise OpsError(
            f"{settings.database} moved to {again.get('revisions')} meanwhile",
            state="unchanged (nothing was touched)",
            next_command=restore_command(path),
        )
    record = {
        "file": str(path),
        "sha256": manifest["sha256"],
        "to": manifest["revisions"],
        "from": live,
        "partial": True,
        "tables": sorted(tables),
    }
    try:
        res = putback(settings, agent, path, manifest)
    except OpsError as exc:
        audit.append(
            settings,
            "restore",
            result="failed",
            error=exc.message,
            duration_s=round(time.monotonic() - t0, 3),
            **record,
        )
        raise OpsError(
            f"restore failed: {exc.message}",
            details=exc.details,
            state=f"{settings.database} is unchanged (one transaction, rolled back)",
            next_command=f"invoke verify-backup {path} --restore-test",
        ) from None
    audit.append(
        settings, "restore", result="ok", duration_s=round(time.monotonic() - t0, 3), **record
    )
    return {
        "database": settings.database,
        "file": str(path),
        "revisions": manifest["revisions"],
        "tables": res["tables"],
        "rows": res["rows"],
        "pre_restore_backup": None,
        "old_database": None,
        "dropped_old": None,
        "partial": True,
        "drop_command": None,
        "undo_command": None,
        "terminated": [],
        "timings": {"total_s": round(time.monotonic() - t0, 3)},
        "kept_before": facts["kept_old"],
    }
