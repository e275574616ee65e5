"""invoke migrate against real PostgreSQL: preflight refusals, --sql, backup + audit, the
half-way failure, autocommit_block revisions, schema drift, and the agent's revision hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from tests.conftest import ALEMBIC_INI
from tests.fixtures.projects import REVS, SAMPLE_HEAD, catalog, make_project, seed, version_rows
from tests.fixtures.records import audit_records

NB = "--no-backup"


def test_migrate_backs_up_upgrades_verifies_and_audits(invoke, db_conn, ops_env):
    done = invoke("migrate")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "6 pending, in order:" in out and "initial schema" in out
    backups = list(Path(ops_env["DBOPS_BACKUP_DIR"]).glob("*pre-migrate*.dump"))
    assert len(backups) == 1 and str(backups[0]) in out  # the backup is named in the output
    assert "schema matches the models" in out
    assert version_rows(db_conn) == [SAMPLE_HEAD]
    [rec] = audit_records(ops_env, "migrate")
    assert rec["result"] == "ok" and rec["from"] == [] and rec["to"] == [SAMPLE_HEAD]
    assert rec["backup"] == str(backups[0]) and rec["duration_s"] > 0 and rec["operator"]
    script = ScriptDirectory.from_config(Config(str(ALEMBIC_INI)))
    assert len(rec["revision_hashes"]) == 6
    for rev, digest in rec["revision_hashes"].items():
        assert (
            digest == hashlib.sha256(Path(script.get_revision(rev).path).read_bytes()).hexdigest()
        )
    assert sorted(s["revision"] for s in rec["steps"]) == sorted(rec["revision_hashes"])


def test_sql_prints_the_pending_sql_and_changes_nothing(invoke, db_conn, ops_env):
    assert invoke("migrate", "--to", "1be15b655bdb", NB).returncode == 0
    before = catalog(db_conn)
    done = invoke("migrate", "--sql")
    assert done.returncode == 0, done.stderr
    assert "CREATE INDEX idx_comments_post_created" in done.stdout
    assert "CREATE TABLE user_sessions" in done.stdout and "CREATE TABLE users" not in done.stdout
    assert done.stdout.lstrip().startswith("BEGIN;")  # stdout is the SQL alone
    assert "pending, in order" in done.stderr
    assert catalog(db_conn) == before
    assert not list(Path(ops_env["DBOPS_BACKUP_DIR"]).glob("*.dump"))


def test_nothing_pending_says_so_and_exits_zero(invoke):
    assert invoke("migrate", NB).returncode == 0
    done = invoke("migrate")
    assert done.returncode == 0 and "nothing to do" in done.stdout
    assert "backup" not in done.stdout


def test_multiple_heads_refused_naming_them_with_the_merge_command(invoke, tmp_path, db_conn):
    ini = make_project(tmp_path, "flag", "irreversible", branch_from={"irreversible": SAMPLE_HEAD})
    done = invoke("migrate", env={"DBOPS_ALEMBIC_INI": str(ini)})
    assert done.returncode != 0
    assert REVS["flag"].rev in done.stderr and REVS["irreversible"].rev in done.stderr
    assert "alembic merge" in done.stderr
    assert version_rows(db_conn) == []


def test_unknown_current_revision_refused_pointing_to_stamp_recovery(invoke, db_conn):
    assert invoke("migrate", "--to", "308ea353e93f", NB).returncode == 0
    db_conn.execute("UPDATE alembic_version SET version_num = 'deadbeef0000'")
    before = catalog(db_conn)
    done = invoke("migrate")
    assert done.returncode != 0
    assert "deadbeef0000" in done.stderr and "invoke stamp" in done.stderr
    assert catalog(db_conn) == before


def test_migrate_down_is_refused_pointing_to_rollback(invoke, db_conn):
    assert invoke("migrate", NB).returncode == 0
    done = invoke("migrate", "--to", "308ea353e93f")
    assert done.returncode != 0 and "invoke rollback" in done.stderr
    assert version_rows(db_conn) == [SAMPLE_HEAD]


def test_a_revision_failing_half_way_leaves_the_prior_revision_and_schema(
    invoke, tmp_path, db_conn, ops_env
):
    ini = make_project(tmp_path, "fails")
    env = {"DBOPS_ALEMBIC_INI": str(ini)}
    assert invoke("migrate", "--to", SAMPLE_HEAD, NB, env=env).returncode == 0
    before = catalog(db_conn)
    done = invoke("migrate", env=env)
    assert done.returncode != 0
    err = done.stderr
    assert "f0f0f0000003" in err and "division by zero" in err
    assert "ran in a transaction" in err
    assert f"now: {SAMPLE_HEAD}" in err and "next: fix revision f0f0f0000003" in err
    assert catalog(db_conn) == before  # pg_catalog: no column, no table, no index left
    rec = audit_records(ops_env, "migrate")[-1]
    assert rec["result"] == "failed" and rec["to"] == [SAMPLE_HEAD] and rec["backup"]
    assert Path(rec["backup"]).is_file() and rec["backup"] in err


def test_failure_in_an_autocommit_block_is_reported_as_outside_a_transaction(
    invoke, tmp_path, db_conn
):
    ini = make_project(tmp_path, "fails_concurrent")
    env = {"DBOPS_ALEMBIC_INI": str(ini)}
    assert invoke("migrate", "--to", SAMPLE_HEAD, NB, env=env).returncode == 0
    seed(db_conn)  # duplicate author_email: the unique index cannot be built
    done = invoke("migrate", NB, env=env)
    assert done.returncode != 0
    assert "OUTSIDE a transaction" in done.stderr and "invoke doctor" in done.stderr
    assert "uq_comments_author_email_cc" in done.stderr  # the INVALID index it left was dropped
    assert version_rows(db_conn) == [SAMPLE_HEAD]
    assert not db_conn.execute("SELECT 1 FROM pg_index WHERE NOT indisvalid").fetchall()


def test_schema_that_does_not_match_the_models_fails_verification_with_the_diff(
    invoke, tmp_path, db_conn
):
    ini = make_project(tmp_path, "flag", patch_models=False)
    done = invoke("migrate", NB, env={"DBOPS_ALEMBIC_INI": str(ini)})
    assert done.returncode != 0
    assert "does not match the models" in done.stderr
    assert "comments.flagged" in done.stderr and "idx_comments_flagged" in done.stderr
    assert version_rows(db_conn) == [REVS["flag"].rev]
    assert f"invoke rollback --to={SAMPLE_HEAD}" not in done.stderr  # it started from base
    assert "invoke rollback --to=base" in done.stderr


def test_revision_hashes_agent_op(settings):
    from dbops.agent_client import call_once

    hashes = call_once(settings, "revisions.hashes")
    script = ScriptDirectory.from_config(Config(str(ALEMBIC_INI)))
    assert set(hashes) == {r.revision for r in script.walk_revisions()}
    rev = script.get_revision(SAMPLE_HEAD)
    assert hashes[SAMPLE_HEAD] == hashlib.sha256(Path(rev.path).read_bytes()).hexdigest()


def test_statement_timeout_fails_cleanly_without_retrying(invoke, tmp_path, db_conn):
    ini = make_project(tmp_path, "slow")
    env = {"DBOPS_ALEMBIC_INI": str(ini), "DBOPS_STATEMENT_TIMEOUT": "300ms"}
    assert invoke("migrate", "--to", SAMPLE_HEAD, NB, env=env).returncode == 0
    done = invoke("migrate", NB, env=env)
    assert done.returncode != 0
    assert "statement_timeout (300ms) reached" in done.stderr
    assert "attempt 1/" not in done.stdout  # a slow statement is not retried
    assert version_rows(db_conn) == [SAMPLE_HEAD]


def test_an_unreachable_database_is_reported_as_not_reached(invoke):
    for args in (("migrate",), ("rollback", "--to=-1", "--yes"), ("stamp", "--to=head", "--yes")):
        done = invoke(*args, env={"POSTGRES_PORT": "1"})
        assert done.returncode != 0
        assert "cannot connect" in done.stderr and "not reached" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_migrate_through_a_merge_revision(invoke, tmp_path, db_conn):
    flag, other = REVS["flag"].rev, REVS["irreversible"].rev
    ini = make_project(
        tmp_path,
        "flag",
        "irreversible",
        "merge",
        branch_from={"irreversible": SAMPLE_HEAD, "merge": (flag, other)},
    )
    done = invoke("migrate", NB, env={"DBOPS_ALEMBIC_INI": str(ini)})
    assert done.returncode == 0, done.stderr
    assert "applied 9 revision(s)" in done.stdout
    assert version_rows(db_conn) == [REVS["merge"].rev]
