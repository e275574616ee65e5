"""Rollback's put-back on real PostgreSQL (issue 23 item 2, issue 19 item 5): what a downgrade
destroys comes from running it on a schema-only copy, not from its SQL text; the data the
migration took comes back from the backup of the migrate that applied the revisions, without
replacing rows or values the application wrote after the migration."""

from __future__ import annotations

import pytest

from dbops import audit
from dbops.agent.downgrade_trace import read_dml
from tests.fixtures.projects import HEADER, SAMPLE_HEAD, make_project, version_rows

DROP_NICKNAME = (
    "7d7d7d000001",
    """
def upgrade():
    op.drop_column("users", "nickname")
{fail}

def downgrade():
    op.add_column("users", sa.Column("nickname", sa.Text(), nullable=True))
""",
)
ADD_FK = (
    "7d7d7d000002",
    """
def upgrade():
    op.create_foreign_key("fk_legacy_notes_user", "legacy_notes", "users", ["user_id"], ["id"])


def downgrade():
    op.drop_constraint("fk_legacy_notes_user", "legacy_notes", type_="foreignkey")
""",
)
DROP_LEGACY = (
    "7d7d7d000003",
    """
def upgrade():
    op.drop_table("legacy_notes")


def downgrade():
    op.create_table(
        "legacy_notes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", name="fk_legacy_notes_user")),
        sa.Column("body", sa.Text()),
    )
""",
)
NULL_BIO = (
    "7d7d7d000004",
    """
def upgrade():
    op.execute("UPDATE users SET bio = upper(bio)")


def downgrade():
    op.execute("UPDATE users SET bio = NULL")
""",
)
NULL_NONE_BIO = (
    "7d7d7d000005",
    """
def upgrade():
    pass


def downgrade():
    op.execute("UPDATE users u SET bio = NULL WHERE u.bio = 'none'")
""",
)


def project(root, *revs, fail: bool = False) -> str:
    """A copy of the sample with ``revs`` chained on its head; its alembic.ini."""
    root.mkdir(parents=True, exist_ok=True)
    ini = make_project(root, patch_models=False)
    down = SAMPLE_HEAD
    for rev, body in revs:
        (ini.parent / "alembic" / "versions" / f"{rev}_r.py").write_text(
            HEADER.format(
                message=f"rev {rev}", rev=rev, down=down, down_repr=repr(down), labels="None"
            )
            + body.replace("{fail}", '    op.execute("SELECT 1 / 0")' if fail else "")
        )
        down = rev
    return str(ini)


@pytest.fixture
def seeded(invoke, db_conn):
    """At the sample head, with what the test revisions drop: users.nickname and legacy_notes
    (both unknown to the models, so the models match once the migration dropped them)."""
    assert invoke("migrate", "--no-backup").returncode == 0
    db_conn.execute("ALTER TABLE users ADD COLUMN nickname text")
    db_conn.execute("CREATE TABLE legacy_notes (id serial PRIMARY KEY, user_id int, body text)")
    db_conn.execute(
        "INSERT INTO users (id, username, email, bio, nickname) VALUES "
        "(1, 'ann', 'a@x', 'b1', 'n1'), (2, 'bob', 'b@x', 'b2', 'n2'), (3, 'cy', 'c@x', NULL, 'n3')"
    )
    db_conn.execute("SELECT setval('users_id_seq', 3)")
    db_conn.execute("INSERT INTO legacy_notes (user_id, body) VALUES (1, 'note1'), (2, 'note2')")
    return db_conn


def without_extras(conn):
    """The seeded rows at the sample's own schema (its models match)."""
    conn.execute("ALTER TABLE users DROP COLUMN nickname")
    conn.execute("DROP TABLE legacy_notes")
    return conn


def rows(conn, q: str) -> list[tuple]:
    return [tuple(r) for r in conn.execute(q).fetchall()]


