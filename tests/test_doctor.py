"""invoke doctor against real PostgreSQL: each planted problem is named, with the right
next command; what cannot be answered is "unknown", never a crash."""

from __future__ import annotations

import json
import shlex
import shutil

import psycopg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from dbops.agent_client import AgentError
from dbops.config import load_settings
from dbops.ops import doctor as doctor_op
from tests.conftest import ALEMBIC_INI, ROOT

REVS = [r.revision for r in reversed(list(
    ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).walk_revisions()))]
HEAD = REVS[-1]

BRANCH_REV = '''"""add tag colour (on a feature branch)

Revision ID: b0a1c2d3e4f5
Revises: 99e0e8546901
"""
import sqlalchemy as sa
from alembic import op

revision = "b0a1c2d3e4f5"
down_revision = "99e0e8546901"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("tags", sa.Column("colour", sa.String(length=7), nullable=True))


def downgrade():
    op.drop_column("tags", "colour")
'''


@pytest.fixture(scope="session")
def recover_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("doctor-cache")


@pytest.fixture
def doc(invoke, recover_cache):
    def run(*args, env=None):
        done = invoke("doctor", "--json", *args,
                      env={"DBOPS_CACHE_DIR": str(recover_cache), **(env or {})})
        assert done.stdout.strip(), done.stderr  # never a crash
        rep = json.loads(done.stdout)
        rep["rc"] = done.returncode
        rep["by"] = {c["name"]: c for c in rep["checks"]}
        return rep
    return run



