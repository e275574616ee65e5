"""The touched set of a migration, on real PostgreSQL: each kind of revision gives exactly
the right set or a conservatively larger one, never a smaller one."""

from __future__ import annotations

import pytest

from dbops.agent_client import Agent, AgentError
from dbops.config import load_settings
from dbops.ops.touched import touched_set
from tests.conftest import ROOT
from tests.fixtures.projects import HEADER, SAMPLE_HEAD, make_project, seed

NEW_REV = "7a7a7a000001"

# revision body -> (must be in the set, must NOT be in the set)
CASES = {
    "ddl_only_add_column": (
        """
def upgrade():
    op.add_column("comments", sa.Column("flagged", sa.Boolean(), nullable=True))


def downgrade():
    op.drop_column("comments", "flagged")
""",
        {"public.comments"},
        {"public.users", "public.tags", "public.user_sessions"},
    ),
    "ddl_only_new_table": (
        """
def upgrade():
    op.create_table("notes", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade():
    op.drop_table("notes")
""",
        set(),
        {"public.users", "public.comments", "public.posts", "public.tags"},
    ),
    "op_execute_update": (
        """
def upgrade():
    op.execute("UPDATE tags SET name = upper(name)")


def downgrade():
    pass
""",
        {"public.tags", "public.tag_stats", "public.post_tags"},
        {"public.users", "public.user_sessions"},
    ),
    "orm_data_migration": (
        """
from sqlalchemy import orm


class Base(orm.DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id = sa.Column(sa.Integer, primary_key=True)
    username = sa.Column(sa.String)


def upgrade():
    session = orm.Session(bind=op.get_bind())
    for user in session.query(User):
        user.username = user.username.lower()
    session.flush()


def downgrade():
    pass
""",
        {"public.users", "public.user_sessions"},
        {"public.tags", "public.tag_stats", "public.posts"},
    ),
    "drop_table": (
        """
def upgrade():
    op.drop_table("tag_stats")


def downgrade():
    raise NotImplementedError
""",
        {"public.tag_stats"},
        {"public.users", "public.comments"},
    ),
    "drop_column": (
        """
def upgrade():
    op.drop_column("comments", "author_name")


def downgrade():
    op.add_column("comments", sa.Column("author_name", sa.String(100), nullable=True))
""",
        {"public.comments"},
        {"public.users", "public.tags", "public.tag_stats"},
    ),
    "cascade_parent_to_child": (
        """
def upgrade():
    op.execute("DELETE FROM posts WHERE title = 'spam'")


def downgrade():
    pass
""",
        {"public.posts", "public.comments", "public.post_tags"},
        {"public.tags", "public.tag_stats"},
    ),
}

TRIGGER_SQL = """
CREATE TABLE tag_log (id serial PRIMARY KEY, tag_id int, at timestamptz DEFAULT now());
CREATE FUNCTION log_tag() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO tag_log (tag_id) VALUES (NEW.id); RETURN NEW; END $$;
CREATE TRIGGER tags_log AFTER UPDATE ON tags FOR EACH ROW EXECUTE FUNCTION log_tag();
"""


def project(tmp_path, body: str):
    ini = make_project(tmp_path, patch_models=False)
    versions = ini.parent / "alembic" / "versions"
    (versions / f"{NEW_REV}_case.py").write_text(
        HEADER.format(
            message="case",
            rev=NEW_REV,
            down=SAMPLE_HEAD,
            down_repr=repr(SAMPLE_HEAD),
            labels="None",
        )
        + body
    )
    return ini


def compute(ops_env, ini) -> dict:
    settings = load_settings(ROOT, environ={**ops_env, "DBOPS_ALEMBIC_INI": str(ini)})
    with Agent(settings) as agent:
        agent.call("lock.acquire", purpose="migrate")
        return touched_set(settings, agent, "head", [SAMPLE_HEAD])


@pytest.fixture
def at_head(invoke, db_conn):
    assert invoke("migrate", "--no-backup").returncode == 0
    seed(db_conn)
    return db_conn


def scratch_left(db_conn) -> list:
    return db_conn.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE 'dbops_scratch_touched_%'"
    ).fetchall()


@pytest.mark.parametrize("case", sorted(CASES))
def test_touched_set(at_head, case, tmp_path, ops_env):
    body, must, must_not = CASES[case]
    before = at_head.execute("SELECT count(*), max(username) FROM users").fetchone()
    ts = compute(ops_env, project(tmp_path, body))
    assert ts["full"] is None, ts["full"]
    got = set(ts["tables"])
    assert must <= got, (case, sorted(got), ts["relations"])
    assert not (must_not & got), (case, sorted(got), ts["relations"])
    # The live database was only read: still at the old head, same rows, no scratch left.
    assert at_head.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SAMPLE_HEAD
    assert at_head.execute("SELECT count(*), max(username) FROM users").fetchone() == before
    assert scratch_left(at_head) == []


@pytest.mark.usefixtures("at_head")
def test_sequences_of_touched_tables_are_in_the_set(tmp_path, ops_env):
    ts = compute(ops_env, project(tmp_path, CASES["op_execute_update"][0]))
    assert "public.tags_id_seq" in ts["sequences"]
    assert "public.users_id_seq" not in ts["sequences"]


