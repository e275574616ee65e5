"""dbops: back up, migrate, verify, recover and roll back a PostgreSQL schema managed
by Alembic. `invoke --list` is the table of contents; RUNBOOK.md has the procedures."""

from pathlib import Path

from invoke import Collection

from dbops.tasks import backups, recovery, schema, stack

ns = Collection()
for module in (stack, schema, backups, recovery):
    for t in module.TASKS:
        ns.add_task(t)
ns.configure({"dbops": {"project_dir": str(Path(__file__).resolve().parent)}})
