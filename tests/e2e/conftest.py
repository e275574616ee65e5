"""The compose stack on real containers (docker compose, or podman + docker-compose v1 as
prepared by scripts/containers/setup). scripts/test exports the engine's environment and
runs these with `-m e2e`; without an engine they skip, saying why."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from tests.conftest import ROOT, InvokeRunner

PROJECT = "dbopse2e"


def engine_answers(env: dict[str, str]) -> tuple[bool, str]:
    compose = env.get("DBOPS_COMPOSE", "docker compose").split()
    try:
        done = subprocess.run([*compose, "ps", "-q"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, (done.stderr.strip().splitlines() or [""])[-1]


class Stack:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.invoke = InvokeRunner(env)  # `invoke …` as the operator runs it, on this stack

    @property
    def password(self) -> str:
        return self.env["POSTGRES_PASSWORD"]

    def psql(self, sql: str) -> str:
        """A query run inside the db container (the test's own eyes, not the product's)."""
        compose = self.env.get("DBOPS_COMPOSE", "docker compose").split()
        done = subprocess.run([*compose, "exec", "-T", "db", "psql", "-U", self.env["POSTGRES_USER"],
                               "-d", self.env["POSTGRES_DB"], "-XAtq", "-v", "ON_ERROR_STOP=1",
                               "-c", sql], cwd=ROOT, env=self.env, text=True, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(("POSTGRES_", "PG", "DATABASE_URL")) or key in ("DBOPS_TARGET", "DBOPS_BACKUP_DIR"):
            del env[key]
    backups = tmp_path_factory.mktemp("e2e") / "backups"
    env.update({
        "DBOPS_TARGET": "compose", "DBOPS_ENV_FILE": os.devnull, "COMPOSE_PROJECT_NAME": PROJECT,
        "POSTGRES_USER": "app", "POSTGRES_DB": "app",
        "POSTGRES_PASSWORD": "e2e-" + secrets.token_urlsafe(12),
        "DBOPS_BACKUP_DIR": str(backups),
    })
    ok, why = engine_answers(env)
    if not ok:
        pytest.skip(f"no container engine answers ({why}); scripts/test prepares one when it can")
    s = Stack(env)
    subprocess.run([*env.get("DBOPS_COMPOSE", "docker compose").split(), "down", "-v"], cwd=ROOT,
                   env=env, capture_output=True, stdin=subprocess.DEVNULL)
    try:
        done = s.invoke("up")
        assert done.returncode == 0, done.stderr
        s.up_output = done
        yield s
    finally:
        s.invoke("down", "--volumes")