def test_trigger_writing_another_table(at_head, tmp_path, ops_env):
    at_head.execute(TRIGGER_SQL)
    ts = compute(ops_env, project(tmp_path, CASES["op_execute_update"][0]))
    assert ts["full"] is None
    assert {"public.tags", "public.tag_log"} <= set(ts["tables"])
    assert "trigger tags_log" in ts["relations"]["public.tag_log"]


def test_trigger_with_dynamic_sql_falls_back_to_full(at_head, tmp_path, ops_env):
    at_head.execute("""
        CREATE FUNCTION dyn() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN EXECUTE 'UPDATE ' || TG_ARGV[0] || ' SET x = 1'; RETURN NEW; END $$;
        CREATE TRIGGER tags_dyn AFTER UPDATE ON tags FOR EACH ROW EXECUTE FUNCTION dyn('elsewhere');
    """)
    ts = compute(ops_env, project(tmp_path, CASES["op_execute_update"][0]))
    assert ts["full"] and "dynamic SQL" in ts["full"]


@pytest.mark.usefixtures("at_head")
def test_a_migration_that_fails_on_the_empty_copy_falls_back_to_full(at_head, tmp_path, ops_env):
    ts = compute(
        ops_env,
        project(
            tmp_path,
            """
def upgrade():
    op.execute("DO $$ BEGIN IF (SELECT count(*) FROM users) = 0 THEN RAISE EXCEPTION 'no rows'; END IF; END $$")


def downgrade():
    pass
""",  # noqa: E501
        ),
    )
    assert ts["full"] and "failed on the schema-only copy" in ts["full"]
    assert scratch_left(at_head) == []


def test_a_killed_runs_scratch_copy_is_swept_by_the_next(
    tmp_path, ops_env, at_head, pg_cluster, monkeypatch
):
    from dbops.agent.touched import _scratch_purpose

    for k in ("POSTGRES_USER", "POSTGRES_DB"):
        monkeypatch.setenv(k, ops_env[k])
    leftover = f"dbops_scratch_{_scratch_purpose()}_deadbeef"
    other = "dbops_scratch_touched_otherdb0000_deadbeef"  # another database's: not ours to drop
    for name in (leftover, other):
        pg_cluster.create_database(name)
    try:
        compute(ops_env, project(tmp_path, CASES["ddl_only_add_column"][0]))
        left = [r[0] for r in scratch_left(at_head)]
        assert left == [other]
    finally:
        with pg_cluster.connect() as conn:
            for name in (leftover, other):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_partitions_of_a_touched_partitioned_table(at_head, tmp_path, ops_env):
    at_head.execute(
        """
        CREATE TABLE events (id int, at date, x int) PARTITION BY RANGE (at);
        CREATE TABLE events_2025 PARTITION OF events """
        """FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        CREATE TABLE events_2026 PARTITION OF events """
        """FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
    """
    )
    ts = compute(
        ops_env,
        project(
            tmp_path,
            """
def upgrade():
    op.execute("UPDATE events SET x = 1 WHERE at >= '2026-06-01'")


def downgrade():
    pass
""",
        ),
    )
    assert ts["full"] is None
    # pruning leaves events_2025 unlocked on the empty copy: the closure adds every partition
    assert {"public.events", "public.events_2025", "public.events_2026"} <= set(ts["tables"])
    assert "public.events" not in ts["excluded_tables"]


# what a rollback would put back: lost by the upgrade, not given back by the downgrade
LOSSY = {
    "ddl_only_add_column": (set(), {"public.comments"}),
    "ddl_only_new_table": (set(), {"public.users"}),
    "op_execute_update": (
        {"public.tags", "public.tag_stats", "public.post_tags"},
        {"public.users"},
    ),
    "orm_data_migration": ({"public.users", "public.user_sessions"}, {"public.tags"}),
    "drop_column": ({"public.comments"}, {"public.users"}),
    "drop_table": ({"public.tag_stats"}, {"public.users"}),
    "cascade_parent_to_child": (
        {"public.posts", "public.comments", "public.post_tags"},
        {"public.tags"},
    ),
}


@pytest.mark.parametrize("case", sorted(LOSSY))
@pytest.mark.usefixtures("at_head")
def test_what_a_rollback_would_put_back(case, tmp_path, ops_env):
    must, must_not = LOSSY[case]
    ts = compute(ops_env, project(tmp_path, CASES[case][0]))
    got = set(ts["lossy"])
    assert must <= got, (case, ts["lossy"])
    assert not (must_not & got), (case, ts["lossy"])
    assert got <= set(ts["relations"])


def test_the_drop_handlers_drop_only_their_own_scratch_databases(ops_env, db_conn):
    settings = load_settings(ROOT, environ=ops_env)
    with Agent(settings) as agent:
        name = agent.call("restore.scratch")["name"]  # dbops_scratch_restoretest_…
        with pytest.raises(AgentError, match="not a touched-set scratch") as refused:
            agent.call("touched.drop", name=name)
        assert refused.value.kind == "internal"
        with pytest.raises(AgentError, match="not a scratch database"):
            agent.call("restore.scratch_drop", name=settings.database)
        assert agent.call("restore.scratch_drop", name=name) == {"dropped": name}
    left = db_conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name])
    assert left.fetchone()[0] == 0
