"""The runbook for real, through the compose target, on real containers:
up -> migrate from base -> backup -> change data -> rollback --to -> migrate -> restore ->
delete alembic_version -> recover -> doctor -> down (the fixture's teardown).

The steps share one stack and run in file order; each asserts what the operator would
check, with the test's own psql inside the db container."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from tests.fixtures.processes import PsWatcher
from tests.fixtures.projects import SAMPLE_HEAD, SAMPLE_REVS
from tests.fixtures.records import match_lines

pytestmark = pytest.mark.e2e

STATE: dict = {}


def ok(done):
    assert done.returncode == 0, (
        f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    return done


def no_password(stack, *texts):
    for text in texts:
        assert stack.password not in text


def test_up_waits_with_pg_isready_not_the_healthcheck(stack):
    # Under podman the healthcheck never runs (the db stays "starting"); readiness came from
    # pg_isready run inside the db container.
    assert " exec -T " in stack.up_output.stderr and "pg_isready" in stack.up_output.stderr
    assert "ready:" in stack.up_output.stdout


def test_migrate_from_base_runs_alembic_in_the_backend_container(stack):
    assert stack.psql("SELECT to_regclass('alembic_version') IS NULL") == "t"
    with PsWatcher() as ps:
        done = ok(stack.invoke("migrate"))
    # Two container starts for the whole migrate: the agent (run --rm) and the verified
    # pre-migrate backup's one dump command (exec -T) — every launch is printed before it runs.
    launches = [ln for ln in done.stderr.splitlines() if ln.startswith("$ ")]
    assert len(launches) == 2, launches
    assert " run --rm -T " in launches[0] and "dbops.agent" in launches[0]
    assert " exec -T " in launches[1] and "dbops backup" in launches[1]
    assert f"verified: database is at {SAMPLE_HEAD}" in done.stdout
    # The backend reached the db by its service name (POSTGRES_HOST=db in docker-compose.yml).
    assert stack.psql("SELECT version_num FROM alembic_version") == SAMPLE_HEAD
    no_password(stack, done.stdout, done.stderr, *ps.lines)


def test_backup_lands_on_the_host_private_and_intact(stack):
    stack.psql(
        "INSERT INTO users (username, email) SELECT 'u' || g, 'u' || g || '@x.org' "
        "FROM generate_series(1, 500) g"
    )
    with PsWatcher() as ps:
        done = ok(stack.invoke("backup"))
    assert "exec -T" in done.stderr  # pg_dump ran in the db container, without a TTY
    path = Path(re.search(r"^backup: (\S+)", done.stdout, re.M).group(1))
    st, dst = path.stat(), path.parent.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_IMODE(dst.st_mode) == 0o700
    assert st.st_uid == os.getuid()
    no_password(stack, done.stdout, done.stderr, *ps.lines)
    # A binary dump that crossed `exec` intact: a full read, and a restore into a scratch db.
    verified = ok(stack.invoke("verify-backup", str(path), "--restore-test"))
    assert "ok:" in verified.stdout
    STATE["backup"] = path


def test_rollback_to_a_named_revision(stack):
    stack.psql("DELETE FROM users WHERE id > 100")
    target = SAMPLE_REVS[2]
    done = ok(stack.invoke("rollback", f"--to={target}", "--yes", "--accept-data-loss"))
    assert stack.psql("SELECT version_num FROM alembic_version") == target
    assert stack.psql("SELECT to_regclass('user_sessions') IS NULL") == "t"
    assert "pre-rollback" in done.stdout + done.stderr


def test_migrate_back_to_head_with_a_touched_backup(stack):
    # The touched set through the compose target: the schema copied into a scratch database
    # next to the server (exec), the revisions traced in the backend container, one dump.
    done = ok(stack.invoke("migrate", env={"DBOPS_PREMIGRATE_BACKUP": "touched"}))
    assert stack.psql("SELECT version_num FROM alembic_version") == SAMPLE_HEAD
    path = re.search(r"^backup \(touched, partial\): (\S+)", done.stdout, re.M).group(1)
    assert "public.users: " in done.stdout  # the revisions above SAMPLE_REVS[2] add to users
    assert (
        stack.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'dbops_scratch_%'") == "0"
    )
    ok(stack.invoke("verify-backup", path, "--restore-test"))


def test_restore_brings_back_the_backups_data(stack):
    assert stack.psql("SELECT count(*) FROM users") == "100"
    done = ok(stack.invoke("restore", str(STATE["backup"]), "--yes"))
    assert "restored:" in done.stdout
    assert stack.psql("SELECT count(*) FROM users") == "500"
    assert stack.psql("SELECT version_num FROM alembic_version") == SAMPLE_HEAD
    # The undo it printed is a rename back (twice: back to the restored one).
    undo = re.search(r"undo \(rename it back\): invoke (.+)$", done.stdout, re.M).group(1).split()
    ok(stack.invoke(*undo))
    assert stack.psql("SELECT count(*) FROM users") == "100"
    ok(stack.invoke("restore-undo", "--yes"))
    assert stack.psql("SELECT count(*) FROM users") == "500"


def test_recover_after_alembic_version_is_lost(stack):
    stack.psql("DROP TABLE alembic_version")
    done = stack.invoke("recover")
    assert done.returncode == 0, done.stdout + done.stderr
    assert match_lines(done.stdout) == [SAMPLE_HEAD]
    ok(stack.invoke("recover", "--apply", "--yes"))
    assert stack.psql("SELECT version_num FROM alembic_version") == SAMPLE_HEAD


def test_doctor_reads_a_healthy_stack(stack):
    done = stack.invoke("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("next: nothing to do")  # every check passed
    no_password(stack, done.stdout, done.stderr)
