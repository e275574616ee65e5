"""invoke restore / verify-backup.

restore: refuse before touching anything (manifest missing, sha256 or size mismatch,
other database, dump from a newer major version), confirm, take the lock, restore into a NEW
database, check it against the manifest (tables, alembic revision, row counts), then swap by
rename and keep the old database under a dated name. The kept database IS the pre-restore
state (undo = rename it back: `invoke restore-undo`), so a pre-restore dump is only taken on
request (--pre-backup) or when the old database is to be dropped (--drop-old needs one).
Any failure before the swap drops the new database: the live one is untouched.

This module refuses and confirms; the restore after the lock is dbops/ops/restore_swap.py (a
whole backup) or dbops/ops/restore_partial.py (a touched backup's tables). restore and
restore-undo are audited through dbops.lifecycle.Operation from the lock on (the swap's
"swapping" intent first); Ctrl-C or SIGTERM ends them with exit status 130.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from dbops import catalog, pgbin, process, seam
from dbops.agent_client import Agent, AgentError, call_once
from dbops.config import Settings
from dbops.confirm import confirm
from dbops.errors import OpsError, command
from dbops.lifecycle import EXIT_CODES, Operation, outcome_of
from dbops.ops.backup import fmt_bytes
from dbops.ops.output import Out, print_note


def restore_command(path: Path | str, *flags: str) -> str:
    """The one form of the restore command dbops prints: ``invoke restore FILE [flags]``."""
    return shlex.join(["invoke", "restore", str(path), *flags])


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


def _fix_with_pg_restore(settings: Settings) -> str:
    """How to get a pg_restore of major ``{m}`` on this target (a format string)."""
    if settings.target == "local":
        return (
            "python scripts/lib/pg_majors.py bindir {m}   # installs one; set DBOPS_PG_BINDIR to "
            "the folder it prints"
        )
    return (
        f"invoke settings   # use a db image whose pg_restore is {{m}} "
        f"(DBOPS_TARGET={settings.target} runs the server's own tools), or DBOPS_TARGET=local "
        f"with DBOPS_PG_BINDIR"
    )


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
    how = _fix_with_pg_restore(settings)
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
        launch = target.pg(  # dbops/sh/restore.sh: the archive arrives on stdin
            process.sh_argv(
                "restore", "dbops-restore", mode, manifest["format"], dbname or "-", str(jobs)
            )
        )
        self.settings = settings
        self.src = open(path, "rb")
        try:
            self.job = process.Job(launch, stdin=self.src)
        except BaseException:
            self.src.close()
            raise
        self.proc = self.job.proc  # follow_file and drill watch it

    def finish(self) -> tuple[int, list[str]]:
        try:
            ended = self.job.finish()
        finally:
            self.src.close()
        return ended.rc, ended.messages

    def kill(self) -> None:
        self.job.stop()
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


SCRATCH_STATE = "unchanged (a scratch database was used)"


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
            checks.append(_full_read(settings, agent, path, manifest))
            return {"manifest": manifest, "checks": checks, "file": str(path)}
        res = _restore_test(settings, agent, path, manifest, warn)
    checks += _restore_test_checks(res, manifest)
    return {"manifest": manifest, "checks": checks, "file": str(path)}


def _full_read(settings: Settings, agent: Agent, path: Path, manifest: dict) -> str:
    """pg_restore reads the whole archive to /dev/null: its check line, or OpsError."""
    rc, lines = pg_restore_stream(settings, agent.target, path, manifest, mode="check")
    if rc != 0:
        raise OpsError(
            f"{path.name}: the full read (pg_restore) failed with status {rc}: "
            f"the archive is damaged",
            details=lines[-8:],
            state="unchanged",
        )
    return "full read (pg_restore to /dev/null): ok"


def _restore_test(settings: Settings, agent: Agent, path: Path, manifest: dict, warn: Out) -> dict:
    """Restore into a scratch database, check it against the manifest, drop it (always)."""
    made = agent.call("restore.scratch")
    name = made["name"]
    for old in made.get("swept", []):
        warn(f"dropped {old}, left behind by a killed drill or restore-test")
    try:
        rc, lines = pg_restore_stream(
            settings,
            agent.target,
            path,
            manifest,
            mode="restore-data" if manifest.get("partial") else "restore",
            dbname=name,
        )
        if rc != 0:
            raise OpsError(
                f"{path.name}: restoring into a scratch database failed (status {rc})",
                details=lines[-8:],
                state=SCRATCH_STATE,
            )
        return check_restored(agent, name, manifest, state=SCRATCH_STATE)
    finally:
        try:
            agent.call("restore.scratch_drop", name=name)
        except OpsError as exc:
            warn(f"warning: could not drop scratch database {name}: {exc.message}")


def _restore_test_checks(res: dict, manifest: dict) -> list[str]:
    checks = [
        f"restore test: {res['tables']} tables, {res['rows']} rows and the alembic "
        f"revision equal the manifest's (scratch database dropped)"
    ]
    if manifest.get("partial"):
        checks.append(
            "partial (touched) backup: the whole schema and the touched tables' rows were "
            "restored; indexes and constraints (post-data) were not built, as its foreign "
            "keys may point at rows of tables whose data it does not hold"
        )
    return checks


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
    """Refuse what cannot work, confirm, take the lock, then restore: into a new database,
    checked and swapped in (dbops/ops/restore_swap.py), or a partial backup's tables put back
    (dbops/ops/restore_partial.py). Its audit record (an Operation, from the lock on) says
    how it ended; Ctrl-C or SIGTERM ends it with exit status 130."""
    from dbops.ops.restore_partial import restore_partial
    from dbops.ops.restore_swap import restore_locked

    op = Operation(settings, "restore", warn=warn)  # entered once the lock is held
    jobs = restore_jobs(settings, jobs)
    path, manifest = _usable_backup(settings, file, other_database, pre_backup, drop_old)
    with Agent(settings) as agent:
        facts = _restorable_here(settings, agent, path, manifest)
        if manifest.get("partial"):
            return restore_partial(settings, agent, path, manifest, facts, op, yes=yes)
        _confirm_restore(settings, path, manifest, facts, yes, pre_backup, drop_old)
        lock_for_restore(agent, path)
        pre_z = (
            pre_backup_compression(settings, facts.get("database_size") or 0)
            if pre_backup
            else None
        )
        with op:
            res = restore_locked(
                settings,
                agent,
                path,
                manifest,
                op,
                jobs=jobs,
                pre_z=pre_z,
                pre_backup=pre_backup,
                drop_old=drop_old,
                from_revisions=facts.get("revisions"),
                out=out,
                warn=warn,
            )
        res["kept_before"] = facts["kept_old"]
        res["file"] = str(path)
        return res


def _usable_backup(
    settings: Settings, file: str, other_database: bool, pre_backup: bool, drop_old: bool
) -> tuple[Path, dict]:
    """The backup's path and checked manifest; refusals before the server is asked anything."""
    if drop_old and not pre_backup:
        raise OpsError(
            "--drop-old drops the previous database, the only other copy of the "
            "pre-restore state: it needs --pre-backup (a verified dump of it first)",
            state=UNTOUCHED,
            next_command=restore_command(file, "--pre-backup", "--drop-old"),
        )
    path = resolve(settings, file)
    manifest = checked_manifest(path)
    if manifest["database"] != settings.database and not other_database:
        raise OpsError(
            f"{path.name} is a backup of database {manifest['database']!r}, not "
            f"{settings.database!r}",
            state=UNTOUCHED,
            next_command=f"{restore_command(path, '--other-database')}   # if you mean it",
        )
    return path, manifest


