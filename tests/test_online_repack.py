"""op.rewrite_table_online (dbops/online.py, real PostgreSQL): its refusals, each with the reason
and what to do, leaving the table as it was (no key pg_repack can use, the extension not
created, the client missing, client and extension versions differing); and, where the
server has pg_repack (Debian: postgresql-NN-repack), a real rewrite through alembic while a
writer keeps writing: a new file for the table, every row and every write still there."""

from __future__ import annotations

import shutil
import stat
import threading

import pytest

from dbops.online import repack_refusal
from tests.test_online import alembic, make_project, one

SQL = """
CREATE TABLE t (id int PRIMARY KEY, a int, pad text);
INSERT INTO t SELECT g, g % 97, repeat('x', 200) FROM generate_series(1, 20000) g;
DELETE FROM t WHERE id % 2 = 0;
CREATE TABLE nopk (id int, a int);
INSERT INTO nopk SELECT g, g FROM generate_series(1, 100) g;
CREATE TABLE nullable_unique (id int UNIQUE, a int);
INSERT INTO nullable_unique SELECT g, g FROM generate_series(1, 100) g
"""


@pytest.fixture
def tables(pg_cluster, database, monkeypatch):
    from tests.test_online import url

    monkeypatch.setenv("DATABASE_URL", url(pg_cluster, database))
    with pg_cluster.connect(database) as conn:
        for stmt in SQL.strip().split(";\n"):
            conn.execute(stmt)
        yield conn


def available(conn) -> bool:
    return one(conn, "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_repack'") > 0


def needs_repack(conn):
    major = one(conn, "SELECT current_setting('server_version_num')::int / 10000")
    if not available(conn):
        pytest.skip(
            f"pg_repack is not installed on the server: apt-get install postgresql-{major}-repack"
        )
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_repack")


def file_of(conn, table):
    return one(conn, "SELECT relfilenode FROM pg_class WHERE relname = %s", table)


def upgrade_fails(tmp_path, call: str) -> str:
    ini = make_project(tmp_path, f"op.{call}")
    with pytest.raises(Exception) as caught:
        alembic(ini)
    return str(caught.value)


@pytest.mark.parametrize("table", ["nopk", "nullable_unique"])
def test_no_usable_key_refuses_and_changes_nothing(tables, tmp_path, table):
    before = file_of(tables, table)
    msg = upgrade_fails(tmp_path, f"rewrite_table_online('{table}')")
    assert "needs a primary key or a unique index on NOT NULL columns" in msg
    assert "Nothing was changed" in msg and "primary_key=True" in msg
    assert file_of(tables, table) == before
    assert one(tables, "SELECT count(*) FROM alembic_version") == 0


def test_extension_not_created_refuses_with_the_command(tables, tmp_path):
    tables.execute("DROP EXTENSION IF EXISTS pg_repack")
    before = file_of(tables, "t")
    msg = upgrade_fails(tmp_path, "rewrite_table_online('t')")
    assert "the pg_repack extension is not installed in this database" in msg
    if available(tables):
        assert "CREATE EXTENSION pg_repack" in msg
    else:
        assert "apt-get install postgresql-" in msg
    assert file_of(tables, "t") == before


def test_refusal_texts():
    """What each missing piece says (the paths a machine with pg_repack cannot reach)."""
    facts = dict(
        key="t_pkey",
        client=None,
        client_version=None,
        extension=None,
        available=None,
        major=15,
        binary=None,
    )
    assert "apt-get install postgresql-15-repack" in repack_refusal("t", **facts)
    assert "CREATE EXTENSION pg_repack" in repack_refusal("t", **facts)
    facts.update(extension="1.4.8")
    assert "client (pg_repack on PATH) is not installed where alembic runs" in repack_refusal(
        "t", **facts
    )
    facts.update(client="/x/pg_repack", client_version="1.4.7")
    assert "version 1.4.7, the extension in the database 1.4.8" in repack_refusal("t", **facts)
    facts.update(client_version="1.4.8")
    assert repack_refusal("t", **facts) is None