@pytest.fixture
def backend_copy(tmp_path):
    dst = tmp_path / "backend"
    shutil.copytree(ROOT / "backend", dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_healthy_database_after_migrate_says_nothing_to_do(doc, invoke):
    assert invoke("migrate").returncode == 0  # takes a verified backup, writes the audit record
    rep = doc()
    assert rep["rc"] == 0
    assert {c["name"]: c["status"] for c in rep["checks"]} == {
        "connectivity": "ok", "heads": "ok", "revision": "ok", "schema": "ok", "indexes": "ok",
        "sessions": "ok", "pg_dump": "ok", "revision files": "ok", "backups": "ok", "audit": "ok"}
    assert rep["next"] == "nothing to do"
    assert "pg_dump 15" in rep["by"]["connectivity"]["summary"]


def test_pending_revisions_and_the_human_screen(doc, alembic_at, invoke, recover_cache):
    alembic_at(REVS[2])
    rep = doc()
    assert rep["by"]["revision"]["status"] == "warn"
    assert rep["pending"] == REVS[3:] and rep["next"] == "invoke migrate"
    assert rep["by"]["schema"]["status"] == "ok"
    assert rep["by"]["backups"]["status"] == "warn"  # none yet: migrate will take one
    done = invoke("doctor", env={"DBOPS_CACHE_DIR": str(recover_cache)})
    screen = done.stdout
    assert screen.splitlines()[-1].startswith("next: invoke migrate")
    assert done.stderr.count("-m dbops.agent") == 1  # one agent process for all of it
    assert len(screen.splitlines()) <= 30


def test_unknown_version_id(doc, alembic_at, db_conn):
    alembic_at(REVS[3])
    db_conn.execute("UPDATE alembic_version SET version_num = 'badc0ffee000'")
    rep = doc()
    assert rep["rc"] == 1 and rep["by"]["revision"]["status"] == "fail"
    assert "badc0ffee000" in rep["by"]["revision"]["summary"]
    assert f"matches {REVS[3]} exactly" in rep["by"]["schema"]["summary"]
    assert rep["next"] == "invoke recover"


def test_populated_database_without_alembic_version(doc, alembic_at, db_conn):
    alembic_at(REVS[1])
    db_conn.execute("DROP TABLE alembic_version")
    rep = doc()
    assert "no alembic_version table" in rep["by"]["revision"]["summary"]
    assert rep["next"] == "invoke recover"


def test_invalid_index_from_a_failed_concurrent_build(doc, alembic_at, db_conn, invoke):
    alembic_at("head")
    db_conn.execute("INSERT INTO users (id, username, email) VALUES (1, 'a', 'a@x')")
    db_conn.execute("INSERT INTO posts (id, title, content, author_id) VALUES (1, 't', 'c', 1)")
    db_conn.execute("INSERT INTO comments (content, author_name, author_email, post_id) "
                    "VALUES ('x', 'same', 'e', 1), ('y', 'same', 'e', 1)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        db_conn.execute("CREATE UNIQUE INDEX CONCURRENTLY uq_comments_author "
                        "ON comments (author_name)")
    rep = doc()
    assert rep["by"]["indexes"]["status"] == "fail"
    assert "uq_comments_author on comments" in rep["by"]["indexes"]["summary"]
    assert rep["next"].startswith("invoke psql ") and rep["next"].endswith(
        "-c 'DROP INDEX CONCURRENTLY IF EXISTS public.uq_comments_author'")
    # The next command, run as printed, fixes it.
    done = invoke(*shlex.split(rep["next"])[1:])
    assert done.returncode == 0, done.stderr
    assert doc()["by"]["indexes"]["status"] == "ok"


def test_idle_in_transaction_session_holding_a_lock_a_pending_migration_needs(
        doc, alembic_at, pg_cluster, database):
    alembic_at(REVS[2])  # pending: 23cd436768a8 creates two indexes on comments
    with pg_cluster.connect(database, application_name="reporting-job") as other:
        other.autocommit = False
        other.execute("SELECT count(*) FROM comments")  # AccessShareLock, then idle in transaction
        pid = other.info.backend_pid
        rep = doc()
        other.rollback()
    s = rep["by"]["sessions"]
    assert s["status"] == "fail" and "comments" in s["summary"]
    assert any(f"pid {pid} 'reporting-job'" in d and "AccessShareLock on comments" in d
               for d in s["details"])
    assert f"SELECT pg_terminate_backend({pid})" in rep["next"]


def test_running_pg_dump_blocks_pending_migrations(doc, alembic_at, pg_cluster, database):
    alembic_at(REVS[4])
    with pg_cluster.connect(database, application_name="pg_dump") as dump:
        dump.autocommit = False
        dump.execute("SELECT 1")  # an open snapshot, as pg_dump holds
        rep = doc()
        dump.rollback()
    assert rep["by"]["pg_dump"]["status"] == "warn"
    assert "pg_dump running" in rep["by"]["pg_dump"]["summary"]
    assert rep["next"].startswith("invoke migrate   (after pg_dump pid")


def test_several_heads_name_the_merge_command(doc, alembic_at, backend_copy):
    ini = backend_copy / "alembic.ini"
    alembic_at("head", ini=ini)
    (backend_copy / "alembic" / "versions" / "b0a1c2d3e4f5_add_tag_colour.py").write_text(BRANCH_REV)
    rep = doc(env={"DBOPS_ALEMBIC_INI": str(ini)})
    assert rep["by"]["heads"]["status"] == "fail"
    assert sorted(rep["heads"]) == sorted(["b0a1c2d3e4f5", HEAD])
    assert " merge -m 'merge heads' " in rep["next"] and "b0a1c2d3e4f5" in rep["next"]
    # the live schema still checks out against its own branch (one pass per head)
    assert rep["by"]["schema"]["status"] == "ok", rep["by"]["schema"]


def test_half_applied_revision_is_dirty(doc, alembic_at, db_conn):
    alembic_at(REVS[2])
    # 23cd436768a8 creates two indexes; the first got created, then the run died
    db_conn.execute("CREATE INDEX idx_comments_post_created ON comments (post_id, created_at)")
    rep = doc()
    sch = rep["by"]["schema"]
    assert sch["status"] == "fail" and sch["half_applied"] == REVS[3]
    assert f"DIRTY: revision {REVS[3]} is half-applied" in sch["summary"]
    assert "index idx_comments_post_created unexpected" in sch["details"]
    assert rep["next"] == "invoke recover"


def test_revision_file_edited_after_it_was_applied(doc, invoke, backend_copy, db_conn):
    ini = backend_copy / "alembic.ini"
    env = {"DBOPS_ALEMBIC_INI": str(ini)}
    assert invoke("migrate", "--no-backup", env=env).returncode == 0
    path = next((backend_copy / "alembic" / "versions").glob(f"{REVS[2]}_*.py"))
    path.write_text(path.read_text().replace('sa.Text()', 'sa.String(length=500)'))
    rep = doc(env=env)
    rf = rep["by"]["revision files"]
    assert rf["status"] == "warn" and REVS[2] in rf["summary"]
    assert rep["next"] == f"git log -p -- {path}"


def test_unreachable_database(doc, ops_env):
    rep = doc(env={"POSTGRES_PORT": "1", "PGCONNECT_TIMEOUT": "2"})
    assert rep["rc"] == 1 and rep["by"]["connectivity"]["status"] == "fail"
    assert rep["next"] == "pg_isready -h 127.0.0.1 -p 1"


def test_unanswerable_parts_degrade_to_unknown(settings, monkeypatch):
    def unreadable(_settings):
        raise PermissionError("backups: permission denied")
    monkeypatch.setattr(doctor_op.catalog, "list_backups", unreadable)
    newest, why = doctor_op.newest_verified_backup(settings)
    assert newest is None and "could not be read" in why

    class NoHashes:  # an agent that cannot answer revisions.hashes
        def call(self, op, **kw):
            raise AgentError("unknown agent op 'revisions.hashes'", "internal", {})
    r = doctor_op.Report(settings)
    doctor_op._edited(r, settings, NoHashes(), {"history": []})
    assert r.checks[0]["status"] == "unknown" and "revisions.hashes" in r.checks[0]["summary"]
    doctor_op._backups(r, load_settings(ROOT, environ={**settings.raw}))
    assert r.checks[1]["status"] == "unknown"
