"""Fault cases, on a database big enough (~50 MB of md5 text) to interrupt mid-stream.
Each asserts that nothing valid-looking is left behind and the live database is unchanged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from psycopg import sql

from dbops import catalog, localpg
from dbops.config import load_settings
from tests.conftest import ROOT

ROWS = 400_000
SLOW = {"DBOPS_BACKUP_COMPRESSION": "6"}  # a slower dump: a wider window to interrupt it


def _fill_big(conn) -> None:
    conn.execute("CREATE TABLE big (id int PRIMARY KEY, a text, b text)")
    conn.execute(
        "INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text), md5(random()::text) "
        "FROM generate_series(1, %s) g",
        [ROWS],
    )
    conn.execute("CREATE TABLE small (x int)")
    conn.execute("INSERT INTO small SELECT generate_series(1, 10)")


@pytest.fixture(scope="module")
def big_template(pg_cluster):
    name = f"tpl_big_{uuid.uuid4().hex[:6]}"
    pg_cluster.create_database(name)
    with pg_cluster.connect(name) as conn:
        _fill_big(conn)
    yield name
    with pg_cluster.connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def database(pg_cluster, big_template):
    """Overrides conftest's: a fresh copy of the big database per test."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    with pg_cluster.connect() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(big_template)
            )
        )
    yield name
    with pg_cluster.connect() as conn:
        for (db,) in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", [name + "%"]
        ).fetchall():
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )


def fingerprint(cluster, dbname: str) -> tuple:
    with cluster.connect(dbname) as conn:
        return (
            conn.execute("SELECT count(*), sum(hashtext(a || b)::bigint) FROM big").fetchone()
            + conn.execute("SELECT count(*) FROM small").fetchone()
        )


def start_invoke(env: dict, *args: str, prefix: list[str] | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "invoke", *args]
    if prefix:
        argv = [*prefix, *argv]
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def wait_for(pred, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def partial_bigger_than(folder: Path, size: int):
    def pred():
        if not folder.is_dir():
            return None
        for p in folder.iterdir():
            if p.name.endswith(".partial"):
                try:
                    if p.stat().st_size > size:
                        return p
                except FileNotFoundError:
                    pass
        return None

    return pred


def pids(pattern: str, env: str | None = None) -> list[int]:
    """``pgrep -f pattern``, narrowed to the processes whose environment holds ``env``
    ("NAME=value"): other test workers and other checkouts run pg_dump on this machine too."""
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(x) for x in out.split() if env is None or _environ_has(int(x), env)]


def _environ_has(pid: int, entry: str) -> bool:
    try:
        return entry.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # ended meanwhile, or not ours to read
        return False


def assert_no_backup_left(settings) -> None:
    folder = settings.backup_dir
    leftovers = (
        [
            p.name
            for p in folder.iterdir()
            if p.name != "audit.jsonl" and ".dbops-runs." not in p.name  # the run record
        ]
        if folder.exists()
        else []
    )
    assert catalog.list_backups(settings) == [], leftovers
    assert leftovers == [], leftovers


def assert_no_temp_left(tmpdir: Path) -> None:
    """The scripts' temporary folders next to the server (TMPDIR) are gone too."""
    deadline = time.monotonic() + 10
    while list(tmpdir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(tmpdir.iterdir()) == []


def assert_no_restore_target(cluster, database: str) -> None:
    with cluster.connect() as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            [database + "_dbops_restoring_%"],
        ).fetchall()
    assert left == []


# --- backup --------------------------------------------------------------------------
def test_pg_dump_killed_mid_stream(ops_env, settings, pg_cluster, database, tmp_path):
    before = fingerprint(pg_cluster, database)
    (tmp_path / "t").mkdir()
    proc = start_invoke({**ops_env, **SLOW, "TMPDIR": str(tmp_path / "t")}, "backup")
    wait_for(partial_bigger_than(settings.backup_dir, 256 * 1024), what="the dump to stream")
    victims = pids("^pg_dump --snapshot", env=f"TMPDIR={tmp_path / 't'}")
    assert victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "pg_dump failed" in err or "full read" in err
    assert_no_backup_left(settings)
    assert fingerprint(pg_cluster, database) == before
    assert_no_temp_left(tmp_path / "t")


