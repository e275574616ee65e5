"""Touched (partial) pre-migrate backups on real PostgreSQL: migrate takes one, backups shows it
as partial, verify-backup --restore-test works on it, rollback of an empty downgrade names the
restore that puts the touched tables' rows back (same rows as before the migrate), restore of it
refuses at another revision."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbops import audit, catalog
from tests.fixtures.projects import HEADER, SAMPLE_HEAD, make_project

NEW_REV = "7b7b7b000001"
# Model-neutral data changes: an UPDATE whose downgrade cannot undo it, and a DELETE that
# cascades from posts to comments and post_tags.
DATA_REV = """
def upgrade():
    op.execute("UPDATE tags SET name = upper(name)")
    op.execute("DELETE FROM posts WHERE title LIKE 'spam%'")


def downgrade():
    pass
"""
TOUCHED = ["public.comments", "public.post_tags", "public.posts", "public.tag_stats", "public.tags"]
UNTOUCHED = ["public.users", "public.user_sessions"]


def checksums(conn, tables) -> dict:
    out = {}
    for q in tables:
        out[q] = conn.execute(
            f"SELECT count(*), coalesce(sum(hashtext(t::text)::bigint), 0) FROM {q} t"
        ).fetchone()
    return out


@pytest.fixture
def env(invoke, db_conn, tmp_path):
    """At the sample head with data; a project with one data revision on top; touched mode."""
    assert invoke("migrate", "--no-backup").returncode == 0
    db_conn.execute(
        "INSERT INTO users (username, email) SELECT 'u' || g, 'u' || g || '@x' "
        "FROM generate_series(1, 20) g"
    )
    db_conn.execute(
        "INSERT INTO posts (title, content, author_id) SELECT "
        "CASE WHEN g % 4 = 0 THEN 'spam ' ELSE 'post ' END || g, 'c', 1 + g % 20 "
        "FROM generate_series(1, 40) g"
    )
    db_conn.execute(
        "INSERT INTO comments (content, author_name, author_email, post_id) "
        "SELECT 'hi', 'a', 'a' || g || '@x', 1 + g % 40 FROM generate_series(1, 80) g"
    )
    db_conn.execute("INSERT INTO tags (name) SELECT 'tag' || g FROM generate_series(1, 10) g")
    db_conn.execute(
        "INSERT INTO post_tags (post_id, tag_id) SELECT p, 1 + p % 10 FROM generate_series(1, 40) p"
    )
    ini = make_project(tmp_path, patch_models=False)
    (ini.parent / "alembic" / "versions" / f"{NEW_REV}_data.py").write_text(
        HEADER.format(
            message="data change",
            rev=NEW_REV,
            down=SAMPLE_HEAD,
            down_repr=repr(SAMPLE_HEAD),
            labels="None",
        )
        + DATA_REV
    )
    return {"DBOPS_ALEMBIC_INI": str(ini), "DBOPS_PREMIGRATE_BACKUP": "touched"}


def partial_backup(settings) -> Path:
    entries = [e for e in catalog.list_backups(settings) if e["partial"]]
    assert len(entries) == 1, entries
    return Path(entries[0]["path"])


def test_migrate_with_a_touched_backup_then_rollback_gives_the_same_rows(
    invoke, settings, db_conn, env
):
    before = checksums(db_conn, TOUCHED + UNTOUCHED)
    done = invoke("migrate", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "backup (touched, partial)" in done.stdout
    changed = checksums(db_conn, TOUCHED)
    assert (
        changed["public.posts"] != before["public.posts"]
        and changed["public.tags"] != before["public.tags"]
    )
    path = partial_backup(settings)
    m = catalog.read_manifest(catalog.manifest_path(path))
    assert m["partial"] and sorted(m["tables"]) == TOUCHED
    assert m["tables"]["public.posts"] == 40 and "public.tags_id_seq" in m["touched"]["sequences"]
    assert "public.users" in m["touched"]["excluded_tables"]
    listed = invoke("backups", env=env)
    assert "yes partial" in listed.stdout and "5 touched table(s)" in listed.stdout
    # The same verification as a full backup, on a scratch database.
    ver = invoke("verify-backup", str(path), "--restore-test", env=env)
    assert ver.returncode == 0, ver.stderr
    assert "5 tables" in ver.stdout
    # A rollback to the backup's revision: the downgrade is empty, so the data change stays
    # (it cannot be told from later writes); the plan names the restore that puts it back.
    rb = invoke("rollback", f"--to={SAMPLE_HEAD}", "--yes", env=env)
    assert rb.returncode == 0, rb.stdout + rb.stderr
    assert f"note: {NEW_REV} downgrade(s) are empty" in rb.stdout
    assert f"invoke restore {path} --yes after this rollback" in rb.stdout
    assert "put back" not in rb.stdout.replace("NOT put back", "")
    assert checksums(db_conn, TOUCHED) == changed
    assert db_conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SAMPLE_HEAD
    assert audit.read(settings)[-1]["action"] == "rollback"
    done = invoke("restore", str(path), "--yes", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert checksums(db_conn, TOUCHED + UNTOUCHED) == before
    recs = audit.read(settings)
    assert recs[-1]["action"] == "restore" and recs[-1]["file"] == str(path)
    # Sequences came back with the rows: new rows get fresh ids.
    db_conn.execute("INSERT INTO posts (title, content, author_id) VALUES ('new', 'c', 1)")


def test_partial_restore_is_refused_at_another_revision(invoke, settings, db_conn, env):
    assert invoke("migrate", env=env).returncode == 0
    path = partial_backup(settings)
    after_migrate = checksums(db_conn, TOUCHED + UNTOUCHED)
    done = invoke("restore", str(path), "--yes", env=env)
    assert done.returncode == 1
    assert "partial (touched) backup taken at" in done.stderr and "unchanged" in done.stderr
    assert f"invoke rollback --to={SAMPLE_HEAD}" in done.stderr
    assert checksums(db_conn, TOUCHED + UNTOUCHED) == after_migrate
    with db_conn.cursor() as cur:
        assert (
            cur.execute(
                "SELECT count(*) FROM pg_database WHERE starts_with(datname, %s)",
                [settings.database + "_dbops_"],
            ).fetchone()[0]
            == 0
        )  # no restore target


def test_partial_restore_at_the_backups_revision_puts_only_those_tables_back(
    invoke, settings, db_conn, env
):
    before = checksums(db_conn, TOUCHED)
    assert invoke("migrate", env=env).returncode == 0
    assert (
        invoke("rollback", f"--to={SAMPLE_HEAD}", "--yes", "--no-putback", env=env).returncode == 0
    )
    db_conn.execute("INSERT INTO users (username, email) VALUES ('later', 'later@x')")
    users = checksums(db_conn, UNTOUCHED)
    assert checksums(db_conn, TOUCHED) != before  # the downgrade could not undo the data change
    done = invoke("restore", str(partial_backup(settings)), "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert "restored (partial): 5 touched table(s)" in done.stdout
    assert checksums(db_conn, TOUCHED) == before
    assert checksums(db_conn, UNTOUCHED) == users  # untouched tables keep their later rows


def test_a_put_back_that_does_not_match_the_manifest_changes_nothing(
    invoke, settings, db_conn, env
):
    assert invoke("migrate", env=env).returncode == 0
    assert (
        invoke("rollback", f"--to={SAMPLE_HEAD}", "--yes", "--no-putback", env=env).returncode == 0
    )
    path = partial_backup(settings)
    mpath = catalog.manifest_path(path)
    import json

    m = json.loads(mpath.read_text())
    m["tables"]["public.posts"] += 1  # the count check inside the transaction must fail
    mpath.write_text(json.dumps(m))
    now = checksums(db_conn, TOUCHED)
    done = invoke("restore", str(path), "--yes", env=env)
    assert done.returncode == 1
    assert "rolled back" in done.stderr and "public.posts has 40 rows" in done.stderr
    assert checksums(db_conn, TOUCHED) == now


def test_auto_takes_a_full_backup_of_a_small_database(invoke, settings, env):
    done = invoke("migrate", env={**env, "DBOPS_PREMIGRATE_BACKUP": "auto"})
    assert done.returncode == 0, done.stderr
    assert "backup: full (DBOPS_PREMIGRATE_BACKUP=auto" in done.stdout
    assert [e["partial"] for e in catalog.list_backups(settings)] == [False]


def test_auto_takes_a_touched_backup_over_the_threshold(invoke, settings, env):
    done = invoke(
        "migrate",
        env={**env, "DBOPS_PREMIGRATE_BACKUP": "auto", "DBOPS_PREMIGRATE_FULL_MAX_MB": "0"},
    )
    assert done.returncode == 0, done.stderr
    assert "backup: touched (DBOPS_PREMIGRATE_BACKUP=auto" in done.stdout
    assert [e["partial"] for e in catalog.list_backups(settings)] == [True]


def test_bad_mode_is_refused_before_anything(invoke, settings, db_conn, env):
    done = invoke("migrate", env={**env, "DBOPS_PREMIGRATE_BACKUP": "some"})
    assert (
        done.returncode == 1 and "DBOPS_PREMIGRATE_BACKUP" in done.stderr and "some" in done.stderr
    )
    assert db_conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SAMPLE_HEAD
    assert catalog.list_backups(settings) == []


def test_rollback_of_a_ddl_only_migration_puts_nothing_back(
    invoke, settings, db_conn, env, tmp_path
):
    """add a column + index, with a real downgrade: the backup is touched (comments), but the
    upgrade lost nothing, so the rollback keeps the rows written since the migrate."""
    (tmp_path / "flag").mkdir()
    ini = make_project(tmp_path / "flag", "flag")
    flag_env = {**env, "DBOPS_ALEMBIC_INI": str(ini)}
    done = invoke("migrate", env=flag_env)
    assert done.returncode == 0, done.stdout + done.stderr
    m = catalog.read_manifest(catalog.manifest_path(partial_backup(settings)))
    assert "public.comments" in m["tables"] and m["touched"]["lossy"] == {}
    db_conn.execute(
        "INSERT INTO comments (content, author_name, author_email, post_id, flagged) "
        "VALUES ('later', 'z', 'z@x', 1, true)"
    )
    after = checksums(db_conn, ["public.comments"])["public.comments"]
    rb = invoke("rollback", f"--to={SAMPLE_HEAD}", "--yes", "--accept-data-loss", env=flag_env)
    assert rb.returncode == 0, rb.stdout + rb.stderr
    assert "put back" not in rb.stdout
    assert db_conn.execute("SELECT count(*) FROM comments").fetchone()[0] == after[0]
    assert (
        db_conn.execute("SELECT count(*) FROM comments WHERE content = 'later'").fetchone()[0] == 1
    )


def test_rehearse_refuses_a_partial_backup_as_its_data(invoke, settings, db_conn, env):
    """``rehearse --from=FILE`` naming a touched backup is refused before a copy is made: it
    lacks the untouched tables' rows, so the rehearsal would measure the wrong sizes."""
    assert invoke("migrate", env=env).returncode == 0
    path = partial_backup(settings)
    rb = invoke(
        "rollback", f"--to={SAMPLE_HEAD}", "--yes", env=env
    )  # live at the backup's revision
    assert rb.returncode == 0, rb.stdout + rb.stderr
    done = invoke("rehearse", f"--from={path}", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [
        f"error: {path.name} is a partial (touched) backup: it holds only some "
        f"tables' rows, so a rehearsal on it would measure the wrong sizes, rewrites "
        f"and blocking times; rehearse on a full backup"
    ], done.stderr
    assert "next: invoke rehearse --from=fresh" in done.stderr
    assert (
        db_conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'dbops\\_scratch\\_%'"
        ).fetchone()[0]
        == 0
    )
    assert db_conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SAMPLE_HEAD


