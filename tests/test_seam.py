"""How commands are launched: compose vs local. Construction only (behaviour is tested
against real PostgreSQL elsewhere)."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from dbops.config import load_settings
from dbops.errors import OpsError
from dbops.seam import PACKAGE_DIR, ComposeTarget, LocalTarget, host, run, target_for
from tests.conftest import ROOT

SECRET = "s3cr3t-Pa55"


def make(tmp_path, **env):
    base = {
        "DBOPS_ENV_FILE": str(tmp_path / "none"),
        "POSTGRES_USER": "app",
        "POSTGRES_DB": "shop",
        "POSTGRES_PASSWORD": SECRET,
        "POSTGRES_HOST": "db.internal",
        "POSTGRES_PORT": "6543",
    }
    return load_settings(ROOT, environ={**base, **env})


def test_compose_pg_tool_runs_in_db_service_without_tty(tmp_path):
    t = target_for(
        make(
            tmp_path,
            DBOPS_TARGET="compose",
            DBOPS_COMPOSE="docker-compose",
            DBOPS_DB_SERVICE="postgres",
        )
    )
    launch = t.pg(["pg_dump", "--format=custom"])
    assert launch.argv == [
        "docker-compose",
        "exec",
        "-T",
        "-e",
        "PGUSER=app",
        "-e",
        "PGDATABASE=shop",
        "postgres",
        "pg_dump",
        "--format=custom",
    ]
    assert launch.cwd == ROOT
    assert SECRET not in " ".join(launch.argv)
    assert launch.env["POSTGRES_PASSWORD"] == SECRET  # for compose's interpolation only


def test_compose_agent_runs_in_backend_service_with_the_agent_mounted(tmp_path):
    t = target_for(
        make(
            tmp_path,
            DBOPS_TARGET="compose",
            DBOPS_COMPOSE="podman-compose",
            DBOPS_BACKEND_SERVICE="api",
            DBOPS_BACKEND_ALEMBIC_INI="db/alembic.ini",
        )
    )
    launch = t.agent()
    assert launch.argv[:4] == ["podman-compose", "run", "--rm", "-T"]
    assert f"{PACKAGE_DIR}:/opt/dbops/dbops:ro" in launch.argv
    assert launch.argv[-6:] == ["api", "python", "-m", "dbops.agent", "--ini", "db/alembic.ini"]
    assert SECRET not in " ".join(launch.argv)


def test_compose_command_is_configurable(tmp_path):
    t = target_for(make(tmp_path, DBOPS_TARGET="compose", DBOPS_COMPOSE="docker compose"))
    assert t.pg(["psql"]).argv[:3] == ["docker", "compose", "exec"]


def test_local_runs_the_same_argv_with_the_password_in_the_environment(tmp_path):
    t = target_for(
        make(tmp_path, DBOPS_TARGET="local", DBOPS_ALEMBIC_INI=str(ROOT / "backend/alembic.ini"))
    )
    assert isinstance(t, LocalTarget)
    launch = t.pg(["pg_dump", "--format=custom"])
    assert launch.argv == ["pg_dump", "--format=custom"]
    assert launch.env["PGPASSWORD"] == SECRET
    assert (launch.env["PGHOST"], launch.env["PGPORT"], launch.env["PGDATABASE"]) == (
        "db.internal",
        "6543",
        "shop",
    )
    agent = t.agent()
    assert agent.argv[:3] == [sys.executable, "-m", "dbops.agent"]
    assert SECRET not in " ".join(agent.argv)
    assert agent.cwd == ROOT / "backend"


def test_display_masks_secrets(tmp_path):
    t = ComposeTarget(make(tmp_path, DBOPS_TARGET="compose"))
    launch = t.pg(["psql", "-c", f"select '{SECRET}'"])
    assert SECRET not in launch.display and "****" in launch.display


def test_password_with_url_special_characters_survives(tmp_path):
    t = target_for(make(tmp_path, DBOPS_TARGET="local", POSTGRES_PASSWORD="p@ss:w/rd#1"))
    from sqlalchemy.engine import make_url

    assert make_url(t.pg(["true"]).env["DATABASE_URL"]).password == "p@ss:w/rd#1"


def test_how_to_reach_the_database_is_the_targets_answer(tmp_path):
    assert (
        target_for(make(tmp_path, DBOPS_TARGET="local")).reach_hint()
        == "pg_isready -h db.internal -p 6543"
    )
    compose = target_for(
        make(
            tmp_path, DBOPS_TARGET="compose", DBOPS_COMPOSE="podman-compose", DBOPS_DB_SERVICE="pg"
        )
    )
    assert compose.reach_hint() == "invoke up"
    assert compose.not_ready_hint() == "podman-compose logs pg"


def test_local_down_refuses_and_local_up_waits_for_the_server(ops_env):
    local = target_for(load_settings(ROOT, environ=ops_env))
    with pytest.raises(OpsError, match="not ours to stop"):
        local.down()
    local.up()  # the session's cluster answers pg_isready
    closed = target_for(load_settings(ROOT, environ={**ops_env, "POSTGRES_PORT": "1"}))
    with pytest.raises(OpsError, match="did not answer pg_isready within 0 s") as raised:
        closed.wait_ready(timeout=0)
    assert raised.value.next_command == f"pg_isready -h {ops_env['POSTGRES_HOST']} -p 1"


def test_host_commands_are_announced_unless_quiet(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("DBOPS_QUIET", "1")  # the process environment is not what decides
    done = run(host(["echo", "hello"], cwd=tmp_path))
    assert done.returncode == 0 and done.stdout == b"hello\n"
    assert "$ echo hello" in capfd.readouterr().err
    run(host(["echo", "hello"], quiet=True))
    assert capfd.readouterr().err == ""


def test_dbops_quiet_comes_from_the_settings_env_file_included(tmp_path, capfd, monkeypatch):
    from tests.conftest import offline_settings

    monkeypatch.delenv("DBOPS_QUIET", raising=False)
    env_file = tmp_path / "project.env"
    env_file.write_text("DBOPS_QUIET=1\n")
    quiet = offline_settings(tmp_path, DBOPS_ENV_FILE=str(env_file), DBOPS_TARGET="local")
    run(target_for(quiet).pg(["true"]))
    assert capfd.readouterr().err == ""
    run(target_for(offline_settings(tmp_path, DBOPS_TARGET="local")).pg(["true"]))
    assert "$ true" in capfd.readouterr().err


@pytest.mark.parametrize("host", ["db.example", "::1", "/var/run/postgresql"])
def test_database_url_round_trips_through_sqlalchemy(tmp_path, host):
    """DATABASE_URL is built without importing sqlalchemy; sqlalchemy must read it back exactly."""
    from sqlalchemy.engine import make_url

    t = target_for(
        make(
            tmp_path,
            DBOPS_TARGET="local",
            POSTGRES_USER="u s@r",
            POSTGRES_PASSWORD="p w%d?",
            POSTGRES_DB="d b/1",
            POSTGRES_HOST=host,
            POSTGRES_PORT="6543",
        )
    )
    u = make_url(t.pg(["true"]).env["DATABASE_URL"])
    assert (u.username, u.password, u.database) == ("u s@r", "p w%d?", "d b/1")
    assert (
        (u.host, u.port) == (host, 6543)
        if not host.startswith("/")
        else u.query == {"host": host, "port": "6543"}
    )


def test_compose_up_builds_starts_the_db_service_and_waits_with_pg_isready(tmp_path, monkeypatch):
    """Command construction: a stand-in compose records what up/down run."""
    log = tmp_path / "calls"
    fake = tmp_path / "fake-compose"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    monkeypatch.setattr(ComposeTarget, "_checked", False)
    t = target_for(
        make(
            tmp_path,
            DBOPS_TARGET="compose",
            DBOPS_COMPOSE=str(fake),
            DBOPS_DB_SERVICE="pg",
            DBOPS_BACKEND_SERVICE="api",
        )
    )
    t.up(build=True)
    t.down(volumes=True)
    calls = log.read_text().splitlines()
    assert calls[0] == "ps -q"  # the engine answers
    assert calls[1:3] == ["build api", "up -d pg"]
    assert calls[3].startswith("exec -T -e PGUSER=app -e PGDATABASE=shop pg pg_isready")
    assert calls[4:] == ["down -v"]
    assert SECRET not in log.read_text()


COMPOSE_V1 = shutil.which("docker-compose")


@pytest.mark.skipif(not COMPOSE_V1, reason="docker-compose (v1) not installed")
def test_a_compose_file_compose_refuses_is_named_as_such_not_as_a_missing_engine(
    tmp_path, monkeypatch
):
    """The README's quick start failed with 'no container engine answers' when the cause was
    the project: a bare DBOPS_BACKUP_DIR that compose read as an undeclared named volume."""
    (tmp_path / "docker-compose.yml").write_text(
        "services:\n  db:\n    image: postgres:15\n    volumes:\n      - backups:/backups\n"
    )
    monkeypatch.setattr(ComposeTarget, "_checked", False)
    settings = load_settings(
        tmp_path,
        environ={
            "DBOPS_ENV_FILE": str(tmp_path / "none"),
            "POSTGRES_USER": "app",
            "POSTGRES_DB": "shop",
            "DBOPS_TARGET": "compose",
            "DBOPS_COMPOSE": COMPOSE_V1,
            "PATH": os.environ["PATH"],
        },
    )
    with pytest.raises(OpsError) as caught:
        target_for(settings).ensure_available()
    message = str(caught.value.message)
    assert "compose refuses the project" in message and "no container engine" not in message
    assert "backups:/backups" in message and "must start with ./ or /" in message
    assert "config -q" in message
