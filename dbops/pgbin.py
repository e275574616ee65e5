"""Where this machine's PostgreSQL client/server binaries are."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from functools import cache


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
