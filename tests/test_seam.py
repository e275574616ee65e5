"""How commands are launched: compose vs local. Construction only (behaviour is tested
against real PostgreSQL elsewhere)."""

from __future__ import annotations

import sys

from dbops.config import load_settings
from dbops.seam import PACKAGE_DIR, ComposeTarget, LocalTarget, target_for
from tests.conftest import ROOT

SECRET = "s3cr3t-Pa55"


def make(tmp_path, **env):
    base = {"DBOPS_ENV_FILE": str(tmp_path / "none"), "POSTGRES_USER": "app", "POSTGRES_DB": "shop",
            "POSTGRES_PASSWORD": SECRET, "POSTGRES_HOST": "db.internal", "POSTGRES_PORT": "6543"}
    return load_settings(ROOT, environ={**base, **env})


def test_compose_pg_tool_runs_in_db_service_without_tty(tmp_path):
    t = target_for(make(tmp_path, DBOPS_TARGET="compose", DBOPS_COMPOSE="docker-compose",
                        DBOPS_DB_SERVICE="postgres"))
    launch = t.pg(["pg_dump", "--format=custom"])
    assert launch.argv == ["docker-compose", "exec", "-T", "-e", "PGUSER=app", "-e",
                           "PGDATABASE=shop", "postgres", "pg_dump", "--format=custom"]
    assert launch.cwd == ROOT
    assert SECRET not in " ".join(launch.argv)
    assert launch.env["POSTGRES_PASSWORD"] == SECRET  # for compose's interpolation only


def test_compose_agent_runs_in_backend_service_with_the_agent_mounted(tmp_path):
    t = target_for(make(tmp_path, DBOPS_TARGET="compose", DBOPS_COMPOSE="podman-compose",
                        DBOPS_BACKEND_SERVICE="api", DBOPS_BACKEND_ALEMBIC_INI="db/alembic.ini"))
    launch = t.agent()
    assert launch.argv[:4] == ["podman-compose", "run", "--rm", "-T"]
    assert f"{PACKAGE_DIR}:/opt/dbops/dbops:ro" in launch.argv
    assert launch.argv[-6:] == ["api", "python", "-m", "dbops.agent", "--ini", "db/alembic.ini"]
    assert SECRET not in " ".join(launch.argv)


def test_compose_command_is_configurable(tmp_path):
    t = target_for(make(tmp_path, DBOPS_TARGET="compose", DBOPS_COMPOSE="docker compose"))
    assert t.pg(["psql"]).argv[:3] == ["docker", "compose", "exec"]


def test_local_runs_the_same_argv_with_the_password_in_the_environment(tmp_path):
    t = target_for(make(tmp_path, DBOPS_TARGET="local"))
    assert isinstance(t, LocalTarget)
    launch = t.pg(["pg_dump", "--format=custom"])
    assert launch.argv == ["pg_dump", "--format=custom"]
    assert launch.env["PGPASSWORD"] == SECRET
    assert (launch.env["PGHOST"], launch.env["PGPORT"], launch.env["PGDATABASE"]) == ("db.internal", "6543", "shop")
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
