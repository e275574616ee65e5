"""Bad configuration: one clear line, non-zero exit, nothing touched, no password echoed."""

from __future__ import annotations

import pytest

from dbops.config import load_settings
from dbops.errors import ConfigError
from tests.conftest import ROOT


def test_process_environment_overrides_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("POSTGRES_USER=fromfile\nPOSTGRES_DB=filedb\nDBOPS_TARGET=local\n")
    s = load_settings(ROOT, environ={"DBOPS_ENV_FILE": str(env_file), "POSTGRES_DB": "envdb"})
    assert (s.user, s.database, s.target) == ("fromfile", "envdb", "local")


def test_invoke_config_is_the_lowest_layer(tmp_path):
    s = load_settings(ROOT, {"dbops_db_service": "postgres-main", "dbops_target": "local"},
                      environ={"DBOPS_ENV_FILE": str(tmp_path / "none"), "POSTGRES_USER": "u",
                               "POSTGRES_DB": "d", "DBOPS_TARGET": "compose"})
    assert s.db_service == "postgres-main" and s.target == "compose"


@pytest.mark.parametrize("environ, needle", [
    ({"POSTGRES_DB": "d"}, "POSTGRES_USER is not set"),
    ({"POSTGRES_USER": "u"}, "POSTGRES_DB is not set"),
    ({"POSTGRES_USER": "u", "POSTGRES_DB": "d", "DBOPS_TARGET": "kubernetes"}, "DBOPS_TARGET='kubernetes'"),
    ({"POSTGRES_USER": "u", "POSTGRES_DB": "d", "POSTGRES_PORT": "fivefour"}, "must be integers"),
])
def test_bad_configuration_is_refused(tmp_path, environ, needle):
    with pytest.raises(ConfigError, match=needle):
        load_settings(ROOT, environ={"DBOPS_ENV_FILE": str(tmp_path / "none"), **environ})


def _one_error_line(done):
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert done.returncode != 0
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_unknown_target_through_invoke(invoke):
    line = _one_error_line(invoke("current", env={"DBOPS_TARGET": "nomad"}))
    assert "DBOPS_TARGET='nomad' is not one of: compose, local" in line


def test_missing_required_variable_through_invoke(invoke, ops_env):
    env = dict(ops_env)
    del env["POSTGRES_DB"]
    invoke.env = env
    assert "POSTGRES_DB is not set" in _one_error_line(invoke("current"))


def test_unreachable_database(invoke):
    from dbops.localpg import free_port
    done = invoke("current", env={"POSTGRES_PORT": str(free_port())})
    line = _one_error_line(done)
    assert "cannot connect to database" in line and "refused" in line.lower()


def test_wrong_password_is_not_echoed(invoke):
    done = invoke("migrate", env={"POSTGRES_PASSWORD": "Wr0ng-pa55word"})
    line = _one_error_line(done)
    assert "password authentication failed" in line
    assert "Wr0ng-pa55word" not in done.stderr + done.stdout


def test_compose_without_engine_is_one_clear_line(invoke):
    done = invoke("current", env={"DBOPS_TARGET": "compose", "DBOPS_COMPOSE": "no-such-compose-xyz"})
    line = _one_error_line(done)
    assert "no container engine answers" in line and "DBOPS_TARGET=local" in line
