"""The runbook for real, through the compose target, on real containers:
up -> migrate from base -> backup -> change data -> rollback --to -> migrate -> restore ->
delete alembic_version -> recover -> doctor -> down (the fixture's teardown)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import PsWatcher

pytestmark = pytest.mark.e2e


def ok(done):
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def no_password(stack, *texts):
    for text in texts:
        assert stack.password not in text


def test_migrate_from_base_runs_alembic_in_the_backend_container(stack):
    with PsWatcher() as ps:
        done = ok(stack.invoke("migrate", "--no-backup"))
    assert "run --rm -T" in done.stderr and "dbops.agent" in done.stderr
    assert "verified: database is at" in done.stdout
    # The backend reached the db by its service name (POSTGRES_HOST=db in the compose file).
    assert stack.psql("SELECT count(*) FROM alembic_version") == "1"
    no_password(stack, done.stdout, done.stderr, *ps.lines)
