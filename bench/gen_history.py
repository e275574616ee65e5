"""Generate a linear Alembic history of N revisions (tables, columns, indexes) in a directory.

    python bench/gen_history.py DIR N

Writes DIR/alembic.ini, DIR/alembic/env.py and DIR/alembic/versions/*.py. Revision i (1-based)
cycles through: create a table; add a column to the newest table; create an index on it.
The env.py reads POSTGRES_HOST/PORT/USER/PASSWORD/DB (else DATABASE_URL) like the sample
backend's. Generated projects live in a temporary directory: never commit them.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

INI = """[alembic]
script_location = %(here)s/alembic
path_separator = os

[loggers]
keys = root,alembic
[handlers]
keys = console
[formatters]
keys = generic
[logger_root]
level = WARNING
handlers = console
[logger_alembic]
level = INFO
handlers =
qualname = alembic
[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic
[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""

ENV = """import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import URL, create_engine, pool

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def url():
    e = os.environ
    if e.get("POSTGRES_USER") and e.get("POSTGRES_DB"):
        return URL.create("postgresql+psycopg", username=e["POSTGRES_USER"],
                          password=e.get("POSTGRES_PASSWORD") or None,
                          host=e.get("POSTGRES_HOST") or "127.0.0.1",
                          port=int(e.get("POSTGRES_PORT") or 5432), database=e["POSTGRES_DB"])
    return e["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)


if context.is_offline_mode():
    context.configure(url=url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
"""

REV = '''"""{message}

Revision ID: {rev}
Revises: {down}
"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down_repr}
branch_labels = None
depends_on = None


def upgrade():
{upgrade}


def downgrade():
{downgrade}
'''


def rev_id(i: int) -> str:
    return hashlib.sha1(f"bench-{i}".encode()).hexdigest()[:12]


def step(i: int) -> tuple[str, str, str]:
    """(message, upgrade body, downgrade body) of revision i (1-based)."""
    t = f"t{(i - 1) // 3 + 1:03d}"
    kind = (i - 1) % 3
    if kind == 0:
        return (
            f"create table {t}",
            f'    op.create_table("{t}",\n'
            f'        sa.Column("id", sa.Integer(), primary_key=True),\n'
            f'        sa.Column("name", sa.String(length=50), nullable=False),\n'
            f'        sa.Column("created_at", sa.DateTime(timezone=True), '
            f'server_default=sa.text("now()"), nullable=False))',
            f'    op.drop_table("{t}")',
        )
    if kind == 1:
        return (
            f"add {t}.note",
            f'    op.add_column("{t}", sa.Column("note", sa.Text(), nullable=True))',
            f'    op.drop_column("{t}", "note")',
        )
    return (
        f"index {t}.name",
        f'    op.create_index("ix_{t}_name", "{t}", ["name"])',
        f'    op.drop_index("ix_{t}_name", table_name="{t}")',
    )


def generate(root: Path, n: int) -> Path:
    """Write the project; returns its alembic.ini."""
    versions = root / "alembic" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (root / "alembic.ini").write_text(INI)
    (root / "alembic" / "env.py").write_text(ENV)
    down = None
    for i in range(1, n + 1):
        rev = rev_id(i)
        message, up, dn = step(i)
        (versions / f"{i:03d}_{rev}.py").write_text(
            REV.format(
                message=message,
                rev=rev,
                down=down or "",
                down_repr=repr(down),
                upgrade=up,
                downgrade=dn,
            )
        )
        down = rev
    return root / "alembic.ini"


if __name__ == "__main__":
    print(generate(Path(sys.argv[1]), int(sys.argv[2])))
