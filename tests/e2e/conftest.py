"""The compose stack on real containers (docker compose, or podman + docker-compose v1 as
prepared by scripts/containers/setup). scripts/test exports the engine's environment and
runs these with `-m e2e`; without an engine they skip, saying why."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from tests.conftest import ROOT, InvokeRunner
from tests.fixtures.projects import SAMPLE_REVS

PROJECT = "dbopse2e"


def engine_answers(env: dict[str, str]) -> tuple[bool, str]:
    compose = env.get("DBOPS_COMPOSE", "docker compose").split()
    try:
        done = subprocess.run(
            [*compose, "ps", "-q"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
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
        done = subprocess.run(
            [
                *compose,
                "exec",
                "-T",
                "db",
                "psql",
                "-U",
                self.env["POSTGRES_USER"],
                "-d",
                self.env["POSTGRES_DB"],
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            cwd=ROOT,
            env=self.env,
            text=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def revision(self) -> str | None:
        """The version row ("base" when empty), or None on a database alembic never touched."""
        if self.psql("SELECT to_regclass('public.alembic_version') IS NULL") == "t":
            return None
        return self.psql("SELECT version_num FROM alembic_version") or "base"

    def go_to(self, rev: str, check: bool = True) -> None:
        """invoke migrate or rollback (no backups: test set-up) to ``rev`` from wherever it is."""
        found = self.revision()
        if found == rev:
            return
        if found in (None, "base") or (
            rev != "base" and SAMPLE_REVS.index(found) < SAMPLE_REVS.index(rev)
        ):
            done = self.invoke("migrate", f"--to={rev}", "--no-backup")
        else:
            done = self.invoke(
                "rollback", f"--to={rev}", "--yes", "--accept-data-loss", "--no-backup"
            )
        assert done.returncode == 0 or not check, done.stdout + done.stderr

    def return_to(self, found: str | None) -> None:
        """Put the schema back where ``revision()`` found it (None: a database alembic never
        touched, as the runbook's first step expects), for the tests that share the stack.
        Best effort (it runs in the tests' finally blocks); the tests assert the result."""
        self.go_to(found or "base", check=False)
        if found is None:
            self.psql("DROP TABLE IF EXISTS alembic_version")


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(("POSTGRES_", "PG", "DATABASE_URL")) or key in (
            "DBOPS_TARGET",
            "DBOPS_BACKUP_DIR",
        ):
            del env[key]
    backups = tmp_path_factory.mktemp("e2e") / "backups"
    env.update(
        {
            "DBOPS_TARGET": "compose",
            "DBOPS_ENV_FILE": os.devnull,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "POSTGRES_USER": "app",
            "POSTGRES_DB": "app",
            "POSTGRES_PASSWORD": "e2e-" + secrets.token_urlsafe(12),
            "DBOPS_BACKUP_DIR": str(backups),
        }
    )
    ok, why = engine_answers(env)
    if not ok:
        pytest.skip(f"no container engine answers ({why}); scripts/test prepares one when it can")
    s = Stack(env)
    subprocess.run(
        [*env.get("DBOPS_COMPOSE", "docker compose").split(), "down", "-v"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        done = s.invoke("up")
        assert done.returncode == 0, done.stderr
        s.up_output = done
        yield s
    finally:
        s.invoke("down", "--volumes")
