"""Point-in-time recovery through pgBackRest (docs/pitr.md): dbops writes pgBackRest's
configuration, turns WAL archiving on, takes physical backups and restores to a time, an LSN or
the moment before a migration; pgBackRest archives, backs up, verifies and expires.

Everything pgBackRest does runs next to the server, as the server's OS user (the owner of its
data directory; ``runuser`` when dbops runs as root). The local target only, for now.

A restore never stops the live server: pgBackRest restores into a side instance (a new data
directory under ``<repo folder>/side/``, a free port, archive_mode=off, recovery until the
target, then promoted); a verified pg_dump of the side instance's database is brought back
through dbops' ordinary restore (dbops/ops/restore.py: a new database, checks, swap by rename,
the old one kept for restore-undo). The side instance is removed unless --keep-side; one left
by an interrupted run is removed by the next restore and named by doctor.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from dbops import audit, localpg, pgbin, seam
from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.confirm import confirm
from dbops.errors import OpsError
from dbops.lifecycle import Operation
from dbops.ops.output import Out, print_note

BACKUP_TYPES = ("full", "diff", "incr")
LSN = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")
KEEP_MARK = "kept"  # a file in a side folder: kept on purpose (--keep-side), not swept
ARCHIVE_WAIT_S = 120


# --- where things are --------------------------------------------------------------------------
def folder(settings: Settings) -> Path:
    """DBOPS_PITR_REPO, default the backup folder's sibling ``pgbackrest/``: the configuration,
    the repository (repo/), pgBackRest's logs and locks, and side instances (side/)."""
    configured = settings.get("DBOPS_PITR_REPO")
    return Path(configured) if configured else Path(settings.backup_dir).parent / "pgbackrest"


def stanza(settings: Settings) -> str:
    name = settings.get("DBOPS_PITR_STANZA") or settings.database
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def conf_path(settings: Settings) -> Path:
    return folder(settings) / "pgbackrest.conf"


def enabled(settings: Settings) -> bool:
    return conf_path(settings).is_file()


def binary() -> str:
    found = shutil.which("pgbackrest") or (
        "/usr/bin/pgbackrest" if os.path.exists("/usr/bin/pgbackrest") else None
    )
    if not found:
        raise OpsError(
            "pgbackrest is not installed on this machine",
            state="unchanged (nothing was touched)",
            next_command="apt-get install -y --no-install-recommends pgbackrest",
        )
    return found


def require_local(settings: Settings, action: str) -> None:
    if settings.target != "local":
        raise OpsError(
            f"{action}: point-in-time recovery runs on DBOPS_TARGET=local for now (pgBackRest "
            f"must run next to the server, as its OS user); this is DBOPS_TARGET="
            f"{settings.target}",
            state="unchanged (nothing was touched)",
            next_command="less docs/pitr.md   # compose and Kubernetes: what it takes there",
        )


def owner_of(path: Path) -> str:
    return pwd.getpwuid(path.stat().st_uid).pw_name


def as_user(user: str) -> list[str]:
    """The prefix that runs a command as ``user``: nothing when we are that user, runuser as
    root; anyone else cannot (pgBackRest must own the repository and read the data directory)."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    if me == user:
        return []
    if os.geteuid() == 0:
        return ["runuser", "-u", user, "--"]
    raise OpsError(
        f"pgBackRest must run as {user} (the server's OS user); dbops runs as {me}",
        state="unchanged (nothing was touched)",
        next_command=f"sudo -u {user} invoke …   (or run dbops as root)",
    )


class Backrest:
    """pgbackrest with this setup's configuration and stanza, as the repository's owner."""

    def __init__(self, settings: Settings, user: str | None = None):
        self.settings = settings
        self.folder = folder(settings)
        self.conf = conf_path(settings)
        self.stanza = stanza(settings)
        self.user = user or owner_of(self.folder)
        self.target = seam.target_for(settings)

    def argv(self, command: str, *options: str) -> list[str]:
        return [
            *as_user(self.user),
            binary(),
            f"--config={self.conf}",
            f"--stanza={self.stanza}",
            *options,
            command,
        ]

    def run(self, command: str, *options: str, timeout: float | None = None):
        return seam.run(self.target.pg(self.argv(command, *options)), timeout=timeout)

    def checked(self, command: str, *options: str, what: str, state: str, next_command: str):
        done = self.run(command, *options)
        if done.returncode != 0:
            raise OpsError(
                f"{what} failed (pgbackrest {command}, status {done.returncode})",
                details=_lines(done)[-8:],
                state=state,
                next_command=next_command,
            )
        return done

    def info(self) -> list[dict]:
        """The stanza's backups from ``pgbackrest info --output=json`` (oldest first)."""
        done = self.run("info", "--output=json")
        if done.returncode != 0:
            raise OpsError(
                f"pgbackrest info failed (status {done.returncode})",
                details=_lines(done)[-4:],
                state="unchanged",
            )
        data = json.loads(done.stdout.decode() or "[]")
        return (data[0].get("backup") if data else None) or []

    def archive_command(self) -> str:
        return (
            shlex.join(
                [binary(), f"--config={self.conf}", f"--stanza={self.stanza}", "archive-push"]
            )
            + " %p"
        )


