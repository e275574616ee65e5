"""dbops: back up, migrate, verify, recover and roll back a PostgreSQL schema managed
by Alembic. `invoke --list` is the table of contents; RUNBOOK.md has the procedures."""

from pathlib import Path

from dbops.tasks import namespace

ns = namespace()
ns.configure({"dbops": {"project_dir": str(Path(__file__).resolve().parent)}})
