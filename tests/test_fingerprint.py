"""The schema fingerprint against real PostgreSQL: equal schemas give equal fingerprints
(whatever the database, the OIDs or the column order), any DDL difference changes it, and
the diff reads as sentences."""

from __future__ import annotations

import sys

import pytest
from alembic import command
from alembic.config import Config
from psycopg import sql

from dbops.agent import fingerprint as F
from tests.conftest import ALEMBIC_INI, ROOT


def upgrade(monkeypatch, ops_env, database, rev="head", ini=ALEMBIC_INI):
    for k, v in ops_env.items():
        if k.startswith("POSTGRES_"):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("POSTGRES_DB", database)
    command.upgrade(Config(str(ini)), rev)


@pytest.fixture
def second_db(pg_cluster):
    name = "t_fp_second"
    pg_cluster.create_database(name)
    yield name
    with pg_cluster.connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_migrations_and_models_give_the_same_fingerprint_in_another_database(
    pg_cluster, database, second_db, ops_env, monkeypatch, db_conn, create_all
):
    upgrade(monkeypatch, ops_env, database)
    # The same schema made another way (create_all: other OIDs, other column order) elsewhere.
    create_all(second_db)
    with pg_cluster.connect(second_db) as other:
        a, b = F.collect(db_conn), F.collect(other)
    assert F.diff(a, b) == []
    assert F.digest(a) == F.digest(b)
    assert "alembic_version" not in a["tables"]
    assert set(a["tables"]) == {
        "users",
        "posts",
        "tags",
        "post_tags",
        "comments",
        "tag_stats",
        "user_sessions",
    }
    assert a["tables"]["users"]["columns"]["bio"] == {
        "type": "text",
        "nullable": True,
        "default": None,
        "identity": None,
        "generated": None,
        "collation": None,
    }
    assert a["indexes"]["idx_comments_approved"]["valid"] is True
    assert a["constraints"]["comments.fk_comments_post_id_posts"]["type"] == "foreign key"
    assert a["sequences"]["users_id_seq"]["owned_by"] == "users.id"


def test_column_order_is_irrelevant(db_conn, pg_cluster, second_db):
    db_conn.execute("CREATE TABLE t (a int NOT NULL, b text DEFAULT 'x')")
    with pg_cluster.connect(second_db) as other:
        other.execute("CREATE TABLE t (b text DEFAULT 'x', a int NOT NULL)")
        assert F.digest(F.collect(db_conn)) == F.digest(F.collect(other))


BASE_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE TABLE p (id serial PRIMARY KEY, name varchar(50) NOT NULL, m mood, n int DEFAULT 0);
CREATE TABLE c (id int PRIMARY KEY, p_id int REFERENCES p(id), body text);
CREATE INDEX ix_c_p ON c (p_id);
CREATE VIEW v AS SELECT id, name FROM p;
CREATE SEQUENCE s START 10;
"""

CHANGES = [
    "ALTER TABLE p ADD COLUMN extra int",
    "ALTER TABLE p DROP COLUMN n",
    "ALTER TABLE p ALTER COLUMN n TYPE bigint",
    "ALTER TABLE p ALTER COLUMN name DROP NOT NULL",
    "ALTER TABLE p ALTER COLUMN n SET DEFAULT 1",
    "ALTER TABLE p ADD CONSTRAINT uq_p_name UNIQUE (name)",
    "ALTER TABLE p ADD CONSTRAINT ck_p_n CHECK (n >= 0)",
    "ALTER TABLE c ADD CONSTRAINT ck_c CHECK (id > 0) NOT VALID",
    "ALTER TABLE c DROP CONSTRAINT c_p_id_fkey",
    "ALTER TABLE c DROP CONSTRAINT c_p_id_fkey, ADD CONSTRAINT c_p_id_fkey FOREIGN KEY (p_id) "
    "REFERENCES p(id) ON DELETE CASCADE",
    "CREATE INDEX ix_p_name ON p (name)",
    "DROP INDEX ix_c_p; CREATE UNIQUE INDEX ix_c_p ON c (p_id)",
    "DROP INDEX ix_c_p; CREATE INDEX ix_c_p ON c (p_id, id)",
    "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_c_p'::regclass",
    "ALTER INDEX ix_c_p RENAME TO ix_c_p2",
    "CREATE SEQUENCE s2",
    "ALTER SEQUENCE s INCREMENT BY 5",
    "ALTER TYPE mood ADD VALUE 'happy'",
    "CREATE TYPE other AS ENUM ('a')",
    "CREATE OR REPLACE VIEW v AS SELECT id, name, m FROM p",
    "CREATE MATERIALIZED VIEW mv AS SELECT 1 AS x",
    "CREATE TABLE z (id int)",
    "CREATE SCHEMA extra; CREATE TABLE extra.p (id int)",
    "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'; "
    "CREATE TRIGGER trg BEFORE INSERT ON p FOR EACH ROW EXECUTE FUNCTION f()",
]


def test_every_ddl_difference_changes_the_fingerprint(db_conn):
    db_conn.execute(BASE_DDL)
    base = F.collect(db_conn)
    seen = {F.digest(base)}
    for ddl in CHANGES:
        with db_conn.transaction(force_rollback=True):
            db_conn.execute(ddl)
            changed = F.collect(db_conn)
        assert F.digest(changed) not in seen, ddl
        assert F.diff(base, changed), ddl
        seen.add(F.digest(changed))
    # Data and the version table are not schema.
    db_conn.execute("INSERT INTO p (name) VALUES ('a'); SELECT nextval('s')")
    db_conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    db_conn.execute("INSERT INTO alembic_version VALUES ('abc')")
    assert F.digest(F.collect(db_conn)) == F.digest(base)


def test_the_diff_reads_as_sentences(db_conn, ops_env, monkeypatch, database):
    upgrade(monkeypatch, ops_env, database)
    expected = F.collect(db_conn)
    db_conn.execute("ALTER TABLE users DROP COLUMN bio")
    db_conn.execute(
        "UPDATE pg_index SET indisvalid = false "
        "WHERE indexrelid = 'idx_comments_approved'::regclass"
    )
    db_conn.execute("ALTER TABLE posts ALTER COLUMN title TYPE text")
    db_conn.execute("ALTER TABLE tags ADD COLUMN color varchar(7)")
    db_conn.execute("DROP TABLE user_sessions")
    db_conn.execute("CREATE INDEX ix_tags_color ON tags (color)")
    got = F.diff(expected, F.collect(db_conn))
    assert "column users.bio missing" in got
    assert "index idx_comments_approved is INVALID" in got
    assert "column posts.title is text, expected character varying(200)" in got
    assert "column tags.color unexpected" in got
    assert "table user_sessions missing" in got
    assert "index ix_tags_color unexpected" in got
    # the objects of a missing table are not listed one by one
    assert not [s for s in got if "user_sessions" in s and not s.startswith("table ")]


def test_host_side_import_needs_only_the_standard_library():
    code = (
        "import sys; import dbops.agent.fingerprint as f; "
        "bad = [m for m in ('psycopg', 'alembic', 'sqlalchemy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
