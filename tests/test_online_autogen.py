"""Autogenerate writes the online operations (dbops/agent/online_revision.py, real PostgreSQL):
models that add an index, a foreign key, a unique constraint, a NOT NULL column with a volatile
default and SET NOT NULL to a table with rows; the revision file's text is read, then the
revision is upgraded (the database then matches the models: alembic's check is empty) and
downgraded (the schema fingerprint is back). Small tables keep the plain operations; --online
forces every existing table; a table the revision creates stays plain. Through the agent and
`invoke revision` too, and the env.py hook of docs/online.md."""

from __future__ import annotations

import re
import shutil
import textwrap

import pytest

from dbops.agent.fingerprint import collect, digest
from dbops.agent.online_revision import OnlineRevision
from dbops.config import load_settings
from dbops.errors import OpsError
from dbops.ops.new_revision import new_revision
from tests.conftest import ROOT

ENV_PY = """
import os, sys
sys.path.insert(0, os.path.dirname(__file__))
from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool
from models import metadata
{hook_import}

url = context.config.get_main_option("sqlalchemy.url") or os.environ["DATABASE_URL"]
engine = create_engine(url, poolclass=NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata{hook})
    with context.begin_transaction():
        context.run_migrations()
"""

BASE = '''
"""base"""
from alembic import op

revision = "r0001"
down_revision = None


def upgrade():
    op.execute("CREATE TABLE parent (id int PRIMARY KEY)")
    op.execute("CREATE TABLE orders (id int PRIMARY KEY, customer_id int, note text)")
    op.execute("CREATE TABLE tags (id int PRIMARY KEY, label text)")


def downgrade():
    op.execute("DROP TABLE tags, orders, parent")
'''

MODELS = """
import sqlalchemy as sa

metadata = sa.MetaData()
sa.Table("parent", metadata, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False))
sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("parent.id"), index=True),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("token", sa.Uuid, nullable=False, server_default=sa.text("gen_random_uuid()")),
    sa.Column("score", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.UniqueConstraint("note", name="uq_orders_note"),
)
sa.Table(
    "tags",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("label", sa.Text, index=True),
)
sa.Table("fresh", metadata, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("a", sa.Integer, index=True))
"""

ROWS_SQL = """
INSERT INTO parent SELECT g FROM generate_series(0, 9) g;
INSERT INTO orders SELECT g, g % 10, 'n' || g FROM generate_series(1, 3000) g;
INSERT INTO tags SELECT g, 't' || g FROM generate_series(1, 20) g;
ANALYZE parent, orders, tags
"""


def url(pg_cluster, database) -> str:
    return (
        f"postgresql+psycopg://{pg_cluster.user}:{pg_cluster.password}"
        f"@127.0.0.1:{pg_cluster.port}/{database}"
    )