def _lines(done) -> list[str]:
    text = (done.stderr or b"").decode(errors="replace") + (done.stdout or b"").decode(
        errors="replace"
    )
    return [ln for ln in text.splitlines() if ln.strip()]


# --- the server's facts --------------------------------------------------------------------------
def server_facts(agent: Agent, action: str) -> dict:
    try:
        return agent.call("pitr.facts")
    except AgentError as exc:
        raise OpsError(
            f"{action}: {exc.message}",
            state="unchanged (nothing was touched)",
            next_command="invoke doctor",
        ) from None


def data_dir(facts: dict, action: str) -> Path:
    path = Path(facts["settings"]["data_directory"])
    if not (path / "PG_VERSION").exists():
        raise OpsError(
            f"{action}: the server's data directory {path} is not on this machine (or not "
            f"readable here): pgBackRest must run next to the server",
            state="unchanged (nothing was touched)",
            next_command="invoke pitr-enable   # run it on the database host (docs/pitr.md)",
        )
    return path


def restart_command(settings: Settings, data: Path, user: str) -> str:
    """The exact command that restarts this server: pg_ctlcluster for a Debian cluster
    (/etc/postgresql/<major>/<name>), else pg_ctl on its data directory as its OS user."""
    parts = data.parts
    if len(parts) >= 2 and Path("/etc/postgresql", parts[-2], parts[-1]).is_dir():
        return f"pg_ctlcluster {parts[-2]} {parts[-1]} restart"
    pg_ctl = os.path.join(pgbin.bindir(settings.pg_bindir) or "", "pg_ctl")
    log = folder(settings) / "log" / "postgres-restart.log"
    prefix = as_user(user)
    return shlex.join([*prefix, pg_ctl, "-D", str(data), "-l", str(log), "-m", "fast", "-w"]) + (
        " restart"
    )


# --- invoke pitr-enable ------------------------------------------------------------------------
def _config_text(settings: Settings, facts: dict, data: Path, retention: int) -> str:
    f = folder(settings)
    socket_dir = (
        (facts["settings"].get("unix_socket_directories") or "/var/run/postgresql")
        .split(",")[0]
        .strip()
    )
    return "\n".join(
        [
            "# written by dbops (invoke pitr-enable); re-running it rewrites this file",
            "[global]",
            f"repo1-path={f / 'repo'}",
            f"repo1-retention-full={retention}",
            f"log-path={f / 'log'}",
            f"lock-path={f / 'lock'}",
            f"spool-path={f / 'spool'}",
            "log-level-console=warn",
            "log-level-file=info",
            "start-fast=y",
            "compress-type=lz4",
            "",
            f"[{stanza(settings)}]",
            f"pg1-path={data}",
            f"pg1-port={facts['settings']['port']}",
            f"pg1-socket-path={socket_dir}",
            f"pg1-user={settings.user}",
            f"pg1-database={settings.maintenance_db}",
            "",
        ]
    )


