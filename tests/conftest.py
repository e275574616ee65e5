"""Real PostgreSQL for every test: one throwaway cluster per session (as the `postgres`
user when the suite runs as root), a fresh database per test."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from psycopg import sql

from dbops import localpg, pgbin
from dbops.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = ROOT / "backend" / "alembic.ini"


def offline_settings(tmp_path: Path, invoke_config: dict | None = None, **environ: str):
    """Settings for user u on database d from ``environ`` alone (no .env file, no server
    needed): for tests of what is derived from the settings."""
    base = {"DBOPS_ENV_FILE": str(tmp_path / "none"), "POSTGRES_USER": "u", "POSTGRES_DB": "d"}
    return load_settings(ROOT, invoke_config, environ={**base, **environ})


def pytest_report_header():
    """Which PostgreSQL this run tests (scripts/test --pg=N or DBOPS_PG_BINDIR choose it)."""
    b = pgbin.bindir()
    server, dump = (pgbin.version(b), pgbin.version(b, "pg_dump")) if b else (None, None)
    other = ", ".join(str(m) for m in pgbin.installed_majors())
    return (
        f"PostgreSQL server {server[1] if server else '?'}, pg_dump {dump[1] if dump else '?'} "
        f"({b}); majors installed for cross-major tests: {other or 'none'}"
    )


# The files that take longest (measured: --durations, one worker under load), run first: with
# scripts/test's --dist loadfile --no-loadscope-reorder a worker takes files in this order, so
# no long file starts last while the other worker idles (xdist's own reorder, by test count,
# put these few-but-slow files at the end).
SLOW_FIRST = (
    "test_fleet.py",
    "test_lifecycle_faults.py",
    "test_service.py",
    "test_runbook.py",
    "test_doctor_states.py",
    "test_rollback.py",
    "test_rehearse.py",
    "test_pitr.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


@pytest.fixture(scope="session")
def pg_cluster():
    cluster = localpg.new_cluster()
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def pg_major(pg_cluster) -> int:
    with pg_cluster.connect() as conn:
        return conn.info.server_version // 10000


@pytest.fixture(scope="session")
def cluster_of():
    """cluster_of(major): a throwaway cluster of another installed major (one per major and
    session), or a skip that says how to install it."""
    made: dict[int, localpg.Cluster] = {}

    def get(major: int) -> localpg.Cluster:
        if major not in made:
            folder = pgbin.installed_majors().get(major)
            if folder is None:
                pytest.skip(
                    f"PostgreSQL {major} is not installed here "
                    f"(python scripts/lib/pg_majors.py bindir {major})"
                )
            made[major] = localpg.new_cluster(bindir=folder)
        return made[major]

    yield get
    for cluster in made.values():
        cluster.destroy()


@pytest.fixture
def database(pg_cluster):
    name = f"t_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(name)
    yield name
    with pg_cluster.connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        # a scratch database a test left (a killed run's, on purpose): doctor names every one
        # on the server, so it must not reach the next test's report
        for (left,) in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, 'dbops_scratch_')"
        ).fetchall():
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(left))
            )


@pytest.fixture(scope="session")
def recover_cache(tmp_path_factory):
    """DBOPS_CACHE_DIR shared by the session: recover's and doctor's expected schemas are
    built once per revision chain (the cache key includes every revision file's hash)."""
    return tmp_path_factory.mktemp("recover-cache")


@pytest.fixture
def ops_env(pg_cluster, database, tmp_path):
    """The environment of an operator using the local target against `database`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTGRES_", "DBOPS_", "PG", "DATABASE_URL"))
    }
    env.update(pg_cluster.env(database))
    env.update(
        {
            "DBOPS_TARGET": "local",
            "DBOPS_ENV_FILE": str(tmp_path / "no.env"),
            "DBOPS_BACKUP_DIR": str(tmp_path / "backups"),
            "DBOPS_ALEMBIC_INI": str(ALEMBIC_INI),
        }
    )
    return env


@pytest.fixture
def settings(ops_env):
    return load_settings(ROOT, environ=ops_env)


@pytest.fixture
def db_conn(pg_cluster, database):
    with pg_cluster.connect(database) as conn:
        yield conn


class InvokeRunner:
    def __init__(self, env: dict[str, str]):
        self.env = env

    def __call__(
        self, *args: str, env: dict | None = None, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )


class InProcessInvoke(InvokeRunner):
    """`invoke …` in this process (tests/fixtures/inprocess.py): same argv, environment and
    working directory, output caught from fds 1 and 2; the CompletedProcess a subprocess gives."""

    def __call__(
        self, *args: str, env: dict | None = None, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        from tests.fixtures.inprocess import run_invoke

        return run_invoke(
            args, env={**self.env, **(env or {})}, cwd=ROOT, input=input, timeout=timeout
        )


@pytest.fixture
def invoke(ops_env, request):
    """Run `invoke …` as an operator would; returns the CompletedProcess (text). In this
    process; a test marked `cli` (the CLI smoke and fault layer) gets a real subprocess, and
    so does every test with DBOPS_TEST_INVOKE=cli (to tell a fixture difference from a bug)."""
    if request.node.get_closest_marker("cli") or os.environ.get("DBOPS_TEST_INVOKE") == "cli":
        return InvokeRunner(ops_env)
    return InProcessInvoke(ops_env)


@pytest.fixture
def invoke_cli(ops_env):
    """`invoke …` in a subprocess, always: for what needs a process of its own."""
    return InvokeRunner(ops_env)


# --- pytest-alembic -------------------------------------------------------
@pytest.fixture
def alembic_config():
    return {"file": str(ALEMBIC_INI)}


@pytest.fixture
def alembic_engine(pg_cluster, database, ops_env, monkeypatch):
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    for k, v in ops_env.items():
        if k.startswith("POSTGRES_"):
            monkeypatch.setenv(k, v)
    monkeypatch.chdir(ALEMBIC_INI.parent)
    url = (
        f"postgresql+psycopg://{pg_cluster.user}:{pg_cluster.password}"
        f"@127.0.0.1:{pg_cluster.port}/{database}"
    )
    engine = create_engine(url, poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def alembic_at(ops_env, monkeypatch):
    """Run alembic in-process against the test database (no dbops, no backup)."""
    from alembic import command
    from alembic.config import Config

    for k, v in ops_env.items():
        if k.startswith("POSTGRES_"):
            monkeypatch.setenv(k, v)

    def at(rev, how="upgrade", ini=ALEMBIC_INI):
        getattr(command, how)(Config(str(ini)), rev)

    return at


@pytest.fixture
def create_all(pg_cluster, monkeypatch):
    """Give a database the models' schema the other way: SQLModel.metadata.create_all, never
    alembic (other OIDs, other column order; no alembic_version)."""

    def build(dbname: str) -> None:
        monkeypatch.syspath_prepend(str(ROOT / "backend"))
        for k, v in pg_cluster.env(dbname).items():
            monkeypatch.setenv(k, v)
        from sqlalchemy import create_engine
        from sqlmodel import SQLModel

        import app.models  # noqa: F401
        from app.core.config import database_url

        eng = create_engine(database_url())
        SQLModel.metadata.create_all(eng)
        eng.dispose()

    return build
