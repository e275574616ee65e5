"""migrate over several revisions in one alembic run (agent/batch.py, ops/batch.py): env.py
executed once for all of them, still one transaction per revision — a failure leaves the
database at the last revision that completed — and the per-revision path when env.py holds
one transaction around the whole run."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli import ENV_PY, REVISION

COUNTING = "\nimport pathlib\n_runs = pathlib.Path(__file__).with_name('runs')\n" + (
    "_runs.write_text(str(int(_runs.read_text()) + 1) if _runs.exists() else '1')\n"
)
FAILING = """
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None

def upgrade():
    op.execute("CREATE TABLE half_done (id int)")
    op.execute("SELECT 1 / 0")

def downgrade():
    pass
"""


def project(root: Path, n: int, *, fail_at: int | None = None, env_py: str = ENV_PY) -> Path:
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    (root / "migrations" / "env.py").write_text(COUNTING + env_py)
    (root / "migrations" / "script.py.mako").write_text("")
    down = None
    for i in range(1, n + 1):
        rev = f"r{i:03d}"
        body = FAILING if i == fail_at else REVISION
        (versions / f"{rev}.py").write_text(body.format(rev=rev, down=down, table=f"t{i}"))
        down = rev
    return root / "alembic.ini"


def version(db_conn) -> list[str]:
    return [r[0] for r in db_conn.execute("SELECT version_num FROM alembic_version")]


def test_env_py_runs_once_for_all_pending_revisions(tmp_path, invoke, db_conn):
    ini = project(tmp_path, 12)
    done = invoke("migrate", "--no-backup", env={"DBOPS_ALEMBIC_INI": str(ini)})
    assert done.returncode == 0, done.stderr
    assert version(db_conn) == ["r012"]
    assert done.stdout.count("  applied r0") == 12
    runs = int((tmp_path / "migrations" / "runs").read_text())
    assert runs <= 3, f"env.py ran {runs} times for 12 revisions (upgrade + models check)"


def test_a_failing_revision_leaves_the_ones_before_it_committed(tmp_path, invoke, db_conn):
    ini = project(tmp_path, 6, fail_at=4)
    done = invoke("migrate", "--no-backup", env={"DBOPS_ALEMBIC_INI": str(ini)})
    assert done.returncode == 1
    assert version(db_conn) == ["r003"]  # one transaction per revision: r001..r003 committed
    tables = {r[0] for r in db_conn.execute("SELECT tablename FROM pg_tables")}
    assert {"t1", "t2", "t3"} <= tables and "half_done" not in tables
    assert "r004 (upgrade) failed" in done.stderr and "division by zero" in done.stderr
    assert "now: r003" in done.stderr


def test_env_py_holding_one_transaction_goes_one_revision_per_run(tmp_path, invoke, db_conn):
    """A statement before context.configure begins a transaction alembic calls external: it
    would commit every revision together at the end. dbops sees it at the first revision
    (nothing committed) and runs one revision per alembic run instead."""
    outer = ENV_PY.replace(
        "    with engine.connect() as connection:\n",
        "    with engine.connect() as connection:\n"
        "        connection.exec_driver_sql('SELECT 1')\n",
    ).replace(
        "            context.run_migrations()\n\ndef run_migrations_offline",
        "            context.run_migrations()\n        connection.commit()\n\n"
        "def run_migrations_offline",
    )
    assert "connection.commit()" in outer
    ini = project(tmp_path, 5, fail_at=4, env_py=outer)
    done = invoke("migrate", "--no-backup", env={"DBOPS_ALEMBIC_INI": str(ini)})
    assert "one alembic run per revision instead" in done.stdout
    assert done.returncode == 1
    assert version(db_conn) == ["r003"]


def test_an_env_py_that_cannot_load_fails_in_the_preflight_with_its_whole_error(
    tmp_path, invoke, ops_env, db_conn
):
    """A settings object validated at import: every field named, before any backup."""
    settings_first = (
        "from pydantic import BaseModel\n"
        "class Settings(BaseModel):\n"
        "    db_host: str\n"
        "    db_port: int\n"
        "Settings()\n"
    )
    ini = project(tmp_path, 3, env_py=settings_first + ENV_PY)
    done = invoke("migrate", env={"DBOPS_ALEMBIC_INI": str(ini)})
    assert done.returncode == 1
    assert "env.py failed before anything ran" in done.stderr
    assert "2 validation errors for Settings" in done.stderr
    assert "db_host" in done.stderr and "db_port" in done.stderr
    assert "unchanged" in done.stderr
    backups = Path(ops_env["DBOPS_BACKUP_DIR"])
    assert not backups.exists() or not list(backups.glob("*.dump"))  # before any backup
    assert not db_conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0]


def test_an_env_py_connected_elsewhere_is_named_not_reported_as_a_stuck_version_row(
    tmp_path, invoke, pg_cluster, database, db_conn
):
    """env.py that builds its URL from something dbops does not set lands in another database:
    the version row dbops reads did not move, and the failure says where env.py went."""
    other = f"{database}_elsewhere"
    pg_cluster.create_database(other)
    try:
        elsewhere = ENV_PY.replace(
            'os.environ["DATABASE_URL"]',
            f'os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/{other}"',
        )
        ini = project(tmp_path, 3, env_py=elsewhere)
        done = invoke("migrate", "--no-backup", env={"DBOPS_ALEMBIC_INI": str(ini)})
        assert done.returncode == 1
        assert other in done.stderr
        assert not db_conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0]
    finally:
        with pg_cluster.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
