"""Foreign Alembic projects (tests/projects/<shape>/): dbops on env.py files it did not write.

After every read-only or scratch step (doctor, rehearse, recover) the live database's version
row, schema fingerprint and row counts are what they were: the connection guard
(dbops/agent/guard.py) stops an env.py that connects anywhere else before its first statement.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dbops.agent.fingerprint import collect, digest
from dbops.config import load_settings
from tests.conftest import ROOT

PROJECTS = ROOT / "tests" / "projects"


def live_url(pg_cluster, database: str) -> str:
    return (
        f"postgresql+psycopg://{pg_cluster.user}:{pg_cluster.password}"
        f"@127.0.0.1:{pg_cluster.port}/{database}"
    )


def copy_shape(tmp_path: Path, shape: str, url: str) -> Path:
    """tests/projects/<shape> (and _common) under tmp_path, alembic.ini's @LIVE_URL@ filled
    in; returns the copy's alembic.ini."""
    dest = tmp_path / "projects"
    for name in ("_common", shape):
        shutil.copytree(PROJECTS / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    ini = dest / shape / "alembic.ini"
    ini.write_text(ini.read_text().replace("@LIVE_URL@", url.replace("%", "%%")))
    return ini


def version_of(conn) -> list[str]:
    """The version rows, wherever the shape keeps them."""
    for table in ("public.alembic_version", "meta.myapp_version"):
        if conn.execute("SELECT to_regclass(%s)", [table]).fetchone()[0] is not None:
            return sorted(r[0] for r in conn.execute(f"SELECT version_num FROM {table}"))
    return []


def state(conn) -> dict:
    """What no read-only or scratch step may change: version rows, schema, row counts."""
    counts = {}
    for schema, name in conn.execute(
        "SELECT schemaname, relname FROM pg_stat_user_tables ORDER BY 1, 2"
    ).fetchall():
        counts[f"{schema}.{name}"] = conn.execute(
            f'SELECT count(*) FROM "{schema}"."{name}"'
        ).fetchone()[0]
    return {"version": version_of(conn), "schema": digest(collect(conn)), "rows": counts}


@pytest.fixture
def shape_env(pg_cluster, database, ops_env, tmp_path, monkeypatch):
    """make(shape) -> settings for the local target on that project; the live URL is also in
    DATABASE_URL and MYAPP_DB_URL (as the application's own environment would have it)."""

    def make(shape: str, **extra: str):
        url = live_url(pg_cluster, database)
        ini = copy_shape(tmp_path, shape, url)
        env = {
            **ops_env,
            **SHAPE_SETTINGS.get(shape, {}),
            **extra,
            "DBOPS_ALEMBIC_INI": str(ini),
            "DBOPS_CACHE_DIR": str(tmp_path / "cache"),
            "DATABASE_URL": url,
            "MYAPP_DB_URL": url,
        }
        for k, v in env.items():  # the agent inherits them; alembic() below reads them too
            if k.startswith(("POSTGRES_", "DATABASE_URL", "MYAPP_")):
                monkeypatch.setenv(k, v)
        return load_settings(ROOT, environ=env), env

    return make


@pytest.fixture
def live(pg_cluster, database):
    with pg_cluster.connect(database) as conn:
        yield conn


def alembic(ini: Path, how: str, rev: str) -> None:
    """alembic in this process; the projects' own modules (models, settings: one name, several
    projects) are forgotten before and after."""
    import sys

    from alembic import command
    from alembic.config import Config

    for name in ("models", "settings"):
        sys.modules.pop(name, None)
    try:
        getattr(command, how)(Config(str(ini)), rev)
    finally:
        for name in ("models", "settings"):
            sys.modules.pop(name, None)


# Shapes dbops aims at a scratch database by construction, and the one it cannot follow.
FOLLOWED = [
    "database_url",
    "postgres_vars",
    "ini_url",
    "async_ini",
    "attributes",
    "schemas",
    "version_table",  # with DBOPS_VERSION_TABLE=meta.myapp_version (SHAPE_SETTINGS)
    "inspecting",  # revisions that inspect the database and migrate rows in Python
    "extension",  # revisions creating extensions (citext, pg_trgm) and using their types
    "filters",  # include_name/include_object leave out a table on purpose; compare_* on
]
REFUSED = ["custom_var"]
# Follows only the first database it is aimed at in a process: doctor's probe (two scratch
# databases in turn) names it; rehearse and recover, whose first env.py run is on scratch, work.
CACHED = ["settings_cached"]
ALL = FOLLOWED + REFUSED + CACHED
# What the project's own .env would say for dbops to follow it.
SHAPE_SETTINGS = {
    "version_table": {"DBOPS_VERSION_TABLE": "meta.myapp_version"},
    "filters": {"DBOPS_MODELS_IGNORE": "table:legacy_audit"},  # what env.py's filters leave out
}
REVS = {"schemas": ["s1", "s2"], "inspecting": ["i1", "i2", "i3"], "extension": ["e1", "e2", "e3"]}
COMMON_REVS = ["a1", "b2", "c3"]


def revs(shape: str) -> list[str]:
    return REVS.get(shape, COMMON_REVS)


def seed(live, shape: str) -> None:
    if shape == "filters":  # a table the database has on purpose, outside the models
        live.execute("CREATE TABLE legacy_audit (id bigint PRIMARY KEY, note text)")
        live.execute("INSERT INTO legacy_audit VALUES (1, 'kept')")
    if shape == "schemas":
        live.execute("INSERT INTO app.accounts (email) VALUES ('a@x.org'), ('b@x.org')")
    else:
        live.execute("INSERT INTO authors (name) VALUES ('Le Guin'), ('Lem')")


@pytest.fixture
def at_first(shape_env, live):
    """make(shape): the live database at the shape's first revision, with rows; its settings."""

    def make(shape: str):
        settings, env = shape_env(shape)
        alembic(settings.alembic_ini, "upgrade", revs(shape)[0])
        seed(live, shape)
        return settings

    return make


def refused(exc) -> None:
    assert exc.kind == "wrong_database", exc.message
    assert "env.py connected to database" in exc.message
    assert "config.attributes.get('connection')" in exc.message
    assert "README: Your own project" in exc.message
    if hasattr(exc, "next_command"):  # the host's AgentError (the agent's own has neither)
        assert exc.next_command.startswith("invoke doctor")
        assert exc.state.startswith("unchanged")


@pytest.mark.parametrize("shape", ALL)
def test_doctor_is_read_only_and_says_whether_env_py_follows(shape, at_first, live):
    from dbops.ops import doctor as doctor_op

    settings = at_first(shape)
    before = state(live)
    rep = doctor_op.doctor(settings)
    assert state(live) == before
    by = {c["name"]: c for c in rep["checks"]}
    if shape in REFUSED + CACHED:
        assert by["isolation"]["status"] == "fail", by["isolation"]
        assert "env.py connected to database" in by["isolation"]["details"][0]
        assert "could not build the expected schemas" in by["schema"]["summary"]
        assert rep["next_check"] == "isolation"
        assert rep["next"].endswith("# README: Your own project; then: invoke doctor")
    else:
        assert by["isolation"]["status"] == "ok", by["isolation"]
        assert by["schema"]["status"] == "ok", by["schema"]
        assert rep["pending"] == revs(shape)[1:] and rep["next"] == "invoke migrate"


@pytest.mark.parametrize("shape", ALL)
def test_rehearse_runs_on_the_copy_only(shape, at_first, live):
    from dbops.agent_client import AgentError
    from dbops.ops import rehearse as rehearse_op

    settings = at_first(shape)
    before = state(live)
    lines: list[str] = []
    if shape in REFUSED:
        with pytest.raises(AgentError) as err:
            rehearse_op.rehearse(settings, source="fresh", out=lines.append)
        refused(err.value)
    elif shape in CACHED:  # follows whichever database env.py first ran on in the agent:
        try:  # the copy (it rehearses) or the live one (the guard refuses); never live changed
            rehearse_op.rehearse(settings, source="fresh", out=lines.append)
        except AgentError as exc:
            refused(exc)
    else:
        rep = rehearse_op.rehearse(settings, source="fresh", out=lines.append)
        assert rep["complete"], rep["revisions"]
        assert [r["revision"] for r in rep["revisions"]] == revs(shape)[1:]
    assert state(live) == before


@pytest.mark.parametrize("shape", ALL)
def test_recover_builds_its_expected_schemas_on_scratch(shape, at_first, live):
    from dbops.agent_client import AgentError
    from dbops.ops import recover as recover_op

    settings = at_first(shape)
    before = state(live)
    notes: list[str] = []
    if shape in REFUSED:
        with pytest.raises(AgentError) as err:
            recover_op.recover(settings, use_cache=False, warn=notes.append)
        refused(err.value)
    else:
        rep = recover_op.recover(settings, use_cache=False, warn=notes.append)
        assert [m["revision"] for m in rep["matches"]] == [revs(shape)[0]], rep
    assert state(live) == before


@pytest.mark.parametrize("shape", FOLLOWED + REFUSED + CACHED)
def test_migrate_still_migrates_the_live_database(shape, at_first, live):
    from dbops.ops import migrate as migrate_op

    settings = at_first(shape)
    rows = state(live)["rows"]
    lines: list[str] = []
    rep = migrate_op.migrate(settings, out=lines.append, warn=lines.append)
    assert version_of(live) == [revs(shape)[-1]], rep
    after = state(live)["rows"]
    assert {k: v for k, v in after.items() if k in rows} == rows


def test_a_version_table_dbops_was_not_told_of_is_refused_with_the_setting(shape_env, live):
    """env.py keeps the revision in meta.myapp_version; dbops is left at alembic_version: the
    migrate is refused when env.py configures (before any statement of a revision), naming the
    setting, and the live database keeps its revision and rows."""
    from dbops.errors import OpsError
    from dbops.ops import migrate as migrate_op

    settings, _ = shape_env("version_table", DBOPS_VERSION_TABLE="alembic_version")
    alembic(settings.alembic_ini, "upgrade", "a1")
    seed(live, "version_table")
    before = state(live)
    lines: list[str] = []
    with pytest.raises(OpsError) as err:
        migrate_op.migrate(settings, out=lines.append, warn=lines.append)
    said = err.value.render()
    assert "env.py keeps the revision in meta.myapp_version" in said, said
    assert "set DBOPS_VERSION_TABLE=meta.myapp_version in .env" in said, said
    assert err.value.state.startswith("unchanged (env.py was stopped at context.configure")
    assert err.value.next_command.startswith("echo DBOPS_VERSION_TABLE=meta.myapp_version >>")
    assert state(live) == before


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_guard_stops_a_connection_before_its_first_statement(
    kind, pg_cluster, database, live, monkeypatch
):
    """In-process: an engine env.py might make (sync, or async through run_sync) aimed at the
    live database while a step expects another one is refused at connect time, before any
    statement of its caller (and before the dialect's own first queries), and closed."""
    import asyncio

    from sqlalchemy import create_engine, event, text
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import create_async_engine

    from dbops.agent import guard

    for k, v in pg_cluster.env(database).items():
        monkeypatch.setenv(k, v)
    other = f"{database}_other"
    pg_cluster.create_database(other)
    url = live_url(pg_cluster, database)
    statements: list[str] = []

    def count(conn, cursor, statement, *a):
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        with pytest.raises(guard.WrongDatabase) as err, guard.expecting(other, "a scratch step"):
            if kind == "sync":
                with create_engine(url).connect() as c:
                    c.execute(text("CREATE TABLE should_not_exist (x int)"))
            else:

                async def main():
                    eng = create_async_engine(url)
                    async with eng.connect() as c:
                        await c.execute(text("CREATE TABLE should_not_exist (x int)"))

                asyncio.run(main())
    finally:
        event.remove(Engine, "before_cursor_execute", count)
        with pg_cluster.connect() as m:
            m.execute(f'DROP DATABASE "{other}" WITH (FORCE)')
    assert statements == []
    refused(err.value)
    assert f"database {database!r}" in err.value.message and repr(other) in err.value.message
    assert live.execute("SELECT to_regclass('should_not_exist')").fetchone()[0] is None
    # a connection that reaches the expected database passes; kept in the engine's pool (an
    # engine env.py made at import), it is checked again when a later step expects another
    engine = create_engine(url)
    with guard.expecting(database, "a live step"), engine.connect() as c:
        assert c.execute(text("SELECT current_database()")).scalar() == database
    pg_cluster.create_database(other)
    try:
        with pytest.raises(guard.WrongDatabase), guard.expecting(other, "a scratch step"):
            with engine.connect() as c:
                c.execute(text("CREATE TABLE should_not_exist (x int)"))
    finally:
        engine.dispose()
        with pg_cluster.connect() as m:
            m.execute(f'DROP DATABASE "{other}" WITH (FORCE)')
    assert live.execute("SELECT to_regclass('should_not_exist')").fetchone()[0] is None


def test_a_scratch_step_that_changed_live_fails_loudly(pg_cluster, database, live, monkeypatch):
    """The read-back after a scratch step (guard.live_unchanged): a change to the live
    database's schema or version row fails with kind live_changed, whatever the step raised."""
    from dbops.agent import guard
    from dbops.agent.protocol import AgentFailure

    for k, v in pg_cluster.env(database).items():
        monkeypatch.setenv(k, v)
    with guard.live_unchanged("a read-only step"):
        live.execute("SELECT 1")
    with pytest.raises(AgentFailure) as err, guard.live_unchanged("a scratch step"):
        live.execute("CREATE TABLE leaked (x int)")
        raise RuntimeError("the step's own failure")
    assert err.value.kind == "live_changed"
    assert f"the LIVE database {database} changed: its schema changed" in err.value.message
    live.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    with pytest.raises(AgentFailure) as err, guard.live_unchanged("a scratch step"):
        live.execute("INSERT INTO alembic_version VALUES ('a1')")
    assert "its version rows went from ['base'] to ['a1']" in err.value.message


@pytest.mark.parametrize("password", ["p%40ss", "a%b@c:d/e#f g'h\"i\\j"])
def test_the_url_dbops_sets_survives_configparser(password, tmp_path, monkeypatch):
    """sqlalchemy.url in the Config of a step: % escaped for configparser, so env.py reads the
    URL back exactly, with the project's own driver."""
    from alembic.config import Config
    from sqlalchemy.engine import make_url

    from dbops.agent import guard

    for k, v in {
        "POSTGRES_HOST": "db.example",
        "POSTGRES_PORT": "6543",
        "POSTGRES_USER": "u",
        "POSTGRES_PASSWORD": password,
        "POSTGRES_DB": "live",
    }.items():
        monkeypatch.setenv(k, v)
    ini = tmp_path / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = x\nsqlalchemy.url = postgresql+asyncpg://h/d\n")
    cfg = guard.aim(Config(str(ini)), "dbops_scratch_x")
    url = make_url(cfg.get_main_option("sqlalchemy.url"))
    assert url.password == password and url.database == "dbops_scratch_x"
    assert url.drivername == "postgresql+asyncpg" and (url.host, url.port) == ("db.example", 6543)


def test_expected_schemas_as_an_agents_first_request(at_first, live):
    """recover.expected first in its agent (no live connection opened before the scratch one
    is pointed at): the read-back still reads the live database, by name."""
    from dbops.agent_client import Agent

    settings = at_first("database_url")
    before = state(live)
    with Agent(settings) as agent:
        steps = agent.call("recover.expected")["steps"]
    assert [s["revision"] for s in steps] == [None, *COMMON_REVS]
    assert state(live) == before


def test_migrate_refuses_an_env_py_aimed_at_another_database(shape_env, live, pg_cluster, database):
    """The live steps are guarded too: env.py (MYAPP_DB_URL) aimed at another database than the
    one dbops backed up and locked is stopped before its first statement; neither changes."""
    import os

    from dbops.errors import OpsError
    from dbops.ops import migrate as migrate_op

    settings, _ = shape_env("custom_var")
    alembic(settings.alembic_ini, "upgrade", "a1")
    other = f"{database}_staging"
    pg_cluster.create_database(other)
    os.environ["MYAPP_DB_URL"] = live_url(pg_cluster, other)  # restored by shape_env's monkeypatch
    before = state(live)
    lines: list[str] = []
    try:
        with pytest.raises(OpsError) as err:
            migrate_op.migrate(settings, out=lines.append, warn=lines.append)
        with pg_cluster.connect(other) as c:
            assert state(c)["rows"] == {} and version_of(c) == []  # nothing ran there either
    finally:
        with pg_cluster.connect() as m:
            m.execute(f'DROP DATABASE "{other}" WITH (FORCE)')
    assert f"env.py connected to database '{other}'" in err.value.message
    assert f"dbops meant database '{database}'" in err.value.message
    assert err.value.state == "before migrate: a1; now: a1"  # read from the database
    assert state(live) == before


def test_rollback_plan_traces_downgrades_on_the_copy_only(at_first, live):
    """The rollback plan runs the downgrades on a schema-only copy to see what they destroy:
    an env.py that does not follow dbops' target (MYAPP_DB_URL, aimed at the live database)
    is stopped there before its first statement, the plan says it cannot tell what the
    downgrades destroy, and --yes alone refuses: the live database is unchanged."""
    from dbops.errors import OpsError
    from dbops.ops import rollback as rollback_op

    settings = at_first("custom_var")
    alembic(settings.alembic_ini, "upgrade", COMMON_REVS[-1])
    before = state(live)
    lines: list[str] = []
    with pytest.raises(OpsError):
        rollback_op.rollback(
            settings, COMMON_REVS[0], yes=True, out=lines.append, warn=lines.append
        )
    plan = "\n".join(lines)
    assert "cannot tell what it destroys (the downgrade trace of a rollback plan: env.py" in plan
    assert "stopped before its first statement" in plan
    assert state(live) == before
