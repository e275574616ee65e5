"""invoke check, the CI gate: single head, stairway on a scratch database, models match,
squawk over every revision's offline SQL, and the documented ways to accept a finding."""

from __future__ import annotations

from tests.fixtures.projects import REVS, SAMPLE_HEAD, make_project, version_rows


def test_check_fails_on_the_sample_index_revision_until_it_is_accepted(
    invoke, tmp_path, db_conn, pg_cluster
):
    done = invoke("check", env={"DBOPS_SQUAWK_ACCEPT": str(tmp_path / "nothing-accepted.toml")})
    assert done.returncode != 0
    assert "ok    stairway: 6 revisions" in done.stdout
    assert "ok    models match the migrations" in done.stdout
    assert "squawk 23cd436768a8: require-concurrent-index-creation" in done.stdout
    assert "CREATE INDEX idx_comments_post_created" in done.stdout
    accept = tmp_path / "accept.toml"
    accept.write_text(
        '[[accept]]\nrevision = "23cd4367"\nrule = "require-concurrent-index-creation"\n'
        'reason = "comments was empty when this shipped"\n'
    )
    done = invoke("check", env={"DBOPS_SQUAWK_ACCEPT": str(accept), "DBOPS_QUIET": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "squawk" not in done.stderr  # DBOPS_QUIET: the command is not printed
    assert "accepted: comments was empty" in done.stdout and "check passed" in done.stdout
    # The project's own squawk-accept.toml (the default) accepts it with its reason.
    done = invoke("check", "--no-squawk")
    assert done.returncode == 0
    done = invoke("check")
    assert done.returncode == 0 and "accepted: seed 000 exercise 3" in done.stdout
    assert "$ " in done.stderr and "squawk --reporter json" in done.stderr  # through the seam
    assert version_rows(db_conn) == []  # the live database is never touched
    with pg_cluster.connect() as conn:
        assert not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname LIKE 'dbops_scratch%'"
        ).fetchall()


def test_a_marker_in_the_revision_file_accepts_its_finding(invoke, tmp_path):
    ini = make_project(tmp_path, "accepted")
    accept = tmp_path / "accept.toml"
    accept.write_text(
        '[[accept]]\nrevision = "23cd436768a8"\nrule = "require-concurrent-index-creation"\n'
        'reason = "known"\n'
    )
    done = invoke("check", env={"DBOPS_ALEMBIC_INI": str(ini), "DBOPS_SQUAWK_ACCEPT": str(accept)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"squawk {REVS['accepted'].rev}: require-concurrent-index-creation" in done.stdout
    assert "accepted: comments is tiny in every environment" in done.stdout


def test_check_fails_on_two_heads_and_on_models_that_do_not_match(invoke, tmp_path):
    ini = make_project(
        tmp_path,
        "flag",
        "irreversible",
        patch_models=False,
        branch_from={"irreversible": SAMPLE_HEAD},
    )
    done = invoke("check", "--no-squawk", env={"DBOPS_ALEMBIC_INI": str(ini)})
    assert done.returncode != 0
    assert "FAIL  2 heads" in done.stdout and "alembic merge" in done.stdout
    ini = make_project(tmp_path / "b", "flag", patch_models=False)
    done = invoke("check", "--no-squawk", env={"DBOPS_ALEMBIC_INI": str(ini)})
    assert done.returncode != 0
    assert "models do not match the migrations" in done.stdout
    assert "comments.flagged" in done.stdout


INSPECTING = """
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None

def upgrade():
    if sa.inspect(op.get_bind()).has_table("t1"):  # reads the database: no offline SQL
        op.create_index("ix_t1_id", "t1", ["id"])

def downgrade():
    op.drop_index("ix_t1_id", table_name="t1")
"""


def test_a_revision_that_inspects_the_database_is_linted_from_what_it_executed_then_baselined(
    invoke, tmp_path
):
    from tests.test_batch import project

    ini = project(tmp_path, 2)
    (tmp_path / "migrations" / "versions" / "r003.py").write_text(
        INSPECTING.format(rev="r003", down="r002")
    )
    accept = tmp_path / "accept.toml"
    env = {"DBOPS_ALEMBIC_INI": str(ini), "DBOPS_SQUAWK_ACCEPT": str(accept)}
    done = invoke("check", env=env)
    assert done.returncode == 1
    assert "note  r003: no offline SQL" in done.stdout
    assert "squawk r003: require-concurrent-index-creation" in done.stdout
    # the statement shown is the one squawk means (its line numbers start at 0)
    finding = done.stdout.split("squawk r003: require-concurrent-index-creation")[1]
    assert finding.splitlines()[1].strip().startswith("CREATE INDEX ix_t1_id ON t1")
    done = invoke("check", "--baseline", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "baseline:" in done.stdout and str(accept) in done.stdout
    text = accept.read_text()
    assert 'revision = "r003"' in text and 'rule = "require-concurrent-index-creation"' in text
    done = invoke("check", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