def _own(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def write_config(settings: Settings, facts: dict, data: Path, user: str) -> Path:
    """The folder (0700) and its parts, owned by the server's OS user; the configuration
    written atomically (0600)."""
    f = folder(settings)
    for p in (f, f / "repo", f / "log", f / "lock", f / "spool", f / "side"):
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
        p.chmod(0o700)
        _own(p, user)
    text = _config_text(settings, facts, data, settings.get("DBOPS_PITR_RETENTION_FULL"))
    conf = conf_path(settings)
    tmp = conf.with_name(".pgbackrest.conf.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    _own(tmp, user)
    os.replace(tmp, conf)
    return conf


def _archive_changes(settings: Settings, br: Backrest, current: dict) -> dict:
    """The server settings WAL archiving to ``br`` needs that differ from ``current``."""
    wanted = {
        "archive_mode": "on",
        "archive_command": br.archive_command(),
        "archive_timeout": settings.get("DBOPS_PITR_ARCHIVE_TIMEOUT"),
    }
    if current.get("wal_level") == "minimal":
        wanted["wal_level"] = "replica"
    return {k: v for k, v in wanted.items() if _differs(k, current.get(k), v)}


def _confirm_enable(
    settings: Settings, br: Backrest, data: Path, changes: dict, *, yes: bool
) -> None:
    confirm(
        settings,
        "\n".join(
            [
                f"Turn on WAL archiving to pgBackRest for the server of "
                f"{settings.database} ({data}, run as {br.user}):",
                f"  configuration: {conf_path(settings)} (stanza {br.stanza}), "
                f"repository {br.folder / 'repo'}",
                *(f"  ALTER SYSTEM SET {k} = {v}" for k, v in changes.items()),
                "  archive_mode and wal_level take effect after a server restart",
            ]
        ),
        yes=yes,
        expect="yes",
        state="unchanged (nothing was touched)",
        next_command="invoke pitr-enable --yes",
    )


def _configure_server(agent: Agent, changes: dict, out: Out) -> None:
    """ALTER SYSTEM the archiving settings (through the agent, as a superuser)."""
    try:
        agent.call("pitr.configure", values=changes)
    except AgentError as exc:
        raise OpsError(
            exc.message,
            state="the pgBackRest configuration was written; the server's settings are unchanged",
            next_command="run it as a superuser: invoke pitr-enable",
        ) from None
    for k, v in changes.items():
        out(f"ALTER SYSTEM SET {k} = {v}")


def _create_stanza(br: Backrest, out: Out) -> None:
    br.checked(
        "stanza-create",
        what="creating the stanza",
        state="archiving configured; the stanza was not created",
        next_command=f"{shlex.join(br.argv('stanza-create'))}   # read its message",
    )
    out(f"stanza {br.stanza}: created (or already there)")


def _needs_restart(facts: dict) -> bool:
    return facts["settings"].get("archive_mode") == "off" or any(
        k in facts["pending_restart"] for k in ("archive_mode", "wal_level")
    )


def _check_archiving(br: Backrest) -> None:
    done = br.run("check")
    if done.returncode != 0:
        raise OpsError(
            f"WAL archiving does not work yet (pgbackrest check, status {done.returncode})",
            details=_lines(done)[-8:],
            state="archiving is configured; WAL is not reaching the repository",
            next_command="invoke doctor   # names the archiver's last failure",
        )


def enable(settings: Settings, *, yes: bool = False, out: Out = print_note) -> dict:
    """Configure pgBackRest and WAL archiving for the local server; one "pitr-enable" audit
    record: ok (pgbackrest check passed), restart_needed, or failed."""
    require_local(settings, "pitr-enable")
    binary()
    with Agent(settings) as agent:
        facts = server_facts(agent, "pitr-enable")
        data = data_dir(facts, "pitr-enable")
        user = owner_of(data)
        as_user(user)  # refuse now if we cannot act as the server's user
        br = Backrest(settings, user=user)
        changes = _archive_changes(settings, br, facts["settings"])
        if changes or not conf_path(settings).is_file():
            _confirm_enable(settings, br, data, changes, yes=yes)
        with Operation(settings, "pitr-enable", warn=out, stanza=br.stanza) as op:
            write_config(settings, facts, data, user)
            out(f"pgBackRest configuration: {conf_path(settings)} (stanza {br.stanza})")
            if changes:
                _configure_server(agent, changes, out)
            _create_stanza(br, out)
            facts = server_facts(agent, "pitr-enable")
            result = {"stanza": br.stanza, "config": str(conf_path(settings))}
            if _needs_restart(facts):
                op.finish("restart_needed")
                command = restart_command(settings, data, user)
                return {
                    **result,
                    "restart_needed": True,
                    "restart_command": command,
                    "working": False,
                }
            _check_archiving(br)
    return {**result, "restart_needed": False, "working": True}


def _differs(name: str, have: str | None, want: str) -> bool:
    if have is None:
        return True
    if name == "archive_timeout":  # the server says seconds: 60 for "60s", "1min"
        return _seconds(have) != _seconds(want)
    return have != want


def _seconds(value: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|h|d)?\s*", str(value))
    if not m:
        return -1
    n, unit = float(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}[unit]


def require_enabled(settings: Settings, action: str) -> Backrest:
    require_local(settings, action)
    if not enabled(settings):
        raise OpsError(
            f"{action}: point-in-time recovery is not set up ({conf_path(settings)} does not "
            f"exist)",
            state="unchanged (nothing was touched)",
            next_command="invoke pitr-enable",
        )
    return Backrest(settings)


# --- invoke backup --physical -----------------------------------------------------------------
def verified_path(settings: Settings) -> Path:
    return folder(settings) / "verified.json"


def read_verified(settings: Settings) -> dict:
    try:
        return json.loads(verified_path(settings).read_text())
    except (OSError, ValueError):
        return {}


def _new_backup(br: Backrest, kind: str) -> dict:
    """Take a pgBackRest backup of ``kind``; the new entry of ``pgbackrest info``."""
    before = {b["label"] for b in br.info()}
    br.checked(
        "backup",
        f"--type={kind}",
        what="the physical backup",
        state="unchanged (a backup only reads); pgBackRest keeps no partial backup as valid",
        next_command="invoke doctor   # is WAL archiving working?",
    )
    new = [b for b in br.info() if b["label"] not in before]
    if not new:
        raise OpsError("pgbackrest backup ended but no new backup is listed", state="unchanged")
    return new[-1]


def _record_verified(settings: Settings, label: str, ok: bool) -> dict:
    """Note pgbackrest verify's verdict on ``label`` in verified.json (0600); all verdicts."""
    verified = read_verified(settings)
    verified[label] = {"ok": ok, "at": audit.utcnow()}
    path = verified_path(settings)
    path.write_text(json.dumps(verified, indent=1))
    path.chmod(0o600)
    return verified


def physical_backup(settings: Settings, kind: str = "full", *, out: Out = print_note) -> dict:
    if kind not in BACKUP_TYPES:
        raise OpsError(
            f"--type={kind!r} is not one of {', '.join(BACKUP_TYPES)}",
            state="unchanged (nothing was touched)",
        )
    br = require_enabled(settings, "backup --physical")
    with Operation(settings, "backup-physical", warn=out) as op:
        t0 = time.monotonic()
        backup = _new_backup(br, kind)
        took = round(time.monotonic() - t0, 3)
        t1 = time.monotonic()
        done = br.run("verify")
        verify_s = round(time.monotonic() - t1, 3)
        verified = _record_verified(settings, backup["label"], done.returncode == 0)
        entry = describe(backup, verified)
        # duration_s (the lifecycle's) spans the backup and its verify; backup_s the backup
        op.finish(
            label=backup["label"],
            type=backup["type"],
            size=entry["size"],
            backup_s=took,
            verify_s=verify_s,
            verified=verified[backup["label"]]["ok"],
        )
    if done.returncode != 0:
        out(
            f"warning: pgbackrest verify failed (status {done.returncode}): "
            + " ".join(_lines(done)[-2:])
        )
    return {**entry, "duration_s": took, "verify_s": verify_s}


def describe(b: dict, verified: dict) -> dict:
    """One pgBackRest backup as `invoke backups` shows it."""
    stop = datetime.fromtimestamp(b["timestamp"]["stop"], UTC)
    start = datetime.fromtimestamp(b["timestamp"]["start"], UTC)
    v = verified.get(b["label"])
    return {
        "label": b["label"],
        "type": b["type"],
        "started_at": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "finished_at": stop.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wal_start": (b.get("archive") or {}).get("start"),
        "wal_stop": (b.get("archive") or {}).get("stop"),
        "lsn_start": (b.get("lsn") or {}).get("start"),
        "lsn_stop": (b.get("lsn") or {}).get("stop"),
        "size": (b.get("info") or {}).get("size"),
        "stored": ((b.get("info") or {}).get("repository") or {}).get("delta"),
        "verified": None if v is None else v["ok"],
        "error": b.get("error"),
    }


def list_physical(settings: Settings) -> list[dict] | None:
    """pgBackRest's backups of this stanza, newest first; None when PITR is not set up."""
    if settings.target != "local" or not enabled(settings):
        return None
    verified = read_verified(settings)
    return [describe(b, verified) for b in reversed(Backrest(settings).info())]


# --- invoke restore --to-time / --to-lsn / --before ---------------------------------------------
def lsn_value(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def audit_target(settings: Settings, ref: str) -> dict:
    """The migrate/rollback audit record ``ref`` names (its ts, or a revision it applied or
    undid: the newest such run) that holds the WAL position recorded before its first
    statement."""
    runs = [
        r
        for r in audit.read(settings, intents=False)
        if r.get("action") in ("migrate", "rollback") and r.get("database") == settings.database
    ]
    by_ts = [r for r in runs if r.get("ts") == ref]
    if not by_ts:
        by_ts = [
            r
            for r in runs
            if any(
                str(s.get("revision", "")).startswith(ref)
                for s in r.get("steps") or []
                if not s.get("skipped")
            )
            or any(str(k).startswith(ref) for k in (r.get("planned_revision_hashes") or {}))
        ]
    if not by_ts:
        raise OpsError(
            f"--before={ref}: no migrate or rollback of {settings.database} in the audit record "
            f"is that record (its ts) or ran that revision",
            state="unchanged (nothing was touched)",
            next_command=f"tail {settings.audit_log}   # each record's ts",
        )
    rec = by_ts[-1]
    if not rec.get("wal_lsn"):
        raise OpsError(
            f"--before={ref}: the {rec['action']} record of {rec['ts']} holds no WAL position "
            f"(recorded by dbops since point-in-time recovery, and only when the server could "
            f"say)",
            state="unchanged (nothing was touched)",
            next_command=f"invoke restore --to-time='{rec.get('ts')}'   # its record's time: "
            f"after the run, not before it; pick a time before",
        )
    return rec


def pick_backup(backups: list[dict], *, lsn: str | None, at: datetime | None) -> dict | None:
    """The newest backup that finished before the target (recovery starts from it)."""
    ok = []
    for b in backups:
        if b.get("error"):
            continue
        if lsn is not None and lsn_value(b["lsn"]["stop"]) <= lsn_value(lsn):
            ok.append(b)
        elif at is not None and b["timestamp"]["stop"] + 1 <= at.timestamp():
            ok.append(b)
    return ok[-1] if ok else None


def side_root(settings: Settings) -> Path:
    return folder(settings) / "side"


def leftover_sides(settings: Settings) -> list[dict]:
    """Side instances under the repo folder: kept on purpose (--keep-side) or left by an
    interrupted restore (running: a postmaster.pid in its data directory)."""
    root = side_root(settings)
    found = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not d.is_dir():
            continue
        meta = {}
        try:
            meta = json.loads((d / "side.json").read_text())
        except (OSError, ValueError):
            pass
        found.append(
            {
                "path": str(d),
                "kept": (d / KEEP_MARK).exists(),
                "running": (d / "data" / "postmaster.pid").exists(),
                "port": meta.get("port"),
                "target": meta.get("target"),
            }
        )
    return found


def pg_ctl_argv(settings: Settings, user: str, *args: str) -> list[str]:
    pg_ctl = os.path.join(pgbin.bindir(settings.pg_bindir) or "", "pg_ctl")
    return [*as_user(user), pg_ctl, *args]


def remove_side(settings: Settings, path: Path, user: str) -> None:
    if (path / "data" / "postmaster.pid").exists():
        subprocess.run(
            pg_ctl_argv(settings, user, "-D", str(path / "data"), "-m", "immediate", "-w", "stop"),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    shutil.rmtree(path, ignore_errors=True)


def sweep_sides(settings: Settings, user: str, out: Out) -> list[str]:
    removed = []
    for s in leftover_sides(settings):
        if not s["kept"]:
            remove_side(settings, Path(s["path"]), user)
            out(f"removed side instance {s['path']}, left by an interrupted restore")
            removed.append(s["path"])
    return removed


def wait_archived(agent: Agent) -> str:
    """Switch WAL and wait until the archiver has shipped the closed segment: everything
    committed before this call is then in the repository."""
    wal = agent.call("pitr.switch_wal")["wal"]
    deadline = time.monotonic() + ARCHIVE_WAIT_S
    while True:
        a = agent.call("pitr.facts")["archiver"]
        if (a.get("last_archived_wal") or "") >= wal:
            return wal
        if time.monotonic() > deadline:
            raise OpsError(
                f"WAL segment {wal} was not archived within {ARCHIVE_WAIT_S} s (last archived: "
                f"{a.get('last_archived_wal')}, last failure: {a.get('last_failed_wal')} at "
                f"{a.get('last_failed_time')})",
                state="unchanged (nothing was touched)",
                next_command="invoke doctor   # the archiving check names the failure",
            )
        time.sleep(0.5)


def _require_server_binaries(settings: Settings, facts: dict) -> None:
    """The side instance runs with this machine's server binaries: the live server's major."""
    server_major = int(facts["settings"]["server_version_num"]) // 10000
    bindir = pgbin.bindir(settings.pg_bindir)
    have = pgbin.version(bindir) if bindir else None
    if have is None or have[0] != server_major:
        raise OpsError(
            f"the side instance needs PostgreSQL {server_major}'s server binaries here; "
            f"{bindir or 'none found'} has {have[1] if have else 'none'}",
            state="unchanged (nothing was touched)",
            next_command="pg_config --bindir   # set DBOPS_PG_BINDIR to the server's bin folder",
        )


def _new_side_folder(settings: Settings, br: Backrest, target: dict) -> tuple[Path, int]:
    """A new side folder (0700, the server user's) with its data/ and side.json (its port and
    target, for doctor); returns (folder, a free port)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = side_root(settings) / f"{stamp}-{os.getpid()}"
    path.mkdir(mode=0o700, parents=True)
    _own(path, br.user)
    port = localpg.free_port()
    (path / "side.json").write_text(json.dumps({"port": port, "target": target["label"]}))
    (path / "data").mkdir(mode=0o700)
    _own(path / "data", br.user)
    return path, port


def _restore_into(br: Backrest, backup: dict, target: dict, data: Path) -> None:
    br.checked(
        "restore",
        f"--set={backup['label']}",
        f"--type={target['type']}",
        f"--target={target['value']}",
        *(["--target-exclusive"] if target.get("exclusive") else []),
        "--target-action=promote",
        "--archive-mode=off",
        f"--pg1-path={data}",
        what="pgbackrest restore into the side instance",
        state="the live database is untouched",
        next_command="invoke doctor",
    )


SIDE_FILES = {  # written when the restored data directory lacks them (a Debian cluster)
    "postgresql.conf": "# dbops side instance\n",
    "pg_hba.conf": "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    "pg_ident.conf": "",
}


def _side_config_files(data: Path, user: str) -> None:
    """A Debian cluster keeps its configuration files in /etc: the side instance gets its own."""
    for name, text in SIDE_FILES.items():
        if not (data / name).exists():
            (data / name).write_text(text)
            _own(data / name, user)


def _side_options(path: Path, port: int, facts: dict) -> str:
    """The side server's -o options: its port and socket folder, local only, no archiving, the
    live server's values a recovering server needs."""
    from dbops.agent.pitr import RECOVERY_MINIMUMS

    data = path / "data"
    minimums = {k: facts["settings"][k] for k in RECOVERY_MINIMUMS if k in facts["settings"]}
    return (
        f"-p {port} -k {path} -c listen_addresses=127.0.0.1 -c archive_mode=off "
        f"-c hba_file={data / 'pg_hba.conf'} -c ident_file={data / 'pg_ident.conf'} "
        f"-c data_directory={data} " + " ".join(f"-c {k}={v}" for k, v in minimums.items())
    )


def _start_side_server(settings: Settings, user: str, path: Path, opts: str) -> None:
    argv = pg_ctl_argv(
        settings,
        user,
        "-D",
        str(path / "data"),
        "-l",
        str(path / "log"),
        "-o",
        opts,
        "-w",
        "-t",
        "600",
        "start",
    )
    done = seam.run(seam.host(argv, quiet=settings.get("DBOPS_QUIET")), timeout=900)
    if done.returncode != 0:
        raise OpsError(
            "the side instance did not start (its log follows)",
            details=_log_tail(path / "log"),
            state="the live database is untouched",
            next_command="invoke doctor",
        )


def start_side(settings: Settings, br: Backrest, backup: dict, target: dict, facts: dict) -> dict:
    """pgbackrest restore into a new data directory, then start it on a free port, recovery
    until the target, promoted. Returns {"path", "port"}."""
    _require_server_binaries(settings, facts)
    path, port = _new_side_folder(settings, br, target)
    _restore_into(br, backup, target, path / "data")
    _side_config_files(path / "data", br.user)
    _start_side_server(settings, br.user, path, _side_options(path, port, facts))
    return {"path": path, "port": port}


def _log_tail(log: Path, n: int = 8) -> list[str]:
    try:
        return [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-n:]
    except OSError:
        return []


def wait_promoted(settings: Settings, side_settings: Settings, path: Path) -> None:
    """Until the side instance has replayed to the target and left recovery. Recovery that
    cannot reach the target stops the server: its log says why."""
    import psycopg

    deadline = time.monotonic() + 3600
    while True:
        if not (path / "data" / "postmaster.pid").exists():
            raise OpsError(
                "the side instance stopped during recovery (its log follows)",
                details=_log_tail(path / "log"),
                state="the live database is untouched",
                next_command="invoke backups   # pick another target within a physical backup's "
                "WAL range",
            )
        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=side_settings.port,
                user=settings.user,
                password=settings.password or None,
                dbname=settings.maintenance_db,
                connect_timeout=5,
            ) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise OpsError("the side instance did not finish recovery within an hour")
        time.sleep(0.5)


def resolve_target(
    settings: Settings, agent: Agent, to_time: str | None, to_lsn: str | None, before: str | None
) -> dict:
    given = [x for x in (to_time, to_lsn, before) if x]
    if len(given) != 1:
        raise OpsError(
            "give one of --to-time=T, --to-lsn=L, --before=AUDIT_TS_OR_REV",
            state="unchanged (nothing was touched)",
        )
    if to_lsn:
        if not LSN.fullmatch(to_lsn):
            raise OpsError(
                f"--to-lsn={to_lsn!r} is not a WAL position such as 0/3000060",
                state="unchanged (nothing was touched)",
            )
        return {"type": "lsn", "value": to_lsn.upper(), "label": f"lsn {to_lsn}", "lsn": to_lsn}
    if to_time:
        try:
            at = agent.call("pitr.parse_time", text=to_time)["at"]
        except AgentError as exc:
            raise OpsError(exc.message, state="unchanged (nothing was touched)") from None
        when = datetime.fromisoformat(at)
        return {"type": "time", "value": at, "label": f"time {at}", "at": when}
    rec = audit_target(settings, before)
    revision = "+".join(rec.get("from") or []) or "base"
    return {
        "type": "lsn",
        "value": rec["wal_lsn"],
        "exclusive": True,  # stop before the first record the run wrote
        "lsn": rec["wal_lsn"],
        "label": f"before the {rec['action']} of {rec['ts']} (at {revision}, WAL "
        f"{rec['wal_lsn']}, {rec.get('wal_at')})",
        "record": rec,
    }


def _refuse_future(target: dict, facts: dict, to_time: str | None) -> None:
    now = datetime.fromisoformat(facts["archiver"]["now"])
    if target.get("at") is not None and target["at"] > now:
        raise OpsError(
            f"--to-time={to_time}: {target['value']} is in the future (the server's "
            f"clock says {now.isoformat()})",
            state="unchanged (nothing was touched)",
        )


def _backup_for(br: Backrest, target: dict) -> dict:
    """The physical backup recovery to ``target`` starts from, or a clear refusal."""
    backups = br.info()
    backup = pick_backup(backups, lsn=target.get("lsn"), at=target.get("at"))
    if backup is None:
        raise OpsError(
            f"no physical backup finished before the target ({target['label']}): "
            + (
                f"the oldest finished {describe(backups[0], {})['finished_at']}"
                if backups
                else "there is none"
            ),
            state="unchanged (nothing was touched)",
            next_command="invoke backups   # the physical backups and their WAL ranges",
        )
    return backup


def _confirm_restore(settings: Settings, target: dict, backup: dict, *, yes: bool) -> None:
    confirm(
        settings,
        "\n".join(
            [
                f"Restore {settings.database} to {target['label']}:",
                f"  1. pgBackRest restores backup {backup['label']} into a side instance and "
                f"replays WAL to the target (the live server keeps running)",
                f"  2. a verified dump of its {settings.database} is restored into a new "
                f"database, checked, and swapped in by rename",
                f"  3. the current {settings.database} is kept as "
                f"{settings.database}_dbops_old_<time> (undo: invoke restore-undo)",
            ]
        ),
        yes=yes,
        expect=settings.database,
        state="unchanged (nothing was touched)",
        next_command=restore_command(target, "--yes"),
    )


def _side_settings(settings: Settings, port: int) -> Settings:
    """The live settings pointed at the side instance (no direct-connection overrides)."""
    return dataclasses.replace(
        settings,
        host="127.0.0.1",
        port=port,
        raw={k: v for k, v in settings.raw.items() if not k.startswith("DBOPS_DIRECT_")},
    )


def _dump_side(side_settings: Settings, warn: Out) -> dict:
    """A verified dbops backup (reason "pitr") of the side instance's database."""
    from dbops.ops import backup as backup_op

    with Agent(side_settings) as side_agent:
        side_agent.call("lock.acquire", purpose="backup")
        return backup_op.take_backup(side_settings, side_agent, "pitr", prune=False, warn=warn)


def _through_side(
    settings: Settings,
    br: Backrest,
    backup: dict,
    target: dict,
    facts: dict,
    *,
    keep_side: bool,
    out: Out,
    warn: Out,
) -> tuple[dict, dict, dict, dict]:
    """Side instance at the target, its dump, that dump restored over the live database; the
    side instance removed unless ``keep_side`` (also when a step fails). Returns
    (side, dump, the restore's result, timings)."""
    from dbops.ops import restore as restore_op

    side = None
    timings: dict = {}
    try:
        t1 = time.monotonic()
        side = start_side(settings, br, backup, target, facts)
        side_settings = _side_settings(settings, side["port"])
        wait_promoted(settings, side_settings, side["path"])
        timings["side_instance_s"] = round(time.monotonic() - t1, 3)
        out(f"side instance at {target['label']}: port {side['port']}, {side['path']}")
        t2 = time.monotonic()
        dump = _dump_side(side_settings, warn)
        timings["dump_s"] = round(time.monotonic() - t2, 3)
        out(f"dump of the side instance: {dump['path']}")
        t3 = time.monotonic()
        res = restore_op.restore(settings, dump["path"], yes=True, out=out, warn=warn)
        timings["restore_s"] = round(time.monotonic() - t3, 3)
    except BaseException:
        if side is not None and not keep_side:
            remove_side(settings, side["path"], br.user)
        raise
    if keep_side:
        (side["path"] / KEEP_MARK).write_text("kept by --keep-side\n")
    else:
        remove_side(settings, side["path"], br.user)
    return side, dump, res, timings


def _prepare_restore(
    settings: Settings,
    agent: Agent,
    br: Backrest,
    to_time: str | None,
    to_lsn: str | None,
    before: str | None,
    *,
    yes: bool,
) -> tuple[dict, dict, dict]:
    """The target, the server's facts and the physical backup to start from, confirmed;
    nothing is changed before this returns. Returns (target, facts, backup)."""
    target = resolve_target(settings, agent, to_time, to_lsn, before)
    facts = server_facts(agent, "restore")
    _refuse_future(target, facts, to_time)
    backup = _backup_for(br, target)
    _confirm_restore(settings, target, backup, yes=yes)
    return target, facts, backup


def restore_to(
    settings: Settings,
    *,
    to_time: str | None = None,
    to_lsn: str | None = None,
    before: str | None = None,
    yes: bool = False,
    keep_side: bool = False,
    out: Out = print_note,
    warn: Out = print_note,
) -> dict:
    """Restore the live database to a moment through a side instance (the module's doc); one
    "restore-pitr" audit record once confirmed: ok (target, physical backup, dump, timings),
    failed, interrupted."""
    br = require_enabled(settings, "restore")
    t0 = time.monotonic()
    with Agent(settings) as agent:
        target, facts, backup = _prepare_restore(
            settings, agent, br, to_time, to_lsn, before, yes=yes
        )
        record = {"target": target["label"], "physical_backup": backup["label"]}
        with Operation(settings, "restore-pitr", warn=warn, **record) as op:
            sweep_sides(settings, br.user, out)
            out(f"WAL archived through {wait_archived(agent)}")
            agent.close()  # the live database's session ends before the restore swaps it
            side, dump, res, timings = _through_side(
                settings, br, backup, target, facts, keep_side=keep_side, out=out, warn=warn
            )
            timings["total_s"] = round(time.monotonic() - t0, 3)
            op.finish(dump=dump["path"], old_database=res.get("old_database"), timings=timings)
    return {
        **res,
        "target": target["label"],
        "physical_backup": backup["label"],
        "dump": dump["path"],
        "side": side_info(settings, side, br.user) if keep_side else None,
        "pitr_timings": timings,
    }


def side_info(settings: Settings, side: dict, user: str) -> dict:
    data = side["path"] / "data"
    return {
        "path": str(side["path"]),
        "port": side["port"],
        "psql": shlex.join(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(side["port"]),
                "-U",
                settings.user,
                settings.database,
            ]
        ),
        "remove": shlex.join(pg_ctl_argv(settings, user, "-D", str(data), "-m", "fast", "stop"))
        + " && "
        + shlex.join(["rm", "-rf", str(side["path"])]),
    }


def restore_command(target: dict, *flags: str) -> str:
    if target["type"] == "time":
        arg = f"--to-time={target['value']}"
    elif "record" in target:
        arg = f"--before={target['record']['ts']}"
    else:
        arg = f"--to-lsn={target['value']}"
    return shlex.join(["invoke", "restore", arg, *flags])


# --- invoke doctor: the archiving check ---------------------------------------------------------
def _ago(ts: str | None, now: str | None) -> str:
    if not ts or not now:
        return "never"
    s = (datetime.fromisoformat(now) - datetime.fromisoformat(ts)).total_seconds()
    return (
        f"{s:.0f} s ago"
        if s < 120
        else f"{s / 60:.0f} min ago"
        if s < 7200
        else (f"{s / 3600:.1f} h ago")
    )


def _off_until_restart(s: Settings, st: dict, command: str):
    """The check when archiving is configured but archive_mode waits for a restart."""
    from dbops.ops.doctor_facts import WARN, Check

    data = Path(st["data_directory"])
    try:
        restart = restart_command(s, data, owner_of(data))
    except (OSError, OpsError):  # not on this machine, or not ours to run as its user
        restart = "restart the server"
    return Check(
        "archiving",
        WARN,
        "WAL archiving is configured but off until the server restarts (archive_mode)",
        [command],
        next=restart + "   # then: invoke pitr-enable (checks archiving)",
        why="archive_mode takes effect after a restart",
    )


def _is_failing(a: dict) -> bool:
    """Failures since the last success (pg_stat_archiver)."""
    return bool(a.get("failed_count")) and (
        not a.get("last_archived_time") or a["last_failed_time"] > a["last_archived_time"]
    )


def _last_archived(a: dict) -> str:
    if not a.get("last_archived_wal"):
        return "nothing archived yet"
    return f"last archived {a['last_archived_wal']} {_ago(a.get('last_archived_time'), a['now'])}"


def _failing(a: dict, command: str, configured: bool):
    from dbops.ops.doctor_facts import FAIL, Check

    return Check(
        "archiving",
        FAIL,
        f"WAL archiving is failing: {a.get('failed_count') or 0} failure(s), the last for "
        f"{a['last_failed_wal']} {_ago(a['last_failed_time'], a['now'])}; {_last_archived(a)}",
        [
            command,
            "the server's log has the command's error; until it works WAL piles up in "
            "pg_wal and no point-in-time restore can reach past the last archived segment",
        ],
        next="invoke pitr-enable --yes" if configured else "invoke psql -c 'SHOW archive_command'",
        why="WAL archiving is failing",
        data={"archiver": a},
    )


def _side_note(x: dict) -> str:
    return (
        f"side instance {x['path']} ({x['target']}, port {x['port']}, "
        f"{'running' if x['running'] else 'stopped'}): "
        + ("kept by --keep-side" if x["kept"] else "left by an interrupted restore")
    )


def _side_removal(s: Settings, x: dict) -> str:
    """The command that stops (when running) and removes the side instance ``x``."""
    stop_args = ("-D", str(Path(x["path"]) / "data"), "-m", "immediate", "stop")
    try:
        stop = shlex.join(pg_ctl_argv(s, owner_of(Path(x["path"])), *stop_args))
    except (OSError, OpsError):
        stop = shlex.join(["pg_ctl", *stop_args])
    return (
        (f"{stop}; " if x["running"] else "")
        + shlex.join(["rm", "-rf", x["path"]])
        + "   (or: the next point-in-time restore removes it)"
    )


def _working(s: Settings, a: dict, configured: bool):
    """Archiving works: OK, or WARN when interrupted restores left side instances."""
    from dbops.ops.doctor_facts import OK, WARN, Check

    sides = leftover_sides(s) if configured else []
    left = [x for x in sides if not x["kept"]]
    notes = [_side_note(x) for x in sides]
    last = _last_archived(a)
    if left:
        return Check(
            "archiving",
            WARN,
            f"WAL archiving works ({last}); {len(left)} side instance(s) left by an "
            f"interrupted point-in-time restore",
            notes,
            next=_side_removal(s, left[0]),
            why="a side instance takes disk (and a port while running)",
            data={"archiver": a, "sides": sides},
        )
    return Check(
        "archiving",
        OK,
        f"WAL archiving works: {last}; {a.get('archived_count')} archived since "
        f"{(a.get('stats_reset') or 'start')[:19]}",
        notes,
        data={"archiver": a, "sides": sides},
    )


def archiving(f):
    """WAL archiving (pg_stat_archiver): failing (failures since the last success: the
    archive_command and the fix), waiting for a restart, side instances left by interrupted
    point-in-time restores; quiet when archiving is off and dbops' PITR is not set up."""
    from dbops.ops.doctor_facts import UNKNOWN, Check

    s = f.settings
    configured = s.target == "local" and enabled(s)
    try:
        facts = f.agent.call("pitr.facts")
    except AgentError as exc:
        return (
            Check("archiving", UNKNOWN, f"cannot read pg_stat_archiver: {exc.message}")
            if configured
            else None
        )
    st, a = facts["settings"], facts["archiver"]
    on = st.get("archive_mode") in ("on", "always")
    pending = "archive_mode" in facts["pending_restart"]
    if not (on or configured or pending):
        return None
    command = f"archive_command: {st.get('archive_command') or '(empty)'}"
    if pending or not on:
        return _off_until_restart(s, st, command)
    if _is_failing(a):
        return _failing(a, command, configured)
    return _working(s, a, configured)
