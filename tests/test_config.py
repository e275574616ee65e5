"""Bad configuration: one clear line, non-zero exit, nothing touched, no password echoed."""

from __future__ import annotations

import json

import pytest

from dbops.config import load_settings
from dbops.errors import ConfigError
from tests.conftest import ROOT, offline_settings


def test_process_environment_overrides_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("POSTGRES_USER=fromfile\nPOSTGRES_DB=filedb\nDBOPS_TARGET=local\n")
    s = load_settings(ROOT, environ={"DBOPS_ENV_FILE": str(env_file), "POSTGRES_DB": "envdb"})
    assert (s.user, s.database, s.target) == ("fromfile", "envdb", "local")


def test_invoke_config_is_the_lowest_layer(tmp_path):
    s = offline_settings(
        tmp_path,
        {"dbops_db_service": "postgres-main", "dbops_target": "local"},
        DBOPS_TARGET="compose",
    )
    assert s.db_service == "postgres-main" and s.target == "compose"


@pytest.mark.parametrize(
    "environ, needle",
    [
        ({"POSTGRES_DB": "d"}, "POSTGRES_USER is not set"),
        ({"POSTGRES_USER": "u"}, "POSTGRES_DB is not set"),
        (
            {"POSTGRES_USER": "u", "POSTGRES_DB": "d", "DBOPS_TARGET": "nomad"},
            "DBOPS_TARGET='nomad' is not one of",
        ),
        (
            {"POSTGRES_USER": "u", "POSTGRES_DB": "d", "POSTGRES_PORT": "fivefour"},
            "POSTGRES_PORT='fivefour' is not a whole number",
        ),
        (
            {"POSTGRES_USER": "u", "POSTGRES_DB": "d", "DBOPS_LOCK_TIMEOUT": "soon"},
            "DBOPS_LOCK_TIMEOUT='soon' is not a duration",
        ),
        (
            {"POSTGRES_USER": "u", "POSTGRES_DB": "d", "DBOPS_RESTORE_JOBS": "0"},
            "DBOPS_RESTORE_JOBS='0' must be 1 or more",
        ),
        (
            {"POSTGRES_USER": "u", "POSTGRES_DB": "d", "DBOPS_BACKUP_RETENTION": "maybe"},
            "DBOPS_BACKUP_RETENTION='maybe' is not on/off",
        ),
    ],
)
def test_bad_configuration_is_refused(tmp_path, environ, needle):
    with pytest.raises(ConfigError, match=needle):
        load_settings(ROOT, environ={"DBOPS_ENV_FILE": str(tmp_path / "none"), **environ})


def test_every_declared_default_parses(tmp_path):
    from dbops.config import SETTINGS

    s = offline_settings(tmp_path)
    for setting in SETTINGS:
        s.get(setting.name)  # raises ConfigError if a default does not parse
    assert s.get("DBOPS_BACKUP_RESERVE_MB") == 64.0 and s.get("DBOPS_BACKUP_RETENTION") is True
    assert s.get("DBOPS_CACHE_DIR") == ROOT / ".dbops/cache"


def test_empty_value_means_the_default(tmp_path):
    s = offline_settings(tmp_path, DBOPS_LOCK_RETRIES="")
    assert s.lock_retries == 5


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
    done = invoke(
        "current", env={"DBOPS_TARGET": "compose", "DBOPS_COMPOSE": "no-such-compose-xyz"}
    )
    line = _one_error_line(done)
    assert "no container engine answers" in line and "DBOPS_TARGET=local" in line


def test_bad_setting_is_refused_before_anything_is_touched(invoke, settings):
    """DBOPS_BACKUP_RESERVE_MB=lots used to raise a raw ValueError after the lock and the
    snapshot were taken: now one line at load, no backup folder entry, no session left."""
    before = sorted(settings.backup_dir.iterdir()) if settings.backup_dir.exists() else []
    line = _one_error_line(invoke("backup", env={"DBOPS_BACKUP_RESERVE_MB": "lots"}))
    assert line.startswith("error: DBOPS_BACKUP_RESERVE_MB='lots' is not a number")
    after = sorted(settings.backup_dir.iterdir()) if settings.backup_dir.exists() else []
    assert after == before
    # no agent ever connected: no dbops session in the audit or in pg_stat_activity
    assert not settings.audit_log.exists()


def test_settings_task_shows_values_and_sources_never_the_password(invoke, tmp_path):
    env_file = tmp_path / "ops.env"
    env_file.write_text("DBOPS_LOCK_TIMEOUT=7s\n")
    done = invoke(
        "settings", env={"DBOPS_ENV_FILE": str(env_file), "POSTGRES_PASSWORD": "Sup3r-secret"}
    )
    assert done.returncode == 0, done.stderr
    lines = {ln.split()[0]: ln for ln in done.stdout.splitlines()}
    assert lines["DBOPS_LOCK_TIMEOUT"].split()[1:] == ["7s", f"[{env_file}]"]
    assert lines["DBOPS_LOCK_RETRIES"].split()[1:] == ["5"]  # a default names no source
    assert "****" in lines["POSTGRES_PASSWORD"]
    assert "Sup3r-secret" not in done.stdout + done.stderr
    rows = json.loads(invoke("settings", "--json").stdout)
    from dbops.config import SETTINGS

    assert [r["name"] for r in rows] == [s.name for s in SETTINGS]