def _restorable_here(settings: Settings, agent: Agent, path: Path, manifest: dict) -> dict:
    """The server's restore.facts, once it is known the backup can be restored into it: the
    dump's major is not newer, this pg_restore can do it, the database exists."""
    try:
        facts = agent.call("restore.facts")
    except AgentError as exc:
        raise OpsError(exc.message, state=UNTOUCHED) from None
    dump_major = int(manifest.get("server_version_num") or 0) // 10000
    server_major = facts["server_version_num"] // 10000
    if dump_major > server_major:
        raise OpsError(
            f"{path.name} was dumped from PostgreSQL {manifest['server_version']}, "
            f"newer than this server ({facts['server_version']}): it cannot be restored here",
            state=UNTOUCHED,
            next_command="restore it on a server of the same or a newer major version",
        )
    check_pg_restore(settings, agent.target, path, manifest, facts)
    if not facts["exists"]:
        raise OpsError(
            f"database {settings.database} does not exist: restore replaces an existing database",
            state="unchanged",
            next_command=psql_create(settings.database)
            + "   # create it empty first, then re-run the restore",
        )
    return facts


def _confirm_restore(
    settings: Settings,
    path: Path,
    manifest: dict,
    facts: dict,
    yes: bool,
    pre_backup: bool,
    drop_old: bool,
) -> None:
    rows = sum(manifest["tables"].values())
    db = settings.database
    pre = (
        f"a pre-restore backup of {db} is taken (--pre-backup)"
        if pre_backup
        else "no pre-restore dump (the old database is kept instead; --pre-backup for one)"
    )
    old = (
        "DROPPED after the swap (--drop-old)"
        if drop_old
        else f"kept as {db}_dbops_old_<time> (undo: invoke restore-undo)"
    )
    plan = [
        f"Restore {path.name}",
        f"  taken {manifest['started_at']} ({manifest['reason']}), revision "
        f"{'+'.join(manifest['revisions']) or 'base'}, "
        f"{len(manifest['tables'])} tables, {rows} rows",
        f"over database {db} ({settings.target}).",
        f"  1. {pre}",
        "  2. the backup is restored into a new database and checked",
        f"  3. {len(facts['sessions'])} session(s) connected to {db} "
        "are terminated, and the databases are swapped by rename",
        f"  4. the current {db} is {old}",
    ]
    confirm(
        settings,
        "\n".join(plan),
        yes=yes,
        expect=db,
        state=UNTOUCHED,
        next_command=restore_command(path, "--yes"),
    )


