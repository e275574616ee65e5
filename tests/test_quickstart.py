"""scripts/quickstart's choice of path (issue 9): with DBOPS_COMPOSE set and no .env yet, the
engine probe must not fail on the compose file's ${POSTGRES_USER:?…} interpolation. The engine
here is a stand-in that interpolates like compose (the e2e suite has a real one)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT

# Fails like `docker compose ps -q` does before .env exists, unless the variables are set;
# with ENGINE_DOWN=1 fails like an engine that does not answer.
FAKE_COMPOSE = """#!/bin/sh
[ -n "$ENGINE_DOWN" ] && { echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock" >&2; exit 1; }
for v in POSTGRES_USER POSTGRES_PASSWORD POSTGRES_DB; do
  eval "val=\\${$v:-}"
  [ -n "$val" ] || { echo "error while interpolating services.db.environment.$v: required variable $v is missing a value" >&2; exit 1; }
done
echo "$@" >> "$CALLS"
"""  # noqa: E501


@pytest.fixture
def quickstart(tmp_path):
    fake = tmp_path / "compose"
    fake.write_text(FAKE_COMPOSE)
    fake.chmod(0o755)

    def run(**env):
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "DBOPS_", "PG"))
        }
        base.update(
            DBOPS_COMPOSE=str(fake),
            DBOPS_ENV_FILE=str(tmp_path / "no.env"),
            CALLS=str(tmp_path / "calls"),
            **env,
        )
        return subprocess.run(
            [str(ROOT / "scripts" / "quickstart"), "--dry-run"],
            cwd=ROOT,
            env=base,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )

    return run


def test_engine_that_answers_is_used_although_no_env_file_exists_yet(quickstart, tmp_path):
    done = quickstart()
    assert done.returncode == 0, done.stderr
    assert "path: the compose stack (DBOPS_TARGET=compose), because" in done.stderr
    assert (
        "ps -q' answers (probed with placeholders for POSTGRES_DB POSTGRES_PASSWORD "
        "POSTGRES_USER because"
        in done.stderr
        and "no.env does not exist yet" in done.stderr
    )
    assert (tmp_path / "calls").read_text().split() == ["ps", "-q"]
    assert not (tmp_path / "no.env").exists()  # --dry-run changes nothing


def test_engine_that_does_not_answer_falls_back_and_says_why(quickstart):
    done = quickstart(ENGINE_DOWN="1")
    assert done.returncode == 0, done.stderr
    assert "path: a throwaway local PostgreSQL (DBOPS_TARGET=local" in done.stderr
    assert "ps -q' failed: Cannot connect to the Docker daemon" in done.stderr


def test_target_local_is_obeyed(quickstart):
    done = quickstart(DBOPS_TARGET="local")
    assert (
        "path: a throwaway local PostgreSQL" in done.stderr
        and "because DBOPS_TARGET=local" in done.stderr
    )
