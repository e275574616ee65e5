"""invoke doctor (and recover) in the on-call states of issue 15, on real PostgreSQL: each test
plants the state, checks doctor's words and next command, RUNS that command (and the ones it
leads to) and ends on a healthy database with nothing lost."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dbops import catalog, localpg
from dbops.agent import lock
from tests.conftest import ROOT
from tests.fixtures.doctor import Doctor, run_next, split_next, start_standby
from tests.fixtures.projects import make_project

ALEMBIC = str(Path(sys.executable).parent / "alembic")
HEAD = "d93ad7974446"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("doctor-states-cache")


@pytest.fixture
def doc(invoke, cache):
    return Doctor(invoke, cache)


@pytest.fixture
def backend_copy(tmp_path):
    dst = tmp_path / "backend"
    shutil.copytree(ROOT / "backend", dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def healthy(rep: dict) -> None:
    assert rep["rc"] == 0 and rep["next"] == "nothing to do", (rep["next"], rep["checks"])


def users(conn) -> int:
    return conn.execute("SELECT count(*) FROM users").fetchone()[0]


def seed_user(conn) -> None:
    conn.execute("INSERT INTO users (username, email) VALUES ('keep', 'keep@x')")


# --- connection failures, by cause ---------------------------------------------------------------
def test_connection_refused(doc, invoke, ops_env):
    rep = doc(env={"POSTGRES_PORT": "1", "PGCONNECT_TIMEOUT": "2"})
    c = rep["by"]["connectivity"]
    assert rep["rc"] == 1 and c["status"] == "fail" and c["cause"] == "refused"
    assert rep["next"] == "pg_isready -h 127.0.0.1 -p 1"
    path = f"{ops_env['DBOPS_PG_BINDIR']}:{ops_env.get('PATH', '')}"
    done = subprocess.run(rep["next"].split(), capture_output=True, text=True, env={"PATH": path})
    assert done.returncode == 2 and "no response" in done.stdout  # nothing listens there


def test_wrong_password(doc, invoke, db_conn):
    invoke("migrate")
    rep = doc(env={"POSTGRES_PASSWORD": "not-the-password"})
    c = rep["by"]["connectivity"]
    assert c["cause"] == "auth" and "rejects role dbops" in c["summary"]
    assert "not-the-password" not in json.dumps(rep)
    assert rep["next"].startswith("invoke doctor   # after setting POSTGRES_USER/POSTGRES_PASSWORD")
    healthy(doc())  # the next command, with the right password in place


def test_a_roles_connection_limit_used_up(doc, invoke, pg_cluster, database, db_conn, ops_env):
    assert invoke("migrate").returncode == 0
    seed_user(db_conn)
    db_conn.execute("CREATE ROLE app_limited LOGIN PASSWORD 'pw-limited' CONNECTION LIMIT 3")
    db_conn.execute(sql.SQL("GRANT pg_read_all_data TO app_limited"))
    env = {"POSTGRES_USER": "app_limited", "POSTGRES_PASSWORD": "pw-limited"}
    idle = [
        psycopg.connect(
            host="127.0.0.1",
            port=pg_cluster.port,
            user="app_limited",
            password="pw-limited",
            dbname=database,
        )
        for _ in range(3)
    ]
    try:
        rep = doc(env=env)
        c = rep["by"]["connectivity"]
        assert (
            c["cause"] == "too_many"
            and "role app_limited has used up its connection limit" in c["summary"]
        )
        assert rep["next"].startswith(
            'POSTGRES_USER=<superuser> invoke psql -c "SELECT pg_terminate_backend(pid) FROM '
            "pg_stat_activity WHERE usename = 'app_limited' AND state = 'idle'"
        )
        done = run_next(
            invoke,
            rep,
            env={**env, "POSTGRES_PASSWORD": pg_cluster.password},
            superuser=pg_cluster.user,
        )
        assert done.returncode == 0, done.stderr
        # pg_terminate_backend signals; a loaded server's backends take a moment to go
        deadline = time.monotonic() + 60
        while (
            left := db_conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_limited'"
            ).fetchone()[0]
        ) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == 0
        rep = doc(env=env)
        assert rep["by"]["connectivity"]["status"] == "ok" and rep["next_check"] != "connectivity"
    finally:
        for c in idle:
            c.close()
        db_conn.execute("DROP OWNED BY app_limited")
        db_conn.execute("DROP ROLE app_limited")
    assert users(db_conn) == 1


def test_database_missing(doc, invoke, pg_cluster, ops_env):
    name = "t_doctor_missing"
    rep = doc(env={"POSTGRES_DB": name})
    c = rep["by"]["connectivity"]
    assert c["cause"] == "database_missing" and f"database {name} does not exist" in c["summary"]
    assert rep["next"].startswith(
        f"POSTGRES_DB=postgres invoke psql -c 'CREATE DATABASE {name}'   # if the name is right"
    )
    try:
        assert run_next(invoke, rep).returncode == 0
        rep = doc(env={"POSTGRES_DB": name})
        assert rep["next"] == "invoke migrate"
        assert invoke("migrate", env={"POSTGRES_DB": name}).returncode == 0
        healthy(doc(env={"POSTGRES_DB": name}))
    finally:
        with pg_cluster.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_read_only_database(doc, invoke, db_conn, database):
    assert invoke("migrate").returncode == 0
    seed_user(db_conn)
    db_conn.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
    rep = doc()
    c = rep["by"]["connectivity"]
    assert c["cause"] == "read_only" and "set on database" in c["summary"]
    assert rep["next"] == (
        f"invoke psql -c 'BEGIN READ WRITE; ALTER DATABASE {database} RESET "
        f"default_transaction_read_only; COMMIT'   # if nobody made it read-only "
        f"on purpose"
    )
    assert run_next(invoke, rep).returncode == 0
    healthy(doc())
    assert users(db_conn) == 1


def test_a_read_only_standby_as_the_target(doc, invoke):
    primary = localpg.new_cluster()  # under /tmp: the server's user must reach its folder
    try:
        primary.create_database("app")
        env = {**primary.env("app")}
        assert invoke("migrate", env=env).returncode == 0
        with primary.connect("app") as conn:
            seed_user(conn)
        standby = start_standby(primary, Path(tempfile.mkdtemp(prefix="dbops-standby-")))
        try:
            rep = doc(env={**env, "POSTGRES_PORT": str(standby.port)})
            c = rep["by"]["connectivity"]
            assert (
                c["cause"] == "standby" and "is a read-only standby (in recovery)" in c["summary"]
            )
            assert f"its primary: 127.0.0.1:{primary.port}" in c["summary"]
            assign, argv = split_next(rep["next"])
            assert assign == {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(primary.port)}
            assert argv == ["invoke", "doctor"]
            healthy(doc(env={**env, **assign}))
        finally:
            standby.destroy()
        with primary.connect("app") as conn:
            assert users(conn) == 1
    finally:
        primary.destroy()


# --- the dbops lock -------------------------------------------------------------------------------
def test_lock_held_by_another_deploy(doc, invoke, alembic_at, pg_cluster, database, db_conn):
    assert invoke("backup").returncode == 0
    alembic_at("1be15b655bdb")
    holder = pg_cluster.connect("postgres", application_name="dbops:migrate alice@deploy-2")
    holder.execute("SELECT pg_advisory_lock(%s, %s)", lock.lock_key(database))
    try:
        rep = doc()
        lk = rep["by"]["dbops lock"]
        assert lk["status"] == "warn" and rep["next_check"] == "dbops lock"
        pid = holder.info.backend_pid
        assert (
            f"a dbops migrate is running: pid {pid} 'dbops:migrate alice@deploy-2' "
            f"(migrate by alice@deploy-2" in lk["summary"]
        )
        assert rep["next"] == f"invoke doctor   # after the dbops migrate pid {pid} finishes"
    finally:
        holder.close()  # the other deploy ends
    rep = doc()  # the next command, once it has finished
    assert rep["next"] == "invoke migrate"
    assert invoke("migrate").returncode == 0
    healthy(doc())


# --- scratch databases left by killed runs -------------------------------------------------------
def test_a_killed_touched_set_runs_scratch_database(doc, invoke, pg_cluster, db_conn):
    """dbops_scratch_touched_… left by a migrate killed during its touched-set run: while a
    session is in it, doctor says it is in use and proposes nothing; once nobody is, doctor
    names it with what made it and the command that drops it, which leaves doctor healthy."""
    assert invoke("migrate").returncode == 0
    name = "dbops_scratch_touched_x"
    pg_cluster.create_database(name)
    try:
        with pg_cluster.connect(name, application_name="still-loading"):
            rep = doc()
            c = rep["by"]["scratch"]
            assert c["status"] == "ok" and rep["next"] == "nothing to do", (c, rep["next"])
            [line] = c["details"]
            assert line.startswith(f"{name} (") and line.endswith(
                "): in use by the touched-set run of a migrate (DBOPS_PREMIGRATE_BACKUP touched): "
                "1 session(s) connected (still-loading); leave it"
            ), line
        rep = doc()
        c = rep["by"]["scratch"]
        assert c["status"] == "warn" and rep["next_check"] == "scratch"
        assert c["summary"] == "1 scratch database(s) left on the server by killed dbops runs"
        assert (
            c["details"][0].startswith(f"{name} (")
            and "left by the touched-set run of a migrate "
            "(DBOPS_PREMIGRATE_BACKUP touched) that was killed"
            in c["details"][0]
        ), c["details"]
        assert rep["next"] == (
            f"invoke psql -c 'DROP DATABASE \"{name}\"'   # or: the next "
            f"touched-set run of its database sweeps it"
        )
        assert run_next(invoke, rep).returncode == 0
        assert not db_conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [name]
        ).fetchall()
        rep = doc()
        assert "scratch" not in rep["by"]
        healthy(rep)
    finally:
        with pg_cluster.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_scratch_database_held_by_a_running_operation_is_not_offered_for_dropping(
    doc, invoke, settings, db_conn
):
    """A restore test's scratch database while its agent runs: in use (its maker holds the lock
    on its name), never a DROP; once that agent is gone without dropping it: a leftover."""
    from dbops.agent_client import Agent

    assert invoke("migrate").returncode == 0
    agent = Agent(settings).__enter__()
    try:
        name = agent.call("restore.scratch")["name"]
        rep = doc()
        c = rep["by"]["scratch"]
        assert c["status"] == "ok" and rep["next"] == "nothing to do"
        assert "held by pid " in c["details"][0] and "DROP" not in c["details"][0], c
    finally:
        agent.__exit__(None, None, None)  # gone without dropping it, as a killed drill would be
    rep = doc()
    c = rep["by"]["scratch"]
    assert (
        c["status"] == "warn"
        and "invoke verify-backup --restore-test or invoke drill" in c["details"][0]
    )
    assert rep["next"] == f"invoke psql -c 'DROP DATABASE \"{name}\"'"
    assert run_next(invoke, rep).returncode == 0
    healthy(doc())


# --- revision history and the code ---------------------------------------------------------------
def test_two_rows_in_alembic_version(doc, invoke, db_conn, cache):
    assert invoke("migrate").returncode == 0
    seed_user(db_conn)
    db_conn.execute("INSERT INTO alembic_version VALUES ('23cd436768a8')")
    rep = doc()
    assert "alembic_version holds 2 rows" in rep["by"]["revision"]["summary"]
    assert rep["next"] == "invoke recover"
    done = invoke("recover", env={"DBOPS_CACHE_DIR": str(cache)})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "[extra rows]" in done.stdout and "23cd436768a8 lies below another row" in done.stdout
    assert done.stdout.splitlines()[-1] == "next: invoke recover --apply"
    done = invoke("recover", "--apply", "--yes", env={"DBOPS_CACHE_DIR": str(cache)})
    assert done.returncode == 0 and f"alembic_version is now {HEAD}" in done.stdout, done.stderr
    healthy(doc())
    assert users(db_conn) == 1


CONFLICT = "<<<<<<< HEAD\nMARK = 1\n=======\nMARK = 2\n>>>>>>> feature\n"


def test_unparsable_revision_file(doc, invoke, backend_copy, db_conn, cache):
    env = {"DBOPS_ALEMBIC_INI": str(backend_copy / "alembic.ini"), "DBOPS_CACHE_DIR": str(cache)}
    assert invoke("migrate", env=env).returncode == 0
    path = next((backend_copy / "alembic" / "versions").glob("23cd436768a8_*.py"))
    good = path.read_text()
    path.write_text(good.replace("from alembic import op", CONFLICT + "from alembic import op"))
    assert path.read_text() != good
    rep = doc(env=env)
    rf = rep["by"]["revision files"]
    assert rf["status"] == "fail" and rep["rc"] == 1
    assert f"{path.name}: merge-conflict markers at line(s)" in rf["summary"]
    assert (
        rep["next"] == f"${{EDITOR:-vi}} {path}   # resolve the merge-conflict markers; then: "
        f"invoke doctor"
    )
    done = invoke("recover", env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"error: the revision scripts cannot be read: {path}" in done.stderr
    assert "merge-conflict markers at line(s)" in done.stderr
    assert "database state: unchanged" in done.stderr
    assert f'next: "${{EDITOR:-vi}}" {path}' in done.stderr
    path.write_text(good)  # the markers resolved in the editor
    healthy(doc(env=env))


def test_database_ahead_of_the_code(doc, invoke, tmp_path, db_conn):
    ini = make_project(tmp_path, "flag")
    proj = ini.parent
    env = {"DBOPS_ALEMBIC_INI": str(ini)}
    git = ["git", "-C", str(proj), "-c", "user.name=t", "-c", "user.email=t@x"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "release 2: comments.flagged"], check=True)
    assert invoke("migrate", env=env).returncode == 0
    seed_user(db_conn)
    # the older release is deployed again: its checkout lacks a1f1a9000001
    rev_file = next((proj / "alembic" / "versions").glob("a1f1a9000001_*.py"))
    rev_file.unlink()
    shutil.copy(ROOT / "backend" / "app" / "models" / "comment.py", proj / "app" / "models")
    subprocess.run([*git, "commit", "-qam", "back to release 1"], check=True)
    rep = doc(env=env)
    s = rep["by"]["schema"]
    assert rep["rc"] == 1 and s["status"] == "fail" and s["ahead_of_code"] == ["a1f1a9000001"]
    assert "the database is AHEAD of this code" in s["summary"]
    assert rep["next"].startswith("git log --all --oneline -S a1f1a9000001   # find the commit")
    assert not any(w in rep["next"] for w in ("restore", "drop", "stamp"))
    _, argv = split_next(rep["next"])
    found = subprocess.run([*git, *argv[1:]], capture_output=True, text=True, check=True).stdout
    commit = next(ln.split()[0] for ln in found.splitlines() if "release 2" in ln)
    subprocess.run([*git, "checkout", "-q", commit, "--", "."], check=True)  # that code again
    healthy(doc(env=env))
    assert users(db_conn) == 1


def test_models_differ_from_the_migrations(doc, invoke, backend_copy, db_conn):
    ini = backend_copy / "alembic.ini"
    env = {"DBOPS_ALEMBIC_INI": str(ini)}
    assert invoke("migrate", env=env).returncode == 0
    seed_user(db_conn)
    model = backend_copy / "app" / "models" / "tag.py"
    model.write_text(
        model.read_text().replace(
            "    name: str = Field(max_length=50, unique=True)\n",
            "    name: str = Field(max_length=50, unique=True)\n"
            "    colour: str | None = Field(default=None, max_length=7)\n",
        )
    )
    rep = doc(env=env)
    m = rep["by"]["models"]
    assert m["status"] == "fail" and any("add_column" in d and "colour" in d for d in m["details"])
    assert rep["next_check"] == "models"
    assign, argv = split_next(rep["next"], **{"describe the change": "add tags.colour"})
    assert argv[:4] == ["alembic", "-c", str(ini), "revision"]
    done = subprocess.run(
        [ALEMBIC, *argv[1:]],
        capture_output=True,
        text=True,
        cwd=backend_copy,
        env={**invoke.env, **env},
    )
    assert done.returncode == 0, done.stderr
    assert invoke("migrate", env=env).returncode == 0
    healthy(doc(env=env))
    assert users(db_conn) == 1


# --- backups --------------------------------------------------------------------------------------
def test_another_databases_backup_does_not_count(doc, invoke, pg_cluster, ops_env):
    other = "t_doctor_other"
    pg_cluster.create_database(other)
    try:
        assert invoke("backup", env={"POSTGRES_DB": other}).returncode == 0
        assert invoke("migrate", "--no-backup").returncode == 0
        rep = doc()
        b = rep["by"]["backups"]
        assert b["summary"].startswith(f"no verified backup of {ops_env['POSTGRES_DB']} in ")
        assert rep["next"] == "invoke backup"
        assert run_next(invoke, rep).returncode == 0
        healthy(doc())
    finally:
        with pg_cluster.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {other} WITH (FORCE)")


def test_interrupted_backup_leaves_a_partial(doc, invoke, ops_env, database, db_conn):
    assert invoke("migrate").returncode == 0
    seed_user(db_conn)
    folder = Path(ops_env["DBOPS_BACKUP_DIR"])
    partial = folder / f".{catalog.slug(database)}.2026-01-01T000000Z.{HEAD}.manual.dump.partial"
    partial.write_bytes(b"PGDMP" + b"\0" * 100)
    rep = doc()
    b = rep["by"]["backups"]
    assert b["status"] == "warn" and "1 interrupted (.partial)" in b["summary"]
    assert any(partial.name in d and "left by an interrupted backup" in d for d in b["details"])
    assert rep["next"] == "invoke backup"
    assert run_next(invoke, rep).returncode == 0
    assert not partial.exists()
    healthy(doc())
    assert users(db_conn) == 1


def test_backup_truncated_after_its_manifest(doc, invoke, ops_env, db_conn):
    assert invoke("migrate", "--no-backup").returncode == 0
    seed_user(db_conn)
    done = invoke("backup")
    dump = Path(next(ln.split()[1] for ln in done.stdout.splitlines() if ln.startswith("backup: ")))
    size = dump.stat().st_size
    with open(dump, "r+b") as fh:
        fh.truncate(size // 2)
    rep = doc()
    b = rep["by"]["backups"]
    assert b["summary"].startswith(f"no verified backup of {ops_env['POSTGRES_DB']}")
    assert any(
        d.startswith(
            f"{dump.name}: DAMAGED, cannot be restored: size {size // 2} bytes "
            f"differs from the manifest's {size} (truncated)"
        )
        for d in b["details"]
    )
    assert rep["next"] == "invoke backup"
    assert run_next(invoke, rep).returncode == 0
    rep = doc()
    assert rep["next"].startswith(
        f"rm -- {dump} {catalog.manifest_path(dump)}   # a newer verified"
    )
    assign, argv = split_next(rep["next"])
    subprocess.run(argv, check=True)
    healthy(doc())
    assert users(db_conn) == 1


def test_a_killed_restores_new_copy_is_named_and_dropped(
    doc, invoke, pg_cluster, db_conn, database
):
    """<db>_dbops_restoring_… left by a restore killed before its swap: in use while a session
    loads it; then named with the command that drops it (or the next restore sweeps it), and
    doctor ends healthy with the live database untouched."""
    assert invoke("migrate").returncode == 0
    seed_user(db_conn)
    name = f"{database}_dbops_restoring_20260101T000000Z"
    pg_cluster.create_database(name)
    try:
        with pg_cluster.connect(name, application_name="pg_restore"):
            rep = doc()
            c = rep["by"]["scratch"]
            assert c["status"] == "ok" and rep["next"] == "nothing to do", (c, rep["next"])
            assert "in use by invoke restore of" in c["details"][0], c["details"]
            assert "1 session(s) connected; leave it" in c["details"][0]
        rep = doc()
        c = rep["by"]["scratch"]
        assert c["status"] == "warn" and rep["next_check"] == "scratch", c
        assert c["details"][0].startswith(f"{name} (") and (
            f"left by invoke restore of {database} (its new copy, before the swap) that was killed"
            in c["details"][0]
        ), c["details"]
        assert rep["next"] == (
            f"invoke psql -c 'DROP DATABASE \"{name}\"'   # or: the next invoke restore of this "
            f"database sweeps it"
        )
        assert run_next(invoke, rep).returncode == 0
        assert not db_conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [name]
        ).fetchall()
        healthy(doc())
        assert db_conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
    finally:
        with pg_cluster.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
