"""invoke restore against real PostgreSQL: the round trip, and every refusal before touching."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from dbops import audit, catalog
from tests.fixtures.projects import SAMPLE_HEAD, SAMPLE_REVS


def rows(conn) -> list:
    return conn.execute("SELECT id, body FROM items ORDER BY id").fetchall()


def databases(cluster, like: str) -> list[str]:
    with cluster.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", [like]
            ).fetchall()
        ]


@pytest.fixture
def backed_up(invoke, settings, pg_cluster, database):
    """A database at head with data, and one verified backup of it: (path, rows)."""
    assert invoke("migrate").returncode == 0
    with pg_cluster.connect(database) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 500) g")
        conn.execute(f"ALTER DATABASE {database} SET work_mem = '7MB'")
        data = rows(conn)
    assert invoke("backup", "--no-retention").returncode == 0
    path = next(e["path"] for e in catalog.list_backups(settings) if e["reason"] == "manual")
    return Path(path), data


def live_state(cluster, database):
    with cluster.connect(database) as conn:
        items = rows(conn) if conn.execute("SELECT to_regclass('items')").fetchone()[0] else None
        version = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return items, version


def test_round_trip_restores_the_backups_data(invoke, settings, pg_cluster, database, backed_up):
    path, data = backed_up
    with pg_cluster.connect(database) as conn:
        conn.execute("DELETE FROM items WHERE id % 3 = 0")
        conn.execute("UPDATE items SET body = 'changed' WHERE id < 10")
        conn.execute("CREATE TABLE after_backup (x int)")
        conn.execute("UPDATE alembic_version SET version_num = %s", [SAMPLE_REVS[-2]])
    changed = live_state(pg_cluster, database)
    done = invoke("restore", str(path), "--yes")
    assert done.returncode == 0, done.stderr
    with pg_cluster.connect(database) as conn:
        assert rows(conn) == data
        assert conn.execute("SELECT to_regclass('after_backup')").fetchone()[0] is None
        assert [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")] == [
            SAMPLE_HEAD
        ]
        assert (
            conn.execute("SHOW work_mem").fetchone()[0] == "7MB"
        )  # database settings carried over
    old = databases(pg_cluster, f"{database}_dbops_old_%")
    assert len(old) == 1 and old[0] in done.stdout
    assert live_state(pg_cluster, old[0]) == changed
    rec = audit.read(settings)[-1]
    assert rec["action"] == "restore" and rec["result"] == "ok" and rec["old_database"] == old[0]
    assert rec["from"] == [SAMPLE_REVS[-2]] and rec["to"] == [SAMPLE_HEAD]
    # The kept database is the pre-restore state: no redundant dump of it was taken.
    assert rec.get("pre_restore_backup") is None and "pre-restore backup" not in done.stdout
    assert "pre-restore" not in [e["reason"] for e in catalog.list_backups(settings)]
    # The printed drop command, run as printed, drops the kept database.
    drop = re.search(r"drop it when satisfied: (.+)$", done.stdout, re.M).group(1)
    assert invoke(*shlex.split(drop)[1:]).returncode == 0
    assert databases(pg_cluster, f"{database}_dbops_old_%") == []
    assert databases(pg_cluster, f"{database}_dbops_restoring_%") == []


def test_the_printed_undo_renames_the_old_database_back(
    invoke, settings, pg_cluster, database, backed_up
):
    path, data = backed_up
    with pg_cluster.connect(database) as conn:
        conn.execute("DELETE FROM items WHERE id > 100")
    changed = live_state(pg_cluster, database)
    done = invoke("restore", str(path), "--yes")
    assert done.returncode == 0, done.stderr
    assert live_state(pg_cluster, database)[0] == data
    restored_old = databases(pg_cluster, f"{database}_dbops_old_%")
    undo = re.search(r"undo \(rename it back\): (.+)$", done.stdout, re.M).group(1)
    assert undo == f"invoke restore-undo --name {restored_old[0]} --yes"
    back = invoke(*shlex.split(undo)[1:])
    assert back.returncode == 0, back.stderr
    assert live_state(pg_cluster, database) == changed  # the pre-restore state, by rename
    kept = databases(pg_cluster, f"{database}_dbops_old_%")
    assert len(kept) == 1 and kept[0] != restored_old[0] and kept[0] in back.stdout
    assert live_state(pg_cluster, kept[0])[0] == data  # the restored one is kept in turn
    assert audit.read(settings)[-1]["action"] == "restore-undo"
    # Only kept databases of this database can be swapped in; nothing changes otherwise.
    wrong = invoke("restore-undo", "--name", "postgres", "--yes")
    assert wrong.returncode == 1 and "not a kept previous database" in wrong.stderr
    assert live_state(pg_cluster, database) == changed


def test_pre_backup_on_request(invoke, settings, pg_cluster, database, backed_up):
    path, _ = backed_up
    done = invoke("restore", str(path), "--yes", "--pre-backup")
    assert done.returncode == 0, done.stderr
    pre = Path(audit.read(settings)[-1]["pre_restore_backup"])
    assert pre.exists() and catalog.check_backup(pre, full=True)[1] == []
    assert f"pre-restore backup: {pre}" in done.stdout
    pre_manifest = catalog.read_manifest(catalog.manifest_path(pre))
    assert pre_manifest["reason"] == "pre-restore"
    assert pre_manifest["compression"] == "0"  # "fast": room for an uncompressed one here
    assert len(databases(pg_cluster, f"{database}_dbops_old_%")) == 1


def test_drop_old_needs_a_pre_backup_and_then_drops_it(
    invoke, settings, pg_cluster, database, backed_up
):
    path, data = backed_up
    with pg_cluster.connect(database) as conn:
        conn.execute("DELETE FROM items")
    done = refused(
        invoke,
        settings,
        pg_cluster,
        database,
        [str(path), "--yes", "--drop-old"],
        "needs --pre-backup",
    )
    assert "next: invoke restore" in done.stderr and "--pre-backup --drop-old" in done.stderr
    done = invoke("restore", str(path), "--yes", "--pre-backup", "--drop-old")
    assert done.returncode == 0, done.stderr
    assert live_state(pg_cluster, database)[0] == data
    assert databases(pg_cluster, f"{database}_dbops_old_%") == []
    rec = audit.read(settings)[-1]
    assert rec["dropped_old"] and rec["old_database"] is None
    pre = Path(rec["pre_restore_backup"])
    assert catalog.check_backup(pre, full=True)[1] == []
    assert f"undo: invoke restore {pre} --yes" in done.stdout


def test_restore_latest_terminates_sessions_with_a_warning(invoke, pg_cluster, database, backed_up):
    path, data = backed_up
    conn = pg_cluster.connect(database)
    try:
        done = invoke("restore", "latest", "--yes")
    finally:
        conn.close()
    assert done.returncode == 0, done.stderr
    assert "warning: terminating 1 session" in done.stderr
    assert f"now holds {path}" in done.stdout


def test_restore_of_a_directory_dump(invoke, settings, pg_cluster, database, backed_up):
    _, data = backed_up
    assert invoke("backup", "--jobs", "2", "--no-retention").returncode == 0
    tar = next(e for e in catalog.list_backups(settings) if e["path"].endswith(".tar"))
    path = tar["path"]
    with pg_cluster.connect(database) as conn:
        conn.execute("DELETE FROM items")
    done = invoke(
        "restore",
        path,
        "--yes",
        "--pre-backup",
        env={"DBOPS_RESTORE_PRE_BACKUP_COMPRESSION": "auto"},
    )
    assert done.returncode == 0, done.stderr
    with pg_cluster.connect(database) as conn:
        assert rows(conn) == data
    pre = next(e for e in catalog.list_backups(settings) if e["reason"] == "pre-restore")
    # auto: what a backup's auto picks with this pg_dump
    # (zstd:1 where the build has zstd, else gzip 1)
    assert pre["manifest"]["compression"] == tar["manifest"]["compression"]
    assert pre["manifest"]["compression"] in ("1", "zstd:1")


def refused(invoke, settings, pg_cluster, database, args, expect: str, **kw):
    before = live_state(pg_cluster, database)
    n_backups = len(catalog.list_backups(settings))
    done = invoke("restore", *args, **kw)
    assert done.returncode == 1, done.stdout
    assert expect in done.stderr, done.stderr
    assert "unchanged" in done.stderr
    assert live_state(pg_cluster, database) == before
    assert len(catalog.list_backups(settings)) == n_backups  # not even a pre-restore backup
    assert databases(pg_cluster, f"{database}_dbops_%") == []
    return done


def test_truncated_dump_is_refused(invoke, settings, pg_cluster, database, backed_up):
    path, _ = backed_up
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    refused(invoke, settings, pg_cluster, database, [str(path), "--yes"], "truncated")
    assert invoke("verify-backup", str(path)).returncode == 1
    assert not catalog.list_backups(settings)[0]["verified"]


def test_one_flipped_byte_is_refused(invoke, settings, pg_cluster, database, backed_up):
    path, _ = backed_up
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    refused(invoke, settings, pg_cluster, database, [str(path), "--yes"], "sha256")
    done = invoke("verify-backup", str(path))
    assert done.returncode == 1 and "sha256" in done.stderr
    assert not catalog.list_backups(settings, full=True)[0]["verified"]


def test_missing_manifest_is_refused(invoke, settings, pg_cluster, database, backed_up):
    path, _ = backed_up
    catalog.manifest_path(path).unlink()
    refused(invoke, settings, pg_cluster, database, [str(path), "--yes"], "no manifest")
    assert invoke("verify-backup", str(path)).returncode == 1


def test_backup_of_another_database_is_refused_unless_told(invoke, pg_cluster, database, backed_up):
    path, _ = backed_up
    other = f"{database}_other"[:60]
    pg_cluster.create_database(other)
    try:
        env = {"POSTGRES_DB": other}
        done = invoke("restore", str(path), "--yes", env=env)
        assert done.returncode == 1 and "--other-database" in done.stderr
        done = invoke("restore", str(path), "--yes", "--other-database", env=env)
        assert done.returncode == 0, done.stderr
    finally:
        with pg_cluster.connect() as conn:
            for name in databases(pg_cluster, f"{other}%"):
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_dump_from_a_newer_major_version_is_refused(
    invoke, settings, pg_cluster, database, backed_up
):
    path, _ = backed_up
    mpath = catalog.manifest_path(path)
    m = json.loads(mpath.read_text())
    m.update(server_version="99.1", server_version_num=990001)
    mpath.write_text(json.dumps(m))
    refused(invoke, settings, pg_cluster, database, [str(path), "--yes"], "newer than this server")


def test_production_without_a_terminal_needs_yes(invoke, settings, pg_cluster, database, backed_up):
    path, _ = backed_up
    refused(
        invoke,
        settings,
        pg_cluster,
        database,
        [str(path)],
        "ENVIRONMENT=production and no terminal",
        env={"ENVIRONMENT": "production"},
    )


def test_missing_file(invoke):
    done = invoke("restore", "/nonexistent.dump", "--yes")
    assert done.returncode == 1 and "no such file" in done.stderr


def test_parallel_restore_of_a_custom_dump(invoke, pg_cluster, database, backed_up):
    path, data = backed_up
    with pg_cluster.connect(database) as conn:
        conn.execute("DELETE FROM items")
    done = invoke("restore", str(path), "--yes", "--jobs", "2")
    assert done.returncode == 0, done.stderr
    with pg_cluster.connect(database) as conn:
        assert rows(conn) == data


def test_no_terminal_and_no_yes_is_refused_before_anything(
    invoke, settings, pg_cluster, database, backed_up
):
    path, _ = backed_up
    done = refused(invoke, settings, pg_cluster, database, [str(path)], "no terminal to confirm on")
    assert f"next: invoke restore {path} --yes" in done.stderr
