"""The rehearsal's instrumentation and verdicts on a table of 1M rows: one revision per kind,
each asserting the lock mode seen on the big table, the rewrite flag and the verdict.

The big table is built ONCE per session in a template database (generate_series) and each
test gets a copy by CREATE DATABASE … TEMPLATE, named as a rehearsal copy of the test's
(empty) live database, then runs the agent's rehearse.run on it as `invoke rehearse` does."""

from __future__ import annotations

import textwrap
import uuid

import pytest
from psycopg import sql

from dbops.agent.rehearse import prefix_for
from dbops.agent_client import Agent
from dbops.config import load_settings
from dbops.ops.rehearse_verdict import judge
from tests.conftest import ROOT

ROWS = 1_000_000

TEMPLATE_SQL = f"""
CREATE TABLE parent (id int PRIMARY KEY);
INSERT INTO parent SELECT g FROM generate_series(0, 999) g;
CREATE TABLE big (id int PRIMARY KEY, a int NOT NULL, b text, pid int);
INSERT INTO big SELECT g, g % 1000, 'x' || (g % 97), g % 1000 FROM generate_series(1, {ROWS}) g;
ALTER TABLE big ADD CONSTRAINT big_a_nonneg CHECK (a >= 0) NOT VALID;
VACUUM ANALYZE big;
"""

ENV_PY = """
import os
from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

engine = create_engine(os.environ["DATABASE_URL"], poolclass=NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

REVISION = """
from alembic import op
import sqlalchemy as sa

revision = "r0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
{body}


def downgrade():
    pass
