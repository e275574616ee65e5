"""invoke recover against real PostgreSQL: every recovery case of issue 5 built for real."""

from __future__ import annotations

import json

import pytest

from dbops import audit
from dbops.agent.lock import lock_key
from dbops.ops import recover as recover_op
from tests.conftest import ROOT
from tests.fixtures.projects import BRANCH_REV, SAMPLE_HEAD, SAMPLE_REVS, version_rows
from tests.fixtures.records import match_lines


@pytest.fixture
def rec(invoke, recover_cache):
    """`invoke …` with a cache shared by the session (the expected schemas are built once)."""

    def run(*args, env=None, **kw):
        return invoke(*args, env={"DBOPS_CACHE_DIR": str(recover_cache), **(env or {})}, **kw)

    return run


@pytest.mark.parametrize("rev", SAMPLE_REVS)
def test_version_table_deleted_at_each_revision_recover_names_it(rec, alembic_at, db_conn, rev):
    alembic_at(rev)
    db_conn.execute("DROP TABLE alembic_version")
    done = rec("recover")
    assert done.returncode == 0, done.stdout + done.stderr
    assert match_lines(done.stdout) == [rev]
    assert "no alembic_version table  [table missing]" in done.stdout
    assert done.stdout.rstrip().endswith("next: invoke recover --apply")
    assert version_rows(db_conn, missing=None) is None  # read-only