def test_a_partial_restore_interrupted_exits_130_with_an_interrupted_record(
    invoke, settings, ops_env, db_conn, env, monkeypatch
):
    """Ctrl-C/SIGTERM during the put-back (in-process: raised from it): exit status 130, one
    "interrupted" audit record; the put-back's one transaction did not commit."""
    from dbops.config import load_settings
    from dbops.errors import OpsError
    from dbops.ops import restore as restore_op
    from dbops.ops import touched
    from tests.conftest import ROOT

    assert invoke("migrate", env=env).returncode == 0
    assert (
        invoke("rollback", f"--to={SAMPLE_HEAD}", "--yes", "--no-putback", env=env).returncode == 0
    )
    now = checksums(db_conn, TOUCHED)
    path = partial_backup(settings)

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(touched, "putback", interrupted)
    with pytest.raises(OpsError) as err:
        restore_op.restore(load_settings(ROOT, environ={**ops_env, **env}), str(path), yes=True)
    assert err.value.exit_code == 130 and err.value.message == "restore interrupted"
    assert err.value.next_command.startswith(f"invoke restore {path} --yes")
    rec = audit.read(settings)[-1]
    assert rec["action"] == "restore" and rec["result"] == "interrupted"
    assert rec["partial"] is True and rec["file"] == str(path) and rec["tables"] == TOUCHED
    assert checksums(db_conn, TOUCHED) == now