"""


def sql_body(*statements: str) -> str:
    return "\n".join(f"    op.execute({s!r})" for s in statements)


def autocommit_body(*statements: str) -> str:
    return "    with op.get_context().autocommit_block():\n" + "\n".join(
        f"        op.execute({s!r})" for s in statements
    )


BATCHES = [
    f"UPDATE big SET b = b WHERE id > {i} AND id <= {i + 50_000}" for i in range(0, 200_000, 50_000)
]

# kind: (upgrade body, the lock mode on public.big, rewritten, the pattern flagged or None)
CORPUS = {
    "volatile_default": (
        sql_body("ALTER TABLE big ADD COLUMN r float8 DEFAULT random()"),
        "AccessExclusiveLock",
        True,
        "volatile_default",
    ),
    "alter_type": (
        sql_body("ALTER TABLE big ALTER COLUMN a TYPE bigint"),
        "AccessExclusiveLock",
        True,
        "alter_type",
    ),
    "set_not_null": (
        sql_body("ALTER TABLE big ALTER COLUMN b SET NOT NULL"),
        "AccessExclusiveLock",
        False,
        "set_not_null",
    ),
    "fk_validated": (
        sql_body(
            "ALTER TABLE big ADD CONSTRAINT big_pid_fk FOREIGN KEY (pid) REFERENCES parent (id)"
        ),
        "ShareRowExclusiveLock",
        False,
        "fk_validated",
    ),
    "check_validated": (
        sql_body("ALTER TABLE big ADD CONSTRAINT big_a_small CHECK (a < 5000)"),
        "AccessExclusiveLock",
        False,
        "check_validated",
    ),
    "index": (
        sql_body("CREATE INDEX big_a_idx ON big (a)"),
        "ShareLock",
        False,
        "index_not_concurrent",
    ),
    "add_unique": (
        sql_body("ALTER TABLE big ADD CONSTRAINT big_id_a_key UNIQUE (id, a)"),
        "AccessExclusiveLock",
        False,
        "add_unique",
    ),
    "backfill": (sql_body("UPDATE big SET b = b || '.'"), "RowExclusiveLock", False, "backfill"),
    "rewrite": (sql_body("CLUSTER big USING big_pkey"), "AccessExclusiveLock", True, "rewrite"),
    "drop_column": (
        sql_body("ALTER TABLE big DROP COLUMN b"),
        "AccessExclusiveLock",
        False,
        "drop_column",
    ),
    "rename_column": (
        sql_body("ALTER TABLE big RENAME COLUMN b TO bb"),
        "AccessExclusiveLock",
        False,
        "rename_column",
    ),
    # safe
    "nullable_column": (
        sql_body("ALTER TABLE big ADD COLUMN n int"),
        "AccessExclusiveLock",
        False,
        None,
    ),
    "constant_default": (
        sql_body("ALTER TABLE big ADD COLUMN k int DEFAULT 7"),
        "AccessExclusiveLock",
        False,
        None,
    ),
    "index_concurrently": (
        autocommit_body("CREATE INDEX CONCURRENTLY big_a_cidx ON big (a)"),
        None,
        False,
        None,
    ),
    "fk_not_valid": (
        sql_body(
            "ALTER TABLE big ADD CONSTRAINT big_pid_fk FOREIGN KEY (pid) "
            "REFERENCES parent (id) NOT VALID"
        ),
        "ShareRowExclusiveLock",
        False,
        None,
    ),
    "validate_constraint": (
        sql_body("ALTER TABLE big VALIDATE CONSTRAINT big_a_nonneg"),
        "ShareUpdateExclusiveLock",
        False,
        None,
    ),
    "batched_backfill": (autocommit_body(*BATCHES), None, False, None),
}
RISKY = {k for k, v in CORPUS.items() if v[3]}


@pytest.fixture(scope="session")
def big_template(pg_cluster):
    name = f"t_rehearse_tpl_{uuid.uuid4().hex[:6]}"
    pg_cluster.create_database(name)
    with pg_cluster.connect(name) as conn:
        for stmt in TEMPLATE_SQL.strip().split(";\n"):
            conn.execute(stmt)
    yield name
    with pg_cluster.connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def project(tmp_path, body: str):
    (tmp_path / "proj" / "versions").mkdir(parents=True)
    ini = tmp_path / "proj" / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = %(here)s\n")
    (tmp_path / "proj" / "env.py").write_text(ENV_PY)
    (tmp_path / "proj" / "script.py.mako").write_text("")
    (tmp_path / "proj" / "versions" / "r0001.py").write_text(
        textwrap.dedent(REVISION).replace("{body}", body)
    )
    return ini


def rehearse_kind(pg_cluster, big_template, database, ops_env, tmp_path, body: str) -> dict:
    ini = project(tmp_path, body)
    settings = load_settings(ROOT, environ={**ops_env, "DBOPS_ALEMBIC_INI": str(ini)})
    copy = f"{prefix_for(database)}{uuid.uuid4().hex[:8]}"
    with pg_cluster.connect() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(copy), sql.Identifier(big_template)
            )
        )
    try:
        with Agent(settings) as agent:
            res = agent.call("rehearse.run", name=copy, revisions=["r0001"], lock_timeout="5s")
    finally:
        with pg_cluster.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy))
            )
    assert len(res["revisions"]) == 1
    return judge(res["revisions"][0])


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_corpus(kind, pg_cluster, big_template, database, ops_env, tmp_path):
    body, mode, rewritten, pattern = CORPUS[kind]
    rev = rehearse_kind(pg_cluster, big_template, database, ops_env, tmp_path, body)
    assert rev["error"] is None, rev["error"]
    modes = {lk["mode"] for lk in rev["locks"] if lk["relation"] == "public.big"}
    if mode:
        assert mode in modes, (kind, modes)
    else:  # ran outside a transaction: no relation lock outlives its statement
        assert not modes & {"AccessExclusiveLock", "ShareLock"}, (kind, modes)
    assert bool(rev["rewrites"]) == rewritten, (kind, rev["rewrites"])
    keys = [p["key"] for p in rev["patterns"]]
    if pattern:
        assert rev["flagged"] and pattern in keys, (kind, keys, rev["verdict"])
        assert all(p["safer"] for p in rev["patterns"])
    else:
        assert not rev["flagged"] and keys == [], (kind, keys, rev["verdict"])
    if rewritten:
        assert rev["rewrites"][0]["relation"] == "public.big"
        assert rev["rewrites"][0]["rows"] >= ROWS * 0.9
        assert rev["rewrite_bytes"] > 30_000_000
        assert "rewrites" in rev["verdict"]
    if kind in (
        "alter_type",
        "rewrite",
        "volatile_default",
    ):  # a rewrite of 1M rows: readers feel it
        assert rev["blocks_reads_s"] >= 0.2, rev
        assert rev["probe"]["public.big"]["read_blocked_s"] > 0.1, rev["probe"]
    if kind in ("index", "backfill"):  # writers wait, readers do not
        assert rev["probe"]["public.big"]["write_blocked_s"] > 0.1, rev["probe"]
        assert rev["probe"]["public.big"]["read_blocked_s"] < 0.1, rev["probe"]
    if kind in ("index_concurrently", "batched_backfill", "nullable_column", "constant_default"):
        # a batch holds its rows' locks for its own duration only (a fraction of a second)
        assert rev["blocks_reads_s"] < 0.5 and rev["blocks_writes_s"] < 1.5, rev["verdict"]
    statements = [s for s in rev["statements"] if "big" in s["sql"]]
    assert statements and all(s["seconds"] is not None for s in statements)
