"""Schema state and migrations: current, history, heads, migrate."""

from __future__ import annotations

import json

from invoke import task

from dbops.ops import migrate as migrate_op
from dbops.ops import status as status_op
from dbops.tasks import guarded, settings


@task(help={"json": "print the full status as JSON (for scripts)"})
@guarded
def current(c, json_=False):
    """Show the database's revision, the heads, and what is pending."""
    st = status_op.read_status(settings(c))
    print(json.dumps(st, indent=2) if json_ else status_op.format_current(st))


@task
@guarded
def history(c):
    """List every revision, oldest first, marking what is applied."""
    print(status_op.format_history(status_op.read_status(settings(c))))


@task
@guarded
def heads(c):
    """List the script directory's heads (more than one: how to merge)."""
    print(status_op.format_heads(status_op.read_status(settings(c))))


@task(help={"to": "target revision (default: head)"})
@guarded
def migrate(c, to="head"):
    """Upgrade the database (default: to head), then verify the revision it reached."""
    res = migrate_op.migrate(settings(c), to=to)
    if res["before"] == res["after"]:
        print(f"nothing to do: already at {status_op.label(res['after'])}")
    print(f"verified: database is at {status_op.label(res['after'])} (target {to})")


TASKS = [current, history, heads, migrate]
