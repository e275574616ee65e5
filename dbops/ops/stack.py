"""up / down: the compose stack, and readiness through pg_isready (not the healthcheck,
which some engines never run)."""

from __future__ import annotations

import time

from dbops import seam
from dbops.config import Settings
from dbops.errors import OpsError


def wait_ready(settings: Settings, timeout: float = 90.0) -> None:
    target = seam.target_for(settings)
    launch = target.pg(["pg_isready", "-q", "-t", "2"])  # host/port: the target's PG* environment
    deadline = time.monotonic() + timeout
    while seam.run(launch).returncode != 0:
        if time.monotonic() > deadline:
            raise OpsError(f"the database did not answer pg_isready within {timeout:.0f} s",
                           next_command=f"pg_isready -h {settings.host} -p {settings.port}"
                           if settings.target == "local"
                           else f"{' '.join(settings.compose)} logs {settings.db_service}")
        time.sleep(1)


def up(settings: Settings, build: bool = False) -> None:
    if settings.target == "local":
        wait_ready(settings, timeout=10)
        return
    target = seam.ComposeTarget(settings)
    target.ensure_available()
    if build and seam.run(target.compose("build", settings.backend_service),
                          capture=False).returncode != 0:
        raise OpsError(f"compose could not build the {settings.backend_service} image (its output is above)")
    if seam.run(target.compose("up", "-d", settings.db_service), capture=False).returncode != 0:
        raise OpsError("compose could not start the db service (its output is above)")
    wait_ready(settings)


def down(settings: Settings, volumes: bool = False) -> None:
    if settings.target == "local":
        raise OpsError("DBOPS_TARGET=local: the server is not ours to stop")
    target = seam.ComposeTarget(settings)
    target.ensure_available()
    if seam.run(target.compose("down", *(["-v"] if volumes else [])), capture=False).returncode != 0:
        raise OpsError("compose down failed (its output is above)")


def psql(settings: Settings, sql: str) -> int:
    """One SQL command on the target database, through the seam (psql next to the server)."""
    target = seam.target_for(settings)
    target.ensure_available()
    return seam.run(target.pg(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", sql]),
                    capture=False).returncode
