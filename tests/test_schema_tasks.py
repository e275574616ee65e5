"""current / history / heads / migrate through the local target, against real PostgreSQL."""

from __future__ import annotations

import pytest

from tests.fixtures.projects import SAMPLE_HEAD, SAMPLE_REVS, version_rows

# the CLI smoke layer: these run `invoke` in a subprocess, as an operator does (conftest)
pytestmark = pytest.mark.cli


def test_current_on_an_empty_database(invoke):
    done = invoke("current")
    assert done.returncode == 0, done.stderr
    assert "current: base (no version row)" in done.stdout
    assert "6 pending" in done.stdout


def test_heads_and_history(invoke):
    done = invoke("heads")
    assert done.returncode == 0 and done.stdout.startswith(SAMPLE_HEAD)
    done = invoke("history")
    lines = done.stdout.splitlines()
    assert [ln.split()[2] for ln in lines[:6]] == SAMPLE_REVS  # "  <down> -> <rev>"
    assert "(head)" in lines[5]


# Every other start revision is covered by test_rollback's down-and-back-up loop.
@pytest.mark.parametrize("start", ["base", SAMPLE_REVS[3]])
def test_migrate_from_any_earlier_revision_reaches_head_verified(invoke, db_conn, start):
    if start != "base":
        assert invoke("migrate", "--to", start, "--no-backup").returncode == 0
        assert version_rows(db_conn) == [start]
    done = invoke("migrate", "--no-backup")
    assert done.returncode == 0, done.stderr
    assert f"verified: database is at {SAMPLE_HEAD}" in done.stdout
    assert version_rows(db_conn) == [SAMPLE_HEAD]


def test_migrate_twice_is_a_verified_no_op(invoke, db_conn):
    assert invoke("migrate", "--no-backup").returncode == 0
    done = invoke("migrate")
    assert done.returncode == 0
    assert "nothing to do" in done.stdout and version_rows(db_conn) == [SAMPLE_HEAD]


def test_current_json_for_scripts(invoke):
    import json

    invoke("migrate", "--no-backup")
    st = json.loads(invoke("current", "--json").stdout)
    assert st["current"] == [SAMPLE_HEAD] and st["at_head"] is True and st["pending"] == []


def test_commands_are_printed_and_carry_no_password(invoke, ops_env):
    done = invoke("migrate")
    assert "$ " in done.stderr and "dbops.agent" in done.stderr
    assert ops_env["POSTGRES_PASSWORD"] not in done.stderr + done.stdout


def test_psql_runs_one_statement_on_the_target(invoke, db_conn):
    done = invoke("psql", "-c", "CREATE TABLE runbook_probe (id int)")
    assert done.returncode == 0, done.stderr
    assert db_conn.execute("SELECT to_regclass('runbook_probe') IS NOT NULL").fetchone()[0]
    bad = invoke("psql", "-c", "SELECT * FROM no_such_table")
    assert bad.returncode != 0 and "no_such_table" in bad.stderr


def test_up_on_the_local_target_waits_for_pg_isready(invoke, ops_env):
    done = invoke("up")
    assert done.returncode == 0, done.stderr
    assert (
        "$ pg_isready" in done.stderr and f"ready: {ops_env['POSTGRES_DB']} (local)" in done.stdout
    )