def make_project(tmp_path, *, env_hook: bool = False):
    folder = tmp_path / "proj"
    (folder / "versions").mkdir(parents=True)
    (folder / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n")
    hook_import = "from dbops.online_autogen import process_revision_directives" if env_hook else ""
    hook = ", process_revision_directives=process_revision_directives" if env_hook else ""
    (folder / "env.py").write_text(
        ENV_PY.replace("{hook_import}", hook_import).replace("{hook}", hook)
    )
    shutil.copy(ROOT / "backend" / "alembic" / "script.py.mako", folder / "script.py.mako")
    (folder / "models.py").write_text(textwrap.dedent(MODELS))
    (folder / "versions" / "r0001_base.py").write_text(BASE)
    return folder / "alembic.ini"


def config(ini, pg_cluster, database):
    from alembic.config import Config

    cfg = Config(str(ini))
    cfg.set_main_option("sqlalchemy.url", url(pg_cluster, database).replace("%", "%%"))
    return cfg


@pytest.fixture
def project(tmp_path, pg_cluster, database):
    from alembic import command

    ini = make_project(tmp_path)
    command.upgrade(config(ini, pg_cluster, database), "head")
    with pg_cluster.connect(database) as conn:
        for stmt in ROWS_SQL.strip().split(";\n"):
            conn.execute(stmt)
    return ini


def generate(ini, pg_cluster, database, **hook_kw) -> tuple[str, OnlineRevision]:
    from alembic import command

    hook = OnlineRevision(**hook_kw)
    script = command.revision(
        config(ini, pg_cluster, database),
        message="add things",
        autogenerate=True,
        rev_id="r0002",
        process_revision_directives=hook,
    )
    return open(script.path).read(), hook


def section(text: str, name: str) -> str:
    return text.split(f"def {name}() -> None:")[1].split("\ndef ")[0]


def test_big_table_gets_the_online_operations_and_the_revision_runs(project, pg_cluster, database):
    from alembic import command

    text, hook = generate(project, pg_cluster, database, force=False, min_rows=1000)
    up, down = section(text, "upgrade"), section(text, "downgrade")
    assert "import dbops.online  # noqa: F401" in text
    assert "op.create_index_online('ix_orders_customer_id', 'orders', ['customer_id'])" in up
    assert (
        "op.add_foreign_key_online('orders_customer_id_fkey', 'orders', 'parent', "
        "['customer_id'], ['id'])" in up
    )
    assert "op.add_unique_online('uq_orders_note', 'orders', ['note'])" in up
    assert "op.set_not_null_online('orders', 'note')" in up
    assert re.search(r"op\.add_column_online\('orders', sa\.Column\('token', sa\.Uuid\(\)", up)
    # a constant default: PostgreSQL adds it without touching a row, the plain form stays
    assert re.search(r"op\.add_column\('orders', sa\.Column\('score'", up)
    # 20 rows: plain; a table this revision creates: plain
    assert "op.create_index(op.f('ix_tags_label'), 'tags', ['label'], unique=False)" in up
    assert "op.create_index(op.f('ix_fresh_a'), 'fresh'" in up
    assert "op.drop_index_online('ix_orders_customer_id', 'orders')" in down
    assert "op.drop_constraint_online('orders_customer_id_fkey', 'orders')" in down
    assert "op.drop_constraint_online('uq_orders_note', 'orders')" in down
    assert {(r["table"], r["online"]) for r in hook.rewritten} == {
        ("orders", "create_index_online"),
        ("orders", "add_foreign_key_online"),
        ("orders", "add_unique_online"),
        ("orders", "set_not_null_online"),
        ("orders", "add_column_online"),
        ("orders", "drop_index_online"),
        ("orders", "drop_constraint_online"),
    }
    assert all(r["rows"] == 3000 for r in hook.rewritten)

    cfg = config(project, pg_cluster, database)
    with pg_cluster.connect(database) as conn:
        before = digest(collect(conn))
    command.upgrade(cfg, "head")
    command.check(cfg)  # the database now matches the models: no diff left
    with pg_cluster.connect(database) as conn:
        assert conn.execute(
            "SELECT count(*) FROM orders WHERE token IS NULL OR score <> 0"
        ).fetchone() == (0,)
        assert conn.execute("SELECT count(DISTINCT token) FROM orders").fetchone() == (
            3000,
        )  # volatile: one value per row, not one for all
        assert conn.execute(
            "SELECT bool_and(convalidated) FROM pg_constraint WHERE conrelid = 'orders'::regclass"
        ).fetchone() == (True,)
        assert conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone() == (0,)
    command.downgrade(cfg, "r0001")
    with pg_cluster.connect(database) as conn:
        assert digest(collect(conn)) == before


def test_online_forces_every_existing_table_but_not_a_new_one(project, pg_cluster, database):
    text, hook = generate(project, pg_cluster, database, force=True, min_rows=10**9)
    up = section(text, "upgrade")
    assert "op.create_index_online('ix_tags_label', 'tags', ['label'])" in up
    assert "op.create_index_online('ix_orders_customer_id', 'orders', ['customer_id'])" in up
    assert "op.create_index(op.f('ix_fresh_a'), 'fresh'" in up
    assert ("tags", 20) in {(r["table"], r["rows"]) for r in hook.rewritten}


def test_below_the_threshold_nothing_changes(project, pg_cluster, database):
    text, hook = generate(project, pg_cluster, database, force=False, min_rows=3001)
    assert hook.rewritten == []
    assert "_online" not in text and "import dbops.online" not in text


def test_never_analyzed_table_is_counted(project, pg_cluster, database):
    """reltuples -1 (no ANALYZE, no VACUUM yet): the rows are counted, up to the threshold."""
    with pg_cluster.connect(database) as conn:
        conn.execute("CREATE TABLE other (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO other SELECT g, g FROM generate_series(1, 1500) g")
        assert conn.execute(
            "SELECT reltuples FROM pg_class WHERE relname = 'other'"
        ).fetchone() == (-1,)
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        from dbops.agent.online_revision import _rows

    engine = create_engine(url(pg_cluster, database), poolclass=NullPool)
    with engine.connect() as c:
        assert _rows(c, "other", None, 1000) == 1000  # stopped at the threshold
        assert _rows(c, "other", None, 5000) == 1500
        assert _rows(c, "missing", None, 1000) is None


def test_env_py_hook_reads_the_threshold_from_the_environment(
    tmp_path, pg_cluster, database, monkeypatch
):
    from alembic import command

    ini = make_project(tmp_path, env_hook=True)
    cfg = config(ini, pg_cluster, database)
    command.upgrade(cfg, "head")
    with pg_cluster.connect(database) as conn:
        for stmt in ROWS_SQL.strip().split(";\n"):
            conn.execute(stmt)
    monkeypatch.setenv("DBOPS_ONLINE_MIN_ROWS", "1000")
    script = command.revision(cfg, message="m", autogenerate=True, rev_id="r0002")
    up = section(open(script.path).read(), "upgrade")
    assert "op.create_index_online('ix_orders_customer_id'" in up
    assert "op.create_index(op.f('ix_tags_label')" in up


def test_invoke_revision_through_the_agent(project, pg_cluster, database, ops_env):
    settings = load_settings(
        ROOT, environ={**ops_env, "DBOPS_ALEMBIC_INI": str(project), "DBOPS_ONLINE_MIN_ROWS": "0"}
    )
    lines: list[str] = []
    res = new_revision(settings, "add things", online=False, out=lines.append)
    text = open(res["path"]).read()
    assert "op.create_index_online('ix_tags_label', 'tags', ['label'])" in text  # 0: all
    assert res["path"].startswith(str(project.parent / "versions"))
    assert any(line.startswith("online: orders (~3,000 rows)") for line in lines)
    assert lines[-1].startswith(f"wrote {res['path']}")


def test_invoke_revision_refuses_an_empty_message(project, pg_cluster, database, ops_env):
    settings = load_settings(ROOT, environ={**ops_env, "DBOPS_ALEMBIC_INI": str(project)})
    with pytest.raises(OpsError, match="needs a message"):
        new_revision(settings, "  ", out=lambda _line: None)
    assert sorted(p.name for p in (project.parent / "versions").glob("*.py")) == ["r0001_base.py"]


def test_invoke_revision_refuses_when_the_database_is_behind(
    tmp_path, pg_cluster, database, ops_env
):
    """alembic's own refusal (the database is not at head) says so; no file is written."""
    ini = make_project(tmp_path)
    settings = load_settings(ROOT, environ={**ops_env, "DBOPS_ALEMBIC_INI": str(ini)})
    with pytest.raises(OpsError, match="Target database is not up to date.*No revision file"):
        new_revision(settings, "x", out=lambda _line: None)
    assert [p.name for p in (ini.parent / "versions").glob("*.py")] == ["r0001_base.py"]


def test_host_file_is_next_to_the_other_revisions(project, ops_env, tmp_path):
    """compose / kubernetes: the agent wrote the file in its container; the host puts the text
    at the same place under its own script directory (none found: refused, nothing written)."""
    from dbops.ops.new_revision import host_file

    settings = load_settings(ROOT, environ={**ops_env, "DBOPS_ALEMBIC_INI": str(project)})
    assert host_file(settings, "versions/r0002_x.py") == project.parent / "versions/r0002_x.py"
    empty = tmp_path / "nowhere"
    empty.mkdir()
    lost = load_settings(
        empty, environ={k: v for k, v in ops_env.items() if k != "DBOPS_ALEMBIC_INI"}
    )
    if lost.alembic_ini is None:
        with pytest.raises(OpsError, match="no alembic.ini was found here"):
            host_file(lost, "versions/r0002_x.py")


def test_add_column_online_takes_a_string_default_as_a_literal(
    pg_cluster, database, tmp_path, monkeypatch
):
    """sa.Column(server_default="new") is the literal 'new' (as SQLAlchemy writes it), for the
    default of new rows and for the backfill of the existing ones."""
    from alembic import command

    from tests.test_online import make_project as online_project

    monkeypatch.setenv("DATABASE_URL", url(pg_cluster, database))
    with pg_cluster.connect(database) as conn:
        conn.execute("CREATE TABLE s (id int PRIMARY KEY)")
        conn.execute("INSERT INTO s SELECT generate_series(1, 50)")
    ini = online_project(
        tmp_path,
        'op.add_column_online("s", sa.Column("state", sa.Text, nullable=False, '
        'server_default="new"))',
    )
    command.upgrade(config(ini, pg_cluster, database), "head")
    with pg_cluster.connect(database) as conn:
        conn.execute("INSERT INTO s (id) VALUES (51)")
        assert conn.execute("SELECT count(*) FROM s WHERE state = 'new'").fetchone() == (51,)


def test_invoke_revision_cli_smoke(project, invoke):
    done = invoke(
        "revision", "-m", "add things", "--online", env={"DBOPS_ALEMBIC_INI": str(project)}
    )
    assert done.returncode == 0, done.stderr
    assert "online: tags (~20 rows): op.create_index -> op.create_index_online" in done.stdout
    written = list((project.parent / "versions").glob("*_add_things.py"))
    assert len(written) == 1 and f"wrote {written[0]}" in done.stdout
    assert "PGPASSWORD" not in done.stdout + done.stderr
    assert "dbops.online:" not in done.stderr  # said once, by the task


def test_a_template_without_imports_still_gets_the_import(project, pg_cluster, database, ops_env):
    mako = project.parent / "script.py.mako"
    mako.write_text(mako.read_text().replace('${imports if imports else ""}', ""))
    settings = load_settings(
        ROOT, environ={**ops_env, "DBOPS_ALEMBIC_INI": str(project), "DBOPS_ONLINE_MIN_ROWS": "0"}
    )
    res = new_revision(settings, "add things", out=lambda _line: None)
    text = open(res["path"]).read()
    assert "from alembic import op\nimport dbops.online  # noqa: F401" in text
    assert "op.create_index_online(" in text