def test_dropped_column_and_table_come_back_and_newer_rows_stay(invoke, seeded, tmp_path, settings):
    ini = project(tmp_path / "p", DROP_NICKNAME, ADD_FK, DROP_LEGACY)
    env = {"DBOPS_ALEMBIC_INI": ini, "DBOPS_PREMIGRATE_BACKUP": "touched"}
    done = invoke("migrate", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    # the application, after the migration: a new user, a renamed one
    seeded.execute("INSERT INTO users (id, username, email, bio) VALUES (4, 'dee', 'd@x', 'b4')")
    seeded.execute("UPDATE users SET username = 'robert' WHERE id = 2")
    rb = invoke("rollback", f"--to={SAMPLE_HEAD}", "--yes", env=env)  # --yes alone: no loss
    assert rb.returncode == 0, rb.stdout + rb.stderr
    out = rb.stdout
    # DROP CONSTRAINT loses nothing; the FK's target table is neither flagged nor touched
    assert "DATA LOSS" not in out
    assert f"{ADD_FK[0]}  rev {ADD_FK[0]}\n      no data loss (drops no table or column)" in out
    assert "public.users:" not in out and "public.users.nickname: re-added" in out
    assert "public.legacy_notes: re-created by the downgrade" in out
    assert "put back: 2 table(s), 2 row(s) inserted, 3 value(s) restored, 0 kept" in out, out
    assert rows(seeded, "SELECT id, username, bio, nickname FROM users ORDER BY id") == [
        (1, "ann", "b1", "n1"),
        (2, "robert", "b2", "n2"),
        (3, "cy", None, "n3"),
        (4, "dee", "b4", None),
    ]
    assert rows(seeded, "SELECT id, user_id, body FROM legacy_notes ORDER BY id") == [
        (1, 1, "note1"),
        (2, 2, "note2"),
    ]
    # the re-created table's sequence is past the rows put back
    seeded.execute("INSERT INTO legacy_notes (user_id, body) VALUES (4, 'later')")
    assert version_rows(seeded) == [SAMPLE_HEAD]
    recs = audit.read(settings)
    migrate_rec = [r for r in recs if r["action"] == "migrate"][-1]
    assert recs[-1]["action"] == "putback" and recs[-1]["result"] == "ok"
    assert recs[-1]["file"] == migrate_rec["backup"] and recs[-1]["inserted"] == 2
    assert recs[-1]["op_id"] and recs[-1]["duration_s"] >= 0  # written by its Operation


def test_dml_in_a_downgrade_is_data_loss_counted_and_needs_acceptance(
    invoke, seeded, tmp_path, settings
):
    without_extras(seeded)
    ini = project(tmp_path / "p", NULL_BIO)
    env = {"DBOPS_ALEMBIC_INI": ini, "DBOPS_PREMIGRATE_BACKUP": "touched"}
    assert invoke("migrate", env=env).returncode == 0
    seeded.execute("INSERT INTO users (id, username, email, bio) VALUES (4, 'dee', 'd@x', 'b4')")
    seeded.execute("UPDATE users SET username = 'annie' WHERE id = 1")
    before = rows(seeded, "SELECT * FROM users ORDER BY id")
    refused = invoke("rollback", f"--to={SAMPLE_HEAD}", "--yes", env=env)
    assert refused.returncode == 1
    assert "DATA LOSS: updates users (bio): 3 rows (counted with its WHERE)" in refused.stdout
    assert "--accept-data-loss" in refused.stderr and "unchanged at 7d7d7d000004" in refused.stderr
    assert rows(seeded, "SELECT * FROM users ORDER BY id") == before
    assert version_rows(seeded) == [NULL_BIO[0]]
    assert {r["action"] for r in audit.read(settings)} == {"migrate"}  # no rollback ran
    done = invoke("rollback", f"--to={SAMPLE_HEAD}", "--yes", "--accept-data-loss", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "public.users.bio: set to NULL by the downgrade of 7d7d7d000004" in done.stdout
    # old values back where the downgrade left NULL; the newer row stays (its value was the loss)
    assert rows(seeded, "SELECT id, username, bio FROM users ORDER BY id") == [
        (1, "annie", "b1"),
        (2, "bob", "b2"),
        (3, "cy", None),
        (4, "dee", None),
    ]


def test_dml_that_changes_no_row_needs_only_yes(invoke, seeded, tmp_path):
    without_extras(seeded)
    ini = project(tmp_path / "p", NULL_NONE_BIO)
    env = {"DBOPS_ALEMBIC_INI": ini}
    assert invoke("migrate", "--no-backup", env=env).returncode == 0
    done = invoke("rollback", f"--to={SAMPLE_HEAD}", "--yes", "--no-backup", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no data loss: updates users (bio): 0 rows (counted with its WHERE)" in done.stdout
    assert rows(seeded, "SELECT bio FROM users ORDER BY id") == [("b1",), ("b2",), (None,)]


def test_the_backup_is_the_one_of_the_migrate_that_applied_the_revisions(
    invoke, seeded, tmp_path, settings
):
    """An earlier migrate that failed took a backup too: it is never used; a migrate without a
    backup leaves nothing to put back from, and the rollback refuses, changing nothing."""
    seeded.execute("DROP TABLE legacy_notes")
    failing = project(tmp_path / "a", DROP_NICKNAME, fail=True)
    fixed = project(tmp_path / "b", DROP_NICKNAME)
    failed = invoke(
        "migrate", env={"DBOPS_ALEMBIC_INI": failing, "DBOPS_PREMIGRATE_BACKUP": "touched"}
    )
    assert failed.returncode == 1
    seeded.execute("UPDATE users SET nickname = 'm' || id")  # written between the two migrates
    env = {"DBOPS_ALEMBIC_INI": fixed, "DBOPS_PREMIGRATE_BACKUP": "full"}
    assert invoke("migrate", env=env).returncode == 0
    outcomes = audit.read(settings, intents=False)
    migrates = [r for r in outcomes if r["action"] == "migrate"][1:]  # not seeded's
    assert [r["result"] for r in migrates] == ["failed", "ok"] and migrates[0]["backup"]
    rb = invoke("rollback", f"--to={SAMPLE_HEAD}", "--yes", env=env)
    assert rb.returncode == 0, rb.stdout + rb.stderr
    assert f"then: put back from {migrates[1]['backup']}" in rb.stdout
    assert rows(seeded, "SELECT nickname FROM users ORDER BY id") == [("m1",), ("m2",), ("m3",)]
    # again, without a backup this time
    assert invoke("migrate", "--no-backup", env=env).returncode == 0
    refused = invoke("rollback", f"--to={SAMPLE_HEAD}", "--yes", env=env)
    assert refused.returncode == 1
    assert "took no backup" in refused.stderr and "--no-putback" in refused.stderr
    assert version_rows(seeded) == [DROP_NICKNAME[0]]
    skipped = invoke("rollback", f"--to={SAMPLE_HEAD}", "--yes", "--no-putback", env=env)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert rows(seeded, "SELECT nickname FROM users ORDER BY id") == [(None,)] * 3


@pytest.mark.parametrize(
    "statement,countable,where,sets",
    [
        ("UPDATE users SET bio = NULL", True, None, {"bio": "NULL"}),
        ("update users u set bio = 'x', \"Odd\" = 1 where u.id > 3;", True, "u.id > 3", None),
        ("DELETE FROM ONLY public.users WHERE id IN (SELECT 1)", True, "id IN (SELECT 1)", None),
        ("UPDATE users SET bio = t.x FROM t WHERE t.id = users.id", False, None, None),
        ("DELETE FROM users RETURNING id", False, None, None),
        ("UPDATE users SET bio = $$a$$", False, None, None),
        ("UPDATE users SET (a, b) = (1, 2) WHERE id = 1", True, "id = 1", None),
    ],
)
def test_reading_dml(statement, countable, where, sets):
    got = read_dml(statement)
    assert got["countable"] is countable, got
    if countable:
        assert got["where"] == where
    if sets is not None:
        assert got["sets"] == sets


DROP_NOPK_COLUMN = (
    "7d7d7d000006",
    """
def upgrade():
    op.drop_column("legacy_nopk", "y")


def downgrade():
    op.add_column("legacy_nopk", sa.Column("y", sa.Text()))
""",
)
NOOP = ("7d7d7d000007", "\ndef upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n")


def test_a_column_of_a_table_without_primary_key_is_not_put_back_and_says_how(
    invoke, seeded, tmp_path
):
    """Its values cannot be matched to live rows: the plan says so with the manual command;
    the rollback goes on and changes none of its rows (never a truncate)."""
    seeded.execute("CREATE TABLE legacy_nopk (x int, y text)")
    seeded.execute("INSERT INTO legacy_nopk VALUES (1, 'a'), (2, 'b')")
    ini = project(tmp_path / "p", DROP_NOPK_COLUMN, NOOP)
    env = {"DBOPS_ALEMBIC_INI": ini, "DBOPS_PREMIGRATE_BACKUP": "full"}
    done = invoke("migrate", f"--to={DROP_NOPK_COLUMN[0]}", env=env)  # not head: no models check
    assert done.returncode == 0, done.stdout + done.stderr
    seeded.execute("INSERT INTO legacy_nopk VALUES (3)")
    rb = invoke("rollback", f"--to={SAMPLE_HEAD}", "--yes", env=env)
    assert rb.returncode == 0, rb.stdout + rb.stderr
    assert "public.legacy_nopk: NOT put back: no primary key" in rb.stdout
    assert "pg_restore --data-only -n public -t legacy_nopk -f legacy_nopk.sql" in rb.stdout
    assert "putting back from" not in rb.stdout
    assert rows(seeded, "SELECT x, y FROM legacy_nopk ORDER BY x") == [
        (1, None),
        (2, None),
        (3, None),
    ]


def test_a_put_back_that_fails_is_audited_failed_and_leaves_the_downgrade(
    invoke, seeded, tmp_path, ops_env
):
    """The backup goes bad between the plan and the put-back: the merge (one transaction)
    rolls back, the error says the state and the next command, and the "putback" record says
    failed with the merge's own error."""
    from pathlib import Path

    from dbops.config import load_settings
    from dbops.errors import OpsError
    from dbops.ops import rollback as rollback_op
    from tests.fixtures.projects import ROOT

    seeded.execute("DROP TABLE legacy_notes")
    ini = project(tmp_path / "p", DROP_NICKNAME)
    env = {"DBOPS_ALEMBIC_INI": ini, "DBOPS_PREMIGRATE_BACKUP": "full"}
    assert invoke("migrate", env=env).returncode == 0
    settings = load_settings(ROOT, environ={**ops_env, **env})
    backup = [r for r in audit.read(settings) if r["action"] == "migrate"][-1]["backup"]

    def out(line: str) -> None:
        if line.startswith("putting back from"):  # the downgrade is done
            Path(backup).write_bytes(b"not an archive any more")

    with pytest.raises(OpsError) as exc:
        rollback_op.rollback(settings, SAMPLE_HEAD, yes=True, backup=False, out=out)
    assert exc.value.message.startswith(
        f"downgraded to {SAMPLE_HEAD}, but putting the migration's data back failed: "
    )
    assert "the put-back is one transaction, rolled back" in exc.value.state
    assert "--restore-test" in exc.value.next_command
    assert version_rows(seeded) == [SAMPLE_HEAD]
    assert rows(seeded, "SELECT nickname FROM users ORDER BY id") == [(None,)] * 3
    rollback_rec, putback_rec = audit.read(settings, intents=False)[-2:]
    assert rollback_rec["action"] == "rollback" and rollback_rec["result"] == "ok"
    assert putback_rec["action"] == "putback" and putback_rec["result"] == "failed"
    assert putback_rec["error"].startswith("putting the backup's rows back failed")
    assert putback_rec["tables"] == ["public.users"] and putback_rec["file"] == backup
    assert putback_rec["op_id"] != rollback_rec["op_id"] and putback_rec["duration_s"] >= 0
