"""The compose file itself: valid, credentials required, readiness by pg_isready."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE_V1 = shutil.which("docker-compose")


def config(env: dict[str, str], *files: str) -> subprocess.CompletedProcess:
    args = [COMPOSE_V1]
    for f in files or ("docker-compose.yml",):
        args += ["-f", f]
    return subprocess.run(
        [*args, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **env},
        stdin=subprocess.DEVNULL,
    )


CREDS = {"POSTGRES_USER": "app", "POSTGRES_PASSWORD": "pw", "POSTGRES_DB": "app"}


@pytest.mark.skipif(
    not COMPOSE_V1, reason="docker-compose (v1) not installed: scripts/test installs it as root"
)
def test_docker_compose_accepts_the_file():
    done = config(CREDS)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(not COMPOSE_V1, reason="docker-compose (v1) not installed")
def test_docker_compose_accepts_the_e2e_override():
    done = config(CREDS, "docker-compose.yml", "docker-compose.e2e.yml")
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(not COMPOSE_V1, reason="docker-compose (v1) not installed")
def test_missing_password_is_refused_by_name():
    done = config({"POSTGRES_USER": "app", "POSTGRES_DB": "app"})
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD is not set" in done.stderr


def test_stack_shape():
    stack = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    db, backend = stack["services"]["db"], stack["services"]["backend"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])
    assert backend["depends_on"]["db"]["condition"] == "service_healthy"
    assert backend["build"]["context"] == "./backend"
    env = backend["environment"]
    assert {
        "POSTGRES_HOST",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
        "DATABASE_URL",
    } <= set(env)
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert ":?" in db["environment"][key]  # required, with a message


def test_env_example_documents_every_setting():
    from dbops.config import SETTINGS

    text = (ROOT / ".env.example").read_text()
    missing = [s.name for s in SETTINGS if f"{s.name}=" not in text]
    assert not missing, f"declared in dbops/config.py, not documented in .env.example: {missing}"


@pytest.mark.skipif(not COMPOSE_V1, reason="docker-compose (v1) not installed")
@pytest.mark.parametrize("profile", [(), ("--profile", "ops")], ids=["default", "ops"])
def test_the_example_env_file_as_it_is_gives_a_stack_compose_accepts(profile):
    """`cp .env.example .env` then compose: every host folder in it is a path compose mounts
    (a bare `backups` was read as an undeclared named volume, and every compose command
    failed)."""
    done = subprocess.run(
        [COMPOSE_V1, "--env-file", str(ROOT / ".env.example"), *profile, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
