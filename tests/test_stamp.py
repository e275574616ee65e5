"""invoke stamp --to: confirmation, only the version row changes, the previous row audited,
the recovery from an unknown version row."""

from __future__ import annotations

from tests.fixtures.projects import SAMPLE_HEAD, catalog, version_rows
from tests.fixtures.records import audit_records


def test_stamp_needs_confirmation_and_changes_only_the_version_row(invoke, db_conn, ops_env):
    assert invoke("migrate", "--to", "1be15b655bdb", "--no-backup").returncode == 0
    before = catalog(db_conn)
    done = invoke("stamp", "--to=head")
    assert done.returncode != 0 and "--yes" in done.stderr
    assert "stamp changes NO schema" in done.stdout
    assert catalog(db_conn) == before
    done = invoke("stamp", "--to=head", "--yes")
    assert done.returncode == 0, done.stderr
    assert version_rows(db_conn) == [SAMPLE_HEAD]
    after = catalog(db_conn)
    assert {k: v for k, v in after.items() if k != "version"} == {
        k: v for k, v in before.items() if k != "version"
    }
    [rec] = audit_records(ops_env, "stamp")
    assert rec["previous_version_rows"] == ["1be15b655bdb"] and rec["to"] == [SAMPLE_HEAD]
    assert rec["result"] == "ok" and rec["schema_changed"] is False


def test_stamp_recovers_from_an_unknown_version_row(invoke, db_conn, ops_env):
    assert invoke("migrate", "--no-backup").returncode == 0
    db_conn.execute("UPDATE alembic_version SET version_num = 'cafe00000000'")
    assert invoke("migrate").returncode != 0
    done = invoke("stamp", f"--to={SAMPLE_HEAD[:6]}", "--yes")
    assert done.returncode == 0, done.stderr
    assert "UNKNOWN to the script directory: cafe00000000" in done.stdout
    assert version_rows(db_conn) == [SAMPLE_HEAD]
    assert audit_records(ops_env, "stamp")[-1]["previous_version_rows"] == ["cafe00000000"]
    assert invoke("migrate").returncode == 0


def test_stamp_garbage_is_refused(invoke, db_conn):
    done = invoke("stamp", "--to=nope", "--yes")
    assert done.returncode != 0 and "names no revision" in done.stderr
    assert version_rows(db_conn) == []