def undo(settings: Settings, name: str | None = None, *, yes: bool = False) -> dict:
    """Swap a kept <db>_dbops_old_<time> back in (the undo of a restore: two renames, no copy).
    The database it replaces is kept in turn under a new <db>_dbops_old_<time> name. After an
    interrupted swap, repair it instead. Audited (an Operation, from the lock on); Ctrl-C or
    SIGTERM ends it with exit status 130 and the state read back from the server."""
    op = Operation(settings, "restore-undo")  # entered once the lock is held
    with Agent(settings) as agent:
        swap_state = agent.call("swap.state")
        if swap_state["interrupted"]:
            return _repair_swap(settings, agent, swap_state, op, yes=yes)
        facts = agent.call("restore.facts")
        name = _kept_to_swap_in(settings, facts["kept_old"], name)
        _confirm_undo(settings, facts, name, yes)
        _lock_for_undo(agent, name)
        with op:
            swapped = _swap_back(settings, agent, op, name)
            old = swapped["old"]
            op.finish(swapped_in=name, old_database=old, terminated=len(swapped["terminated"]))
    return {
        "database": settings.database,
        "swapped_in": name,
        "old_database": old,
        "drop_command": _drop_command(old),
        "terminated": swapped["terminated"],
    }


def _kept_to_swap_in(settings: Settings, kept: list[str], name: str | None) -> str:
    """``name`` if it is a kept previous database, else the newest kept one; OpsError if none."""
    if name is None:
        if not kept:
            raise OpsError(
                f"no kept previous database of {settings.database} (nothing to undo)",
                state="unchanged",
            )
        return sorted(kept)[-1]
    if name not in kept:
        raise OpsError(
            f"{name} is not a kept previous database of {settings.database} "
            f"(kept: {', '.join(kept) or 'none'})",
            state=UNTOUCHED,
            next_command="invoke restore-undo   # the newest kept one",
        )
    return name


def _confirm_undo(settings: Settings, facts: dict, name: str, yes: bool) -> None:
    db = settings.database
    confirm(
        settings,
        "\n".join(
            [
                f"Swap {name} back in as {db} ({settings.target}).",
                f"  {len(facts['sessions'])} session(s) connected to {db} are terminated;",
                f"  the current {db} is kept as {db}_dbops_old_<time>.",
            ]
        ),
        yes=yes,
        expect=db,
        state=UNTOUCHED,
        next_command=f"invoke restore-undo --name {name} --yes",
    )


def _lock_for_undo(agent: Agent, name: str) -> None:
    try:
        agent.call("lock.acquire", purpose="restore")
    except AgentError as exc:
        if exc.kind != "locked":  # busy only when the lock query said so
            raise
        raise OpsError(
            exc.message,
            state="unchanged",
            next_command=command(
                "invoke", "restore-undo", "--name", name, why="once the holder above has finished"
            ),
        ) from None


def _swap_back(settings: Settings, agent: Agent, op: Operation, name: str) -> dict:
    """The swap itself, its intent recorded first. The agent refusing it changed nothing; an
    interruption or a dead agent: the state is read back from the server's catalog."""
    op.intent("swapping", swapped_in=name)
    try:
        return agent.call("restore.swap", name=name)
    except AgentError as exc:
        op.finish("failed", error=exc.message, kept=name)
        raise OpsError(
            f"undo failed: {exc.message}",
            state=f"{settings.database} is unchanged",
            next_command=f"invoke restore-undo --name {name} --yes",
        ) from None
    except (OpsError, KeyboardInterrupt) as exc:
        raise _undo_cut_short(settings, op, exc, kept=name) from None


def _undo_cut_short(settings: Settings, op: Operation, exc: BaseException, **fields) -> OpsError:
    """restore-undo ended by Ctrl-C/SIGTERM (exit 130) or its agent's death, mid-swap: the
    record and the error say the state read back from the server, and what settles it."""
    result, outcome = outcome_of(exc)
    state, nxt = _state_after_failure(settings, None, False, True)
    message = exc.message if isinstance(exc, OpsError) else "interrupted"
    op.finish(result, **{**outcome, **fields, "error": message, "state": state})
    interrupted = result == "interrupted"
    return OpsError(
        f"restore-undo {'interrupted' if interrupted else 'failed: ' + message}",
        state=state,
        next_command=nxt,
        exit_code=EXIT_CODES["interrupted"] if interrupted else 1,
    )


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


def _repair_swap(settings: Settings, agent: Agent, st: dict, op: Operation, *, yes: bool) -> dict:
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
    with op:
        op.intent("swapping", repairing=st["interrupted"])
        try:
            res = agent.call("swap.repair")
        except AgentError:
            raise
        except (OpsError, KeyboardInterrupt) as exc:
            raise _undo_cut_short(settings, op, exc, repairing=st["interrupted"]) from None
        op.finish(repaired=res["repaired"], old_database=res["old"], said=res["said"])
    return {
        "database": settings.database,
        "repaired": res["repaired"],
        "said": res["said"],
        "swapped_in": None,
        "old_database": res["old"],
        "drop_command": None,
        "terminated": [],
    }
