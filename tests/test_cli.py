"""The `dbops` console command on a project of its own (dbops/cli.py), and how any entry
point finds the Alembic project: alembic.ini from the working directory upward, relative
paths from where they were written, a refusal — never the sample app — when there is none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dbops.cli import project_folder
from dbops.config import find_alembic_ini, load_settings, no_project_message
from dbops.errors import ConfigError
from dbops.seam import target_for
from tests.conftest import ROOT

ENV_PY = """
import os
from alembic import context
from sqlalchemy import create_engine, pool

def run_migrations_online():
    engine = create_engine(os.environ["DATABASE_URL"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()

def run_migrations_offline():
    context.configure(url=os.environ["DATABASE_URL"], literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
"""

REVISION = """
from alembic import op
import sqlalchemy as sa

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None

def upgrade():
    op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True))

def downgrade():
    op.drop_table("{table}")
"""


def foreign_project(root: Path) -> Path:
    """A small Alembic project no one here wrote: alembic.ini at its root, env.py reading
    DATABASE_URL, two revisions, no models."""
    project = root / "shop"
    versions = project / "migrations" / "versions"
    versions.mkdir(parents=True)
    (project / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    (project / "migrations" / "env.py").write_text(ENV_PY)
    (project / "migrations" / "script.py.mako").write_text("")
    for rev, down, table in (("aaa1", None, "orders"), ("bbb2", "aaa1", "invoices")):
        (versions / f"{rev}.py").write_text(REVISION.format(rev=rev, down=down, table=table))
    return project


def project_env(ops_env: dict[str, str]) -> dict[str, str]:
    """The operator's environment with nothing saying where the project or its backups are."""
    return {
        k: v
        for k, v in ops_env.items()
        if k not in ("DBOPS_ALEMBIC_INI", "DBOPS_BACKUP_DIR", "DBOPS_ENV_FILE")
    }


def test_alembic_ini_is_found_from_the_working_directory_upward(tmp_path):
    project = foreign_project(tmp_path)
    inner = project / "migrations" / "versions"
    found, searched = find_alembic_ini(inner)
    assert found == project / "alembic.ini"
    assert searched == (inner, inner.parent, project)
    assert project_folder(inner) == project
    settings = load_settings(
        project_folder(inner), environ={"POSTGRES_USER": "u", "POSTGRES_DB": "d"}, cwd=inner
    )
    assert settings.alembic_ini == project / "alembic.ini"
    assert settings.backup_dir == project / "backups"
    assert settings.get("DBOPS_CACHE_DIR") == project / ".dbops" / "cache"
    assert settings.get("DBOPS_SQUAWK_ACCEPT") == project / "squawk-accept.toml"


def test_with_no_project_found_a_task_refuses_naming_where_it_looked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    settings = load_settings(
        empty,
        environ={"POSTGRES_USER": "u", "POSTGRES_DB": "d", "DBOPS_TARGET": "local"},
        cwd=empty,
    )
    assert settings.alembic_ini is None  # not the sample app of the dbops checkout
    with pytest.raises(ConfigError) as caught:
        target_for(settings).agent()
    assert caught.value.message == no_project_message(settings)
    assert f"no alembic.ini in {empty} nor any folder above it" in caught.value.message
    assert "DBOPS_ALEMBIC_INI" in caught.value.message and "--ini" in caught.value.message


def test_relative_paths_are_taken_from_where_they_were_written(tmp_path):
    """From the environment: the working directory; from a .env file: its folder; never the
    dbops checkout (`DBOPS_ALEMBIC_INI=backend/alembic.ini` picked the sample app)."""
    project = foreign_project(tmp_path)
    work = tmp_path / "work"
    (work / "backend").mkdir(parents=True)
    base = {"POSTGRES_USER": "u", "POSTGRES_DB": "d", "DBOPS_ENV_FILE": str(tmp_path / "none")}
    from_env = load_settings(
        ROOT, environ={**base, "DBOPS_ALEMBIC_INI": "backend/alembic.ini"}, cwd=work
    )
    assert from_env.alembic_ini == work / "backend" / "alembic.ini"
    (project / ".env").write_text("DBOPS_ALEMBIC_INI=alembic.ini\nDBOPS_BACKUP_DIR=./bk\n")
    from_file = load_settings(
        ROOT, environ={**base, "DBOPS_ENV_FILE": str(project / ".env")}, cwd=work
    )
    assert from_file.alembic_ini == project / "alembic.ini"
    assert from_file.backup_dir == project / "bk"


def dbops(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dbops.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_dbops_migrates_and_reads_the_project_of_the_working_directory(tmp_path, ops_env):
    project = foreign_project(tmp_path)
    env = project_env(ops_env)
    done = dbops("migrate", cwd=project, env=env)
    assert done.returncode == 0, done.stderr
    header = done.stderr.splitlines()[0]
    assert f"alembic.ini {project / 'alembic.ini'}" in header
    assert f"database {ops_env['POSTGRES_DB']}" in header
    backups = list((project / "backups").glob("*.dump"))
    assert backups, "the pre-migrate backup goes under the project"
    done = dbops("current", cwd=project / "migrations", env=env)
    assert done.returncode == 0, done.stderr
    assert "bbb2" in done.stdout


def test_dbops_in_a_folder_without_a_project_refuses_and_changes_nothing(
    tmp_path, ops_env, db_conn
):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    done = dbops("migrate", cwd=empty, env=project_env(ops_env))
    assert done.returncode == 1
    assert "no Alembic project" in done.stderr and str(empty) in done.stderr
    tables = db_conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    ).fetchone()[0]
    assert tables == 0
    assert not (empty / "backups").exists()  # refused before any backup


def test_the_console_script_is_declared():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dbops"] == "dbops.cli:main"
