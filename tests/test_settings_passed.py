"""Settings reach the processes dbops starts from Settings (.env included), never from the
host's process environment by accident (issue 18 item 7)."""

from __future__ import annotations

from dbops.seam import LocalTarget
from tests.conftest import ALEMBIC_INI, offline_settings


def agent_env(tmp_path, **environ) -> dict[str, str]:
    s = offline_settings(tmp_path, DBOPS_ALEMBIC_INI=str(ALEMBIC_INI), **environ)
    return LocalTarget(s).agent().env


def test_dbops_verbose_from_the_settings_reaches_the_agent(tmp_path, monkeypatch):
    monkeypatch.delenv("DBOPS_VERBOSE", raising=False)
    assert agent_env(tmp_path)["DBOPS_VERBOSE"] == "0"
    assert agent_env(tmp_path, DBOPS_VERBOSE="1")["DBOPS_VERBOSE"] == "1"


def test_a_env_file_value_counts(tmp_path, monkeypatch):
    monkeypatch.delenv("DBOPS_VERBOSE", raising=False)
    env_file = tmp_path / "project.env"
    env_file.write_text("DBOPS_VERBOSE=1\n")
    assert agent_env(tmp_path, DBOPS_ENV_FILE=str(env_file))["DBOPS_VERBOSE"] == "1"