def test_baseline_made_without_alembic_is_stamped_head_with_an_audit_record(
    rec, database, db_conn, settings, create_all
):
    """A populated database created by the models (create_all), never by alembic."""
    create_all(database)
    db_conn.execute("INSERT INTO users (username, email) VALUES ('a', 'a@x')")
    done = rec("recover", "--apply", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert match_lines(done.stdout) == [SAMPLE_HEAD]
    assert f"stamped:   alembic_version is now {SAMPLE_HEAD} (was base)" in done.stdout
    assert "next: invoke current" in done.stdout
    assert version_rows(db_conn) == [SAMPLE_HEAD]
    assert db_conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
    applying, record = [r for r in audit.read(settings) if r["action"] == "recover"]
    assert applying["result"] == "applying" and applying["stamp_to"] == [SAMPLE_HEAD]
    assert applying["from"] == [] and applying["op_id"] == record["op_id"]
    assert record["result"] == "ok" and record["to"] == [SAMPLE_HEAD]
    assert record["previous_version_rows"] == [] and record["version_table_existed"] is False
    assert set(record["revision_hashes"]) == set(SAMPLE_REVS)
    # now consistent: a second run says so and stamps nothing
    again = rec("recover", "--apply", "--yes")
    assert again.returncode == 0 and "[matching]" in again.stdout
    assert "nothing to stamp" in again.stdout


def test_empty_version_table_and_live_database_is_never_written(
    rec, alembic_at, db_conn, database, pg_cluster
):
    alembic_at(SAMPLE_REVS[2])
    db_conn.execute("DELETE FROM alembic_version")
    # Any write to the live database during a read-only recover would fail.
    db_conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    done = rec("recover", "--no-cache")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "built on a scratch database" in done.stdout
    assert match_lines(done.stdout) == [SAMPLE_REVS[2]] and "[no version row]" in done.stdout
    with pg_cluster.connect() as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'dbops_scratch%'")
        assert left.fetchall() == []


def test_unknown_version_id_from_a_reverted_branch(rec, alembic_at, db_conn, settings):
    alembic_at(SAMPLE_REVS[3])
    db_conn.execute("UPDATE alembic_version SET version_num = 'badc0ffee000'")
    done = rec("recover", "--json")
    report = json.loads(done.stdout)
    assert report["version_state"] == "unknown id"
    assert report["unknown_current"] == ["badc0ffee000"]
    assert [m["revision"] for m in report["matches"]] == [SAMPLE_REVS[3]]
    assert report["next"] == "invoke recover --apply"
    done = rec("recover", "--apply", "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("-m dbops.agent") == 1  # inspect, lock and stamp: one agent
    assert version_rows(db_conn) == [SAMPLE_REVS[3]]
    (record,) = audit.read(settings, intents=False)
    assert record["previous_version_rows"] == ["badc0ffee000"] and record["state"] == "unknown id"
    assert "next: invoke migrate" in done.stdout


def test_version_row_behind_the_schema_ddl_applied_by_hand(rec, alembic_at, db_conn):
    alembic_at(SAMPLE_REVS[1])  # comments table; the next revision adds three user columns
    db_conn.execute(
        "ALTER TABLE users ADD COLUMN profile_image varchar(255), "
        "ADD COLUMN last_login timestamptz, ADD COLUMN bio text"
    )
    done = rec("recover")
    assert done.returncode == 0
    assert match_lines(done.stdout) == [SAMPLE_REVS[2]] and "[behind]" in done.stdout
    assert f"{SAMPLE_REVS[2]} applied but not recorded" in done.stdout
    assert rec("recover", "--apply", "--yes").returncode == 0
    assert version_rows(db_conn) == [SAMPLE_REVS[2]]


def test_version_row_ahead_failed_upgrade_that_was_stamped(rec, alembic_at, db_conn, invoke):
    alembic_at(SAMPLE_REVS[3])
    alembic_at("head", how="stamp")  # "the upgrade failed, stamp head and move on"
    done = rec("recover")
    assert match_lines(done.stdout) == [SAMPLE_REVS[3]] and "[ahead]" in done.stdout
    assert f"{SAMPLE_REVS[4]}, {SAMPLE_REVS[5]} recorded but not applied" in done.stdout
    done = rec("recover", "--apply", "--yes")
    assert done.returncode == 0 and version_rows(db_conn) == [SAMPLE_REVS[3]]
    assert "next: invoke migrate" in done.stdout
    # and the missing tables really come back
    assert invoke("migrate", "--no-backup").returncode == 0
    assert db_conn.execute("SELECT to_regclass('user_sessions')").fetchone()[0] == "user_sessions"


def test_drift_shows_the_diff_and_apply_refuses(rec, alembic_at, db_conn, settings):
    alembic_at("head")
    db_conn.execute("ALTER TABLE users DROP COLUMN bio")
    db_conn.execute(
        "UPDATE pg_index SET indisvalid = false "
        "WHERE indexrelid = 'idx_comments_approved'::regclass"
    )
    done = rec("recover")
    assert done.returncode == 1
    assert "NO MATCH:  closest is " + SAMPLE_HEAD in done.stdout
    assert "  - column users.bio missing" in done.stdout
    assert "  - index idx_comments_approved is INVALID" in done.stdout
    assert "Do not stamp" in done.stdout and "next: invoke backup" in done.stdout
    refused = rec("recover", "--apply", "--yes")
    assert refused.returncode != 0
    assert "refusing to stamp: no revision matches the live schema exactly" in refused.stderr
    assert version_rows(db_conn) == [SAMPLE_HEAD] and audit.read(settings) == []


def test_half_applied_revision_is_named(rec, alembic_at, db_conn):
    alembic_at(SAMPLE_REVS[2])  # 23cd436768a8 creates two indexes; only the first one got made
    db_conn.execute("CREATE INDEX idx_comments_post_created ON comments (post_id, created_at)")
    done = rec("recover", "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["matches"] == []
    assert report["half_applied"] == {"after": SAMPLE_REVS[2], "revision": SAMPLE_REVS[3]}
    assert f"it lies between {SAMPLE_REVS[2]} and {SAMPLE_REVS[3]}" in report["verdict"]


def test_consistent_database_needs_nothing(rec, alembic_at):
    alembic_at(SAMPLE_REVS[4])
    done = rec("recover", "--apply", "--yes")
    assert done.returncode == 0 and "[matching]" in done.stdout
    assert "agrees with the schema: nothing to recover" in done.stdout
    assert "nothing to stamp" in done.stdout and "next: invoke migrate" in done.stdout


def test_production_without_a_terminal_needs_yes(rec, alembic_at, db_conn):
    alembic_at(SAMPLE_REVS[0])
    db_conn.execute("DROP TABLE alembic_version")
    prod = {"ENVIRONMENT": "production"}
    refused = rec("recover", "--apply", env=prod)
    assert refused.returncode != 0 and "add --yes" in refused.stderr
    assert version_rows(db_conn, missing=None) is None
    done = rec("recover", "--apply", "--yes", env=prod)
    assert done.returncode == 0 and version_rows(db_conn) == [SAMPLE_REVS[0]]


def test_apply_fails_fast_when_another_operation_holds_the_lock(
    rec, alembic_at, db_conn, pg_cluster, database
):
    alembic_at(SAMPLE_REVS[0])
    db_conn.execute("DELETE FROM alembic_version")
    with pg_cluster.connect("postgres", application_name="other-migrate") as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", lock_key(database))
        done = rec("recover", "--apply", "--yes")
    assert done.returncode != 0
    assert "other-migrate" in done.stderr and "nothing was stamped" in done.stderr
    assert version_rows(db_conn) == []


def test_second_run_uses_the_cache_and_an_edited_revision_invalidates_it(rec, tmp_path):
    import shutil

    copy = tmp_path / "backend"
    shutil.copytree(ROOT / "backend", copy, ignore=shutil.ignore_patterns("__pycache__"))
    env = {"DBOPS_ALEMBIC_INI": str(copy / "alembic.ini")}
    first = rec("recover", env=env)
    second = rec("recover", env=env)
    assert "expected:  from cache" in second.stdout, first.stdout
    path = next((copy / "alembic" / "versions").glob(f"{SAMPLE_REVS[2]}_*.py"))
    path.write_text(path.read_text() + "\n# edited\n")
    third = rec("recover", env=env)
    assert "built on a scratch database" in third.stdout
    # the key: revision ids, parents, file hashes, env.py, server major version
    insp = {
        "server_major": 15,
        "env_sha256": "e",
        "chain": [{"revision": "a", "down_revisions": [], "sha256": "1"}],
    }
    k = recover_op.cache_key(insp)
    assert recover_op.cache_key({**insp, "server_major": 16}) != k
    assert recover_op.cache_key({**insp, "env_sha256": "f"}) != k
    assert recover_op.cache_key({**insp, "chain": [{**insp["chain"][0], "sha256": "2"}]}) != k
    # a torn cache file is rebuilt, not trusted
    bad = tmp_path / "x.json"
    bad.write_text('{"steps": [{"hash": "0", "fingerprint": {}}]}')
    assert recover_op.cache_load(bad) is None


EMPTY_REV = '''"""data only: backfill (no schema change)

Revision ID: e0e0e0e0e0e0
Revises: {head}
"""
revision = "e0e0e0e0e0e0"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
'''


def test_revisions_with_the_same_schema_need_an_explicit_choice(rec, alembic_at, db_conn, tmp_path):
    import shutil

    copy = tmp_path / "backend"
    shutil.copytree(ROOT / "backend", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "alembic" / "versions" / "e0e0e0e0e0e0_backfill.py").write_text(
        EMPTY_REV.format(head=SAMPLE_HEAD)
    )
    env = {"DBOPS_ALEMBIC_INI": str(copy / "alembic.ini")}
    alembic_at(SAMPLE_HEAD)
    db_conn.execute("DROP TABLE alembic_version")
    done = rec("recover", env=env)
    assert match_lines(done.stdout) == [SAMPLE_HEAD, "e0e0e0e0e0e0"] and done.returncode == 0
    refused = rec("recover", "--apply", "--yes", env=env)
    assert refused.returncode != 0 and "say which one with --to" in refused.stderr
    assert version_rows(db_conn, missing=None) is None
    done = rec("recover", "--apply", "--yes", "--to", SAMPLE_HEAD, env=env)
    assert done.returncode == 0, done.stderr
    assert version_rows(db_conn) == [SAMPLE_HEAD] and "next: invoke migrate" in done.stdout


def test_a_role_that_cannot_create_the_scratch_database_is_told_what_to_do(
    rec, alembic_at, db_conn, database, tmp_path
):
    alembic_at(SAMPLE_REVS[1])
    db_conn.execute("CREATE ROLE t_app LOGIN PASSWORD 'pw' NOCREATEDB")
    try:
        db_conn.execute(f'GRANT ALL ON DATABASE "{database}" TO t_app')
        db_conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO t_app")
        done = rec(
            "recover",
            "--no-cache",
            env={
                "POSTGRES_USER": "t_app",
                "POSTGRES_PASSWORD": "pw",
                "DBOPS_CACHE_DIR": str(tmp_path / "c"),
            },
        )
        assert done.returncode != 0
        assert "cannot create a scratch database" in done.stderr
        assert "ALTER ROLE t_app CREATEDB" in done.stderr and "next: POSTGRES_USER=" in done.stderr
    finally:
        db_conn.execute("DROP OWNED BY t_app")
        db_conn.execute("DROP ROLE t_app")


def test_at_a_terminal_the_operator_is_asked(
    settings, alembic_at, db_conn, monkeypatch, recover_cache
):
    from dbops.errors import OpsError

    alembic_at(SAMPLE_REVS[0])
    db_conn.execute("DROP TABLE alembic_version")
    monkeypatch.setattr("dbops.confirm.interactive", lambda: True)
    from dataclasses import replace

    s = replace(settings, raw={**settings.raw, "DBOPS_CACHE_DIR": str(recover_cache)})
    asked = []
    with pytest.raises(OpsError, match="not confirmed"):
        recover_op.recover(s, apply=True, confirm=lambda q: asked.append(q) or False)
    assert version_rows(db_conn, missing=None) is None and "This changes no schema" in asked[0]
    report = recover_op.recover(s, apply=True, confirm=lambda q: True)
    assert report["applied"]["stamped"] and version_rows(db_conn) == [SAMPLE_REVS[0]]


def test_objects_outside_the_managed_schemas_can_be_left_out(rec, alembic_at, db_conn):
    alembic_at(SAMPLE_REVS[2])
    db_conn.execute("DROP TABLE alembic_version")
    db_conn.execute("CREATE SCHEMA dba; CREATE TABLE dba.notes (id int PRIMARY KEY)")
    drift = rec("recover")
    assert drift.returncode == 1 and "  - table dba.notes unexpected" in drift.stdout
    done = rec("recover", env={"DBOPS_RECOVER_SCHEMAS": "public"})
    assert done.returncode == 0 and match_lines(done.stdout) == [SAMPLE_REVS[2]]


def test_branched_history_each_head_is_found(rec, alembic_at, db_conn, tmp_path):
    import shutil

    copy = tmp_path / "backend"
    shutil.copytree(ROOT / "backend", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "alembic" / "versions" / "b0a1c2d3e4f5_add_tag_colour.py").write_text(BRANCH_REV)
    env = {"DBOPS_ALEMBIC_INI": str(copy / "alembic.ini")}
    alembic_at("b0a1c2d3e4f5", ini=copy / "alembic.ini")  # the feature branch, not d93ad…
    db_conn.execute("DROP TABLE alembic_version")
    done = rec("recover", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert match_lines(done.stdout) == ["b0a1c2d3e4f5"]
    assert rec("recover", "--apply", "--yes", env=env).returncode == 0
    assert version_rows(db_conn) == ["b0a1c2d3e4f5"]