def test_write_error_mid_dump(ops_env, settings, pg_cluster, database, tmp_path):
    """ulimit -f: the file cannot grow past ~1 MB (EFBIG), as on a full disk."""
    before = fingerprint(pg_cluster, database)
    (tmp_path / "t").mkdir()
    proc = start_invoke(
        {**ops_env, "TMPDIR": str(tmp_path / "t")},
        "backup",
        prefix=["sh", "-c", 'ulimit -f 2048; exec "$@"', "sh"],
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "writing the backup" in err and "too large" in err.lower()
    assert_no_backup_left(settings)
    assert_no_temp_left(tmp_path / "t")
    assert fingerprint(pg_cluster, database) == before
    assert not pids("^pg_dump --snapshot", env=f"TMPDIR={tmp_path / 't'}")


def test_server_stopped_mid_dump(ops_env):
    cluster = localpg.new_cluster()
    try:
        cluster.create_database("app")
        with cluster.connect("app") as conn:
            _fill_big(conn)
        env = {**ops_env, **cluster.env("app"), **SLOW}
        settings = load_settings(ROOT, environ=env)
        before = fingerprint(cluster, "app")
        proc = start_invoke(env, "backup")
        wait_for(partial_bigger_than(settings.backup_dir, 256 * 1024), what="the dump to stream")
        cluster.stop("immediate")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert_no_backup_left(settings)
        cluster.start()
        assert fingerprint(cluster, "app") == before
    finally:
        cluster.destroy()


def test_truncated_archive_fails_the_full_read_even_where_list_passes(invoke, settings, tmp_path):
    """Why the full read: pg_restore --list reads only the table of contents."""
    assert invoke("backup").returncode == 0
    path = Path(catalog.list_backups(settings)[0]["path"])
    cut = tmp_path / "cut.dump"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 4 // 10])
    env = {**os.environ, "PATH": f"{settings.pg_bindir}:{os.environ['PATH']}"}
    assert (
        subprocess.run(["pg_restore", "--list", str(cut)], env=env, capture_output=True).returncode
        == 0
    )
    assert (
        subprocess.run(
            ["pg_restore", "-f", "/dev/null", str(cut)], env=env, capture_output=True
        ).returncode
        != 0
    )


# --- restore -------------------------------------------------------------------------
RESTORING = "^pg_restore --exit-on-error.* -d {}_dbops_restoring_"


def restore_until_pg_restore_runs(invoke, ops_env, settings, pg_cluster, database, db_conn):
    """Back up, change the data, start `invoke restore` and return once pg_restore is writing
    into the new database: (the restore process, the live database's fingerprint, the backup)."""
    assert invoke("backup").returncode == 0
    path = catalog.list_backups(settings)[0]["path"]
    db_conn.execute("DELETE FROM big WHERE id <= 1000")
    db_conn.close()
    before = fingerprint(pg_cluster, database)
    proc = start_invoke(ops_env, "restore", path, "--yes")
    # no pause here: with no pre-restore dump, restoring ~50 MB can finish in well under a second
    wait_for(lambda: pids(RESTORING.format(database)), what="pg_restore to start")
    return proc, before, path


def test_pg_restore_killed_mid_way(invoke, ops_env, settings, pg_cluster, database, db_conn):
    proc, before, path = restore_until_pg_restore_runs(
        invoke, ops_env, settings, pg_cluster, database, db_conn
    )
    running = pids(RESTORING.format(database))
    assert running, "pg_restore finished before it could be killed"
    for pid in running:
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "is unchanged" in err
    assert fingerprint(pg_cluster, database) == before
    assert_no_restore_target(pg_cluster, database)
    from dbops import audit

    assert audit.read(settings)[-1]["result"] == "failed"


def test_restore_killed_as_a_whole_then_the_next_restore_sweeps(
    invoke, ops_env, settings, pg_cluster, database, db_conn, tmp_path
):
    (tmp_path / "t").mkdir()
    ops_env = {**ops_env, "TMPDIR": str(tmp_path / "t")}
    proc, before, path = restore_until_pg_restore_runs(
        invoke, ops_env, settings, pg_cluster, database, db_conn
    )
    os.killpg(proc.pid, signal.SIGKILL)  # the operator's shell dies: host and agent gone
    proc.communicate(timeout=30)
    for pid in pids(RESTORING.format(database)):
        os.kill(pid, signal.SIGKILL)
    assert fingerprint(pg_cluster, database) == before
    assert_no_temp_left(
        tmp_path / "t"
    )  # the pre-restore dump's script cleaned up after the host died
    # what is left (a restore target, maybe a pre-restore .partial) is named as unfinished,
    # and nothing unverified is listed as a backup
    assert all(e["verified"] for e in catalog.list_backups(settings))
    done = invoke("restore", path, "--yes")
    assert done.returncode == 0, done.stderr
    assert "left behind by an interrupted restore" in done.stderr
    assert_no_restore_target(pg_cluster, database)
    assert not [p for p in settings.backup_dir.iterdir() if p.name.endswith(".partial")]
    assert fingerprint(pg_cluster, database)[0] == ROWS
