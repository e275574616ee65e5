"""The compose stack: up, down."""

from __future__ import annotations

from invoke import task

from dbops.ops import stack
from dbops.tasks import guarded, settings


@task(help={"build": "rebuild the images first"})
@guarded
def up(c, build=False):
    """Start the db service and wait until pg_isready answers."""
    s = settings(c)
    stack.up(s, build=build)
    print(f"ready: {s.database} ({s.target})")


@task(help={"volumes": "also delete the database volume (ALL DATA)"})
@guarded
def down(c, volumes=False):
    """Stop the compose stack (data is kept unless --volumes)."""
    stack.down(settings(c), volumes=volumes)


TASKS = [up, down]