def test_client_missing_refuses(tables, tmp_path):
    needs_repack(tables)
    before = file_of(tables, "t")
    msg = upgrade_fails(tmp_path, "rewrite_table_online('t', binary='/nonexistent/pg_repack')")
    assert "/nonexistent/pg_repack) is not installed where alembic runs" in msg
    assert file_of(tables, "t") == before


def test_client_of_another_version_refuses(tables, tmp_path):
    needs_repack(tables)
    fake = tmp_path / "pg_repack"
    fake.write_text("#!/bin/sh\necho 'pg_repack 0.9.0'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    before = file_of(tables, "t")
    msg = upgrade_fails(tmp_path, f"rewrite_table_online('t', binary='{fake}')")
    assert "is version 0.9.0, the extension in the database" in msg
    assert file_of(tables, "t") == before


def test_repack_rewrites_the_table_while_a_writer_writes(tables, tmp_path, pg_cluster, database):
    needs_repack(tables)
    if not (shutil.which("pg_repack") or list_debian_client(tables)):
        pytest.skip("the pg_repack client is not installed here")
    before = file_of(tables, "t")
    size_before = one(tables, "SELECT pg_relation_size('t')")
    stop, written, errors = threading.Event(), [], []

    def writer():
        with pg_cluster.connect(database) as w:
            n = 100_000
            while not stop.is_set():
                try:
                    w.execute("INSERT INTO t VALUES (%s, 1, 'w')", (n,))
                    written.append(n)
                    n += 1
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                    return

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        ini = make_project(tmp_path, "op.rewrite_table_online('t', order_by='a')")
        alembic(ini)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert file_of(tables, "t") != before
    assert one(tables, "SELECT pg_relation_size('t')") < size_before  # the dead half is gone
    assert one(tables, "SELECT count(*) FROM t WHERE id < 100000") == 10_000
    assert one(tables, "SELECT count(*) FROM t WHERE id >= 100000") == len(written)
    assert one(tables, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass") == 0
    assert one(tables, "SELECT count(*) FROM alembic_version") == 1


def list_debian_client(conn) -> list[str]:
    major = one(conn, "SELECT current_setting('server_version_num')::int / 10000")
    path = f"/usr/lib/postgresql/{major}/bin/pg_repack"
    return [path] if shutil.which(path) else []


def test_failed_repack_says_the_table_is_as_before_and_no_password_on_argv(
    tables, tmp_path, pg_cluster, monkeypatch
):
    """A client that fails (a stand-in with the extension's version, recording what it was
    given): the error says what is left; the password went in PGPASSWORD, not on argv, and
    the migration's PGOPTIONS (statement_timeout) did not reach it."""
    needs_repack(tables)
    version = one(tables, "SELECT extversion FROM pg_extension WHERE extname = 'pg_repack'")
    seen = tmp_path / "seen"
    fake = tmp_path / "pg_repack"
    fake.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then echo "pg_repack {version}"; exit 0; fi\n'
        f'echo "$@" > {seen}; echo "pw=$PGPASSWORD opts=$PGOPTIONS" >> {seen}\n'
        'echo "ERROR: query failed: something" >&2; exit 1\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=5s")
    before = file_of(tables, "t")
    msg = upgrade_fails(tmp_path, f"rewrite_table_online('t', binary='{fake}')")
    assert "pg_repack did not rewrite t: ERROR: query failed: something. t is as before" in msg
    assert "DROP EXTENSION pg_repack CASCADE" in msg
    argv, env = seen.read_text().splitlines()
    assert pg_cluster.password not in argv
    assert "--table t" in argv and "--no-order" in argv and "--no-kill-backend" in argv
    assert env == f"pw={pg_cluster.password} opts="
    assert file_of(tables, "t") == before
