"""Where this machine's PostgreSQL client/server binaries are."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path


@cache
def bindir(configured: str = "") -> str | None:
    """DBOPS_PG_BINDIR, else ``pg_config --bindir``, else the newest /usr/lib/postgresql/N/bin."""
    if configured:
        return configured
    if os.environ.get("DBOPS_PG_BINDIR"):
        return os.environ["DBOPS_PG_BINDIR"]
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and os.path.isfile(os.path.join(out.stdout.strip(), "pg_ctl")):
            return out.stdout.strip()
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if found:
        return found[-1]
    return os.path.dirname(shutil.which("pg_dump")) if shutil.which("pg_dump") else None


def path_with_bindir(configured: str = "", path: str | None = None) -> str:
    path = os.environ.get("PATH", "") if path is None else path
    b = bindir(configured)
    return f"{b}{os.pathsep}{path}" if b else path


def cache_root() -> Path:
    """Where scripts/lib/pg_majors.py keeps PostgreSQL majors from registries (DBOPS_PG_CACHE).
    As root the server runs as `postgres`, which cannot read root's home: a system folder."""
    if os.environ.get("DBOPS_PG_CACHE"):
        return Path(os.environ["DBOPS_PG_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/dbops/pg")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dbops" / "pg"


def version(folder: str | Path, tool: str = "postgres") -> tuple[int, str] | None:
    """(major, "17.10") of ``folder/tool --version``; None when it does not run."""
    try:
        out = subprocess.run(
            [os.path.join(folder, tool), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version(out)


# pg_restore 17 and newer send SET transaction_timeout, which servers before 17 reject (and with
# --exit-on-error, or psql's ON_ERROR_STOP, that ends the restore): docs/postgres-majors.md.
SENDS_TRANSACTION_TIMEOUT = 17


def parse_version(text: str | None) -> tuple[int, str] | None:
    """(major, "17.10") of a tool's ``--version`` line ("pg_restore (PostgreSQL) 17.10 …")."""
    m = re.search(r"\(PostgreSQL\) ((\d+)(?:\.\d+)?)", text or "")
    return (int(m.group(2)), m.group(1)) if m else None


def installed_majors() -> dict[int, str]:
    """major -> bindir with a server and client tools at least as new: the registry cache's
    ``<major>/bin`` folders (scripts/lib/pg_majors.py) and Debian's /usr/lib/postgresql/N/bin.
    Installs nothing."""
    found: dict[int, str] = {}
    candidates = glob.glob("/usr/lib/postgresql/*/bin") + glob.glob(str(cache_root() / "*" / "bin"))
    for folder in candidates:
        server, dump = version(folder), version(folder, "pg_dump")
        if (
            server
            and dump
            and dump[0] >= server[0]
            and os.path.exists(os.path.join(folder, "initdb"))
        ):
            found.setdefault(server[0], folder)
    return dict(sorted(found.items()))


def newer_dump_warning(pg_dump_version: str, server_version: str, server_major: int) -> str | None:
    """The warning for a backup taken by pg_dump 17+ of a server before 17, or None. Such a
    backup is verified (it reads back in full) but no pg_restore restores it into the server it
    came from: an older pg_restore cannot read its archive, pg_restore 17+ sends SET
    transaction_timeout. Said when the backup is taken, not first at the 3 a.m. restore."""
    dump = parse_version(pg_dump_version)
    if not dump or not server_major < SENDS_TRANSACTION_TIMEOUT <= dump[0]:
        return None
    return (
        f"warning: pg_dump {dump[1]} is newer than the server (PostgreSQL {server_version}): "
        f"this backup restores into PostgreSQL {dump[0]}+ only, into this server only by hand "
        f"(docs/postgres-majors.md); back up with pg_dump {server_major} "
        f"(DBOPS_PG_BINDIR=$(python scripts/lib/pg_majors.py bindir {server_major}))"
    )
