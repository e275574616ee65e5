"""scripts/quickstart on a real container engine with no .env yet (issue 9): the probe must
reach the engine although the compose file's ${POSTGRES_USER:?…} cannot be interpolated."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import engine_answers

pytestmark = pytest.mark.e2e


def test_quickstart_takes_the_compose_path_before_env_exists(tmp_path):
    if (ROOT / ".env").exists():
        pytest.skip(f"{ROOT / '.env'} exists: compose would read it (this test needs none)")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTGRES_", "PG", "DATABASE_URL")) and k != "DBOPS_TARGET"
    }
    env["DBOPS_ENV_FILE"] = str(tmp_path / "none.env")
    env.setdefault("DBOPS_COMPOSE", "docker compose")
    ok, why = engine_answers(
        {**env, "POSTGRES_USER": "x", "POSTGRES_PASSWORD": "x", "POSTGRES_DB": "x"}
    )
    if not ok:
        pytest.skip(f"no container engine answers ({why})")
    plain, _ = engine_answers(env)
    assert not plain  # the old probe: fails on interpolation, although the engine answers
    done = subprocess.run(
        [str(ROOT / "scripts" / "quickstart"), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "path: the compose stack (DBOPS_TARGET=compose), because" in done.stderr
    assert "probed with placeholders for" in done.stderr
    assert not (tmp_path / "none.env").exists()
