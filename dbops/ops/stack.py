"""up / down / psql: what the target runs (compose: the db service; local: nothing, the
server is checked), through the seam."""

from __future__ import annotations

from dbops import seam, sqltext
from dbops.config import Settings


def up(settings: Settings, build: bool = False) -> None:
    seam.target_for(settings).up(build=build)


def down(settings: Settings, volumes: bool = False) -> None:
    seam.target_for(settings).down(volumes=volumes)


def psql(settings: Settings, sql: str) -> int:
    """One SQL statement on the target database, through the seam (psql next to the server):
    several statements or a psql meta-command are refused before anything runs."""
    sqltext.one_statement(sql)
    target = seam.target_for(settings)
    target.ensure_available()
    return seam.run(
        target.pg(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", sql]), capture=False
    ).returncode
