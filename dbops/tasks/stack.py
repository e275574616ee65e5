"""The compose stack: up, down."""

from __future__ import annotations

import json as _json

from invoke import Exit, task

from dbops import config
from dbops.ops import stack
from dbops.tasks import guarded, settings


@task(help={"build": "build the backend image first (alembic and the agent run in it)"})
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


@task(
    help={
        "command": "the SQL to run: exactly one statement (several, or a psql backslash "
        "command, are refused; BEGIN …; one statement; COMMIT is allowed)"
    }
)
@guarded
def psql(c, command):
    """Run one SQL statement on the target database (psql next to the server)."""
    code = stack.psql(settings(c), command)
    if code:
        raise Exit(code=code)


@task(name="settings", help={"json": "machine-readable output"})
@guarded
def show_settings(c, json=False):
    """Show every setting: its value (password masked), where it came from, what it means."""
    rows = config.describe(settings(c))
    if json:
        print(_json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        source = "" if r["source"] == "default" else f"   [{r['source']}]"
        print(f"{r['name']:<{width}}  {r['value'] or '-'}{source}")
