"""Across PostgreSQL majors (issue 9): two real servers of different majors where the test needs
them (scripts/lib/pg_majors.py installs them from registries; a missing major is a skip that
says so). The rest of the suite runs on one major chosen by scripts/test --pg=N."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from dbops import catalog, pgbin
from dbops.agent import fingerprint
from dbops.config import load_settings
from tests.fixtures.projects import SAMPLE_HEAD as HEAD
from tests.fixtures.records import match_lines


def zstd_capable(folder: str) -> bool:
    """pg_dump 16+ built with zstd and lz4 (checked without connecting anywhere)."""
    v = pgbin.version(folder, "pg_dump")
    if not v or v[0] < 16:
        return False
    for z in ("zstd:1", "lz4"):
        probe = subprocess.run(
            [
                f"{folder}/pg_dump",
                "-Z",
                z,
                "-s",
                "-f",
                "/dev/null",
                "-d",
                "host=/nonexistent-dbops-probe connect_timeout=1",
            ],
            capture_output=True,
            text=True,
        )
        if "does not support" in probe.stderr or "not supported" in probe.stderr:
            return False
    return True


def on(cluster, database: str, **extra: str) -> dict[str, str]:
    """The operator's environment aimed at ``database`` on another cluster (its own pg tools)."""
    return {**cluster.env(database), **extra}


def fill(conn) -> list:
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 300) g")
    return conn.execute("SELECT * FROM items ORDER BY id").fetchall()


def load(env: dict):
    from tests.conftest import ROOT

    return load_settings(ROOT, environ={**os.environ, **env})


def newest_backup(settings) -> Path:
    return Path(catalog.list_backups(settings)[0]["path"])


def test_pg_dump_older_than_the_server_is_refused_before_dumping(
    invoke, settings, cluster_of, database
):
    majors = pgbin.installed_majors()
    dumps = {pgbin.version(b, "pg_dump"): b for b in majors.values()}  # (major, version) -> folder
    (old, old_version), new = min(dumps), max(majors)
    if old >= new:
        pytest.skip(f"needs a server newer than the oldest pg_dump installed ({old_version})")
    server = cluster_of(new)
    server.create_database(database)
    done = invoke("backup", env=on(server, database, DBOPS_PG_BINDIR=dumps[(old, old_version)]))
    assert done.returncode == 1, done.stdout + done.stderr
    err = done.stderr
    assert f"pg_dump {old_version} is older than the server (PostgreSQL {new}." in err, err
    assert f"DBOPS_PG_BINDIR=/usr/lib/postgresql/{new}/bin invoke backup" in err, err
    assert f"with pg_dump {new} or newer installed there" in err, err
    assert "DBOPS_TARGET=compose" in err
    assert "nothing was dumped" in err
    records = ("audit.jsonl", ".dbops-runs.", "..dbops-runs.")  # a failed backup is recorded
    left = (
        [p.name for p in settings.backup_dir.iterdir() if not p.name.startswith(records)]
        if settings.backup_dir.exists()
        else []
    )
    assert left == []


@pytest.mark.parametrize("z", ["zstd:3", "lz4"])
def test_zstd_and_lz4_backups_round_trip_on_16_plus(
    invoke, pg_cluster, pg_major, cluster_of, database, tmp_path, z
):
    """On a 16+ server with its own pg tools (built with zstd and lz4): dump, verify, restore.
    (pg_dump 17 against a 15 server dumps fine, but pg_restore 17 into 15 fails on
    SET transaction_timeout: docs/postgres-majors.md.)"""
    capable = [m for m, b in pgbin.installed_majors().items() if m >= 16 and zstd_capable(b)]
    if not capable:
        pytest.skip(
            "no PostgreSQL 16+ whose pg_dump has zstd and lz4 is installed "
            "(python scripts/lib/pg_majors.py bindir 17)"
        )
    server = pg_cluster if pg_major in capable else cluster_of(capable[-1])
    if server is not pg_cluster:
        server.create_database(database)
    env = on(server, database, DBOPS_BACKUP_DIR=str(tmp_path / "b"), DBOPS_BACKUP_COMPRESSION=z)
    assert invoke("migrate", env=env).returncode == 0
    with server.connect(database) as conn:
        data = fill(conn)
    done = invoke("backup", "--no-retention", env=env)
    assert done.returncode == 0, done.stderr
    entry = next(e for e in catalog.list_backups(load(env)) if e["reason"] == "manual")
    assert entry["manifest"]["compression"] == z and entry["verified"]
    with server.connect(database) as conn:
        conn.execute("DELETE FROM items")
    done = invoke("restore", entry["path"], "--yes", env=env)
    assert done.returncode == 0, done.stderr
    with server.connect(database) as conn:
        assert conn.execute("SELECT * FROM items ORDER BY id").fetchall() == data


def test_auto_compression_is_zstd_when_pg_dump_has_it_else_gzip(invoke, settings, pg_major):
    candidates = {m: b for m, b in pgbin.installed_majors().items() if m >= max(16, pg_major)}
    if not candidates:
        pytest.skip(f"no pg_dump 16+ (>= this server's {pg_major}) is installed")
    for major, folder in candidates.items():
        done = invoke("backup", "--no-retention", env={"DBOPS_PG_BINDIR": folder})
        assert done.returncode == 0, done.stderr
        expected = "zstd:1" if zstd_capable(folder) else "1"
        assert catalog.list_backups(settings)[0]["manifest"]["compression"] == expected, major


def test_schema_restored_on_a_newer_major_is_recognised_at_the_same_revision(
    invoke, settings, db_conn, database, pg_major, cluster_of, tmp_path
):
    newer = [m for m in pgbin.installed_majors() if m > pg_major]
    if not newer:
        pytest.skip(
            f"no major newer than this server's {pg_major} is installed "
            f"(python scripts/lib/pg_majors.py bindir 18)"
        )
    assert invoke("migrate").returncode == 0
    data = fill(db_conn)
    assert invoke("backup", "--no-retention").returncode == 0
    path = newest_backup(settings)
    before = fingerprint.collect(db_conn)

    server = cluster_of(newer[-1])
    server.create_database(database)
    env = on(server, database, DBOPS_CACHE_DIR=str(tmp_path / "cache"))
    done = invoke("restore", str(path), "--yes", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    with server.connect(database) as conn:
        assert conn.execute("SELECT * FROM items ORDER BY id").fetchall() == data
        after = fingerprint.collect(conn)
        conn.execute("DROP TABLE items")  # not the migrations' own: recover would call it drift
        conn.execute("DROP TABLE alembic_version")
    # the same schema reads the same on both majors (fingerprint.py has no major-specific output)
    assert fingerprint.diff(before, after) == []
    done = invoke("recover", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert match_lines(done.stdout) == [HEAD], done.stdout
    assert f"PostgreSQL {newer[-1]}." in done.stdout
    # the same cache folder, the old major: a second entry, keyed by major (none reused)
    db_conn.execute("DROP TABLE items")
    db_conn.execute("DROP TABLE alembic_version")
    done = invoke("recover", env={"DBOPS_CACHE_DIR": env["DBOPS_CACHE_DIR"]})
    assert match_lines(done.stdout) == [HEAD], done.stdout + done.stderr
    cached = sorted(
        json.loads(p.read_text())["server_major"]
        for p in (tmp_path / "cache" / "recover").glob("*.json")
    )
    assert cached == [pg_major, newer[-1]]


def test_pg_restore_refusals_name_both_versions_and_the_fix(settings):
    """Which pg_restore can restore which archive into which server (no server needed)."""
    from dbops.ops.restore import pg_restore_refusal

    r = pg_restore_refusal(settings, "a.dump", (17, "17.10"), (15, "15.18"), (15, "15.18"))
    assert r.message == (
        "pg_restore 17.10 cannot restore into PostgreSQL 15.18: pg_restore 17 and "
        "newer send SET transaction_timeout, which servers before 17 reject"
    )
    assert r.next_command.startswith("python scripts/lib/pg_majors.py bindir 15   # ")
    assert "restore with pg_restore 15, the major of the pg_dump 15.18" in r.next_command
    r = pg_restore_refusal(settings, "a.dump", (15, "15.18"), (17, "17.10"), None)  # a full read
    assert r.message == (
        "pg_restore 15.18 cannot read a.dump: it was written by pg_dump 17.10, whose "
        "archive format only pg_restore 17 or newer reads"
    )
    assert "restore with pg_restore 17, the dump's pg_dump major" in r.next_command
    for tool in ((15, "15.18"), (17, "17.10")):  # no pg_restore can put a 17 archive into 15
        r = pg_restore_refusal(settings, "a.dump", tool, (17, "17.10"), (15, "15.18"))
        assert r.message.startswith(
            "a.dump was written by pg_dump 17.10: only pg_restore 17 or newer "
            "reads it, and pg_restore 17+ cannot restore into PostgreSQL 15.18"
        )
        assert r.next_command.startswith("restore it into a PostgreSQL 17+ server")
    assert (
        pg_restore_refusal(settings, "a.dump", (17, "17.10"), (15, "15.18"), (17, "17.2")) is None
    )
    assert (
        pg_restore_refusal(settings, "a.dump", (16, "16.2"), (15, "15.18"), (15, "15.18")) is None
    )
    assert pg_restore_refusal(settings, "a.dump", (18, "18.6"), (17, "17.10"), None) is None
    assert pg_restore_refusal(settings, "a.dump", (15, "15.18"), None, (15, "15.18")) is None


def test_pg_restore_17_and_a_15_server_are_refused_before_anything_changes(
    invoke, settings, pg_cluster, database, pg_major
):
    """On real servers: pg_restore 17+ into this (pre-17) server is refused with both versions
    and the fix, before anything is changed, and the fix works; an archive written by pg_dump 17
    is refused by this server's pg_restore (it cannot read it) and, for a restore into this
    server, by every pg_restore."""
    majors = pgbin.installed_majors()
    newer = [m for m in majors if m >= 17]
    if pg_major >= 17 or not newer:
        pytest.skip(
            f"needs a server before 17 (this one is {pg_major}) and PostgreSQL 17+ tools "
            f"(python scripts/lib/pg_majors.py bindir 17)"
        )
    new_bin = majors[newer[0]]
    new_version = pgbin.version(new_bin, "pg_restore")[1]
    own_version = pgbin.version(settings.get("DBOPS_PG_BINDIR"), "pg_restore")[1]

    def sql(query: str, *args):  # a new session each time: a restore ends the ones it replaces
        with pg_cluster.connect(database) as conn:
            return conn.execute(query, *args).fetchall()

    assert invoke("migrate").returncode == 0
    with pg_cluster.connect(database) as conn:
        data = fill(conn)
    assert invoke("backup", "--no-retention").returncode == 0  # this server's own pg_dump
    path = newest_backup(settings)
    sql("DELETE FROM items RETURNING id")

    done = invoke("restore", str(path), "--yes", env={"DBOPS_PG_BINDIR": new_bin})
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: pg_restore {new_version} cannot restore into PostgreSQL {pg_major}."
    ), done.stderr
    assert "SET transaction_timeout" in errors[0]
    assert f"# restore with pg_restore {pg_major}, the major of the pg_dump {pg_major}." in (
        done.stderr
    )
    assert "DBOPS_PG_BINDIR" in done.stderr and "database state: unchanged" in done.stderr
    assert sql("SELECT count(*) FROM items") == [(0,)]  # nothing changed
    assert sql(
        "SELECT count(*) FROM pg_database WHERE starts_with(datname, %s)", [database + "_dbops_"]
    ) == [(0,)]
    done = invoke("restore", str(path), "--yes")  # the fix: the dump's own major
    assert done.returncode == 0, done.stderr
    assert sql("SELECT * FROM items ORDER BY id") == data

    done = invoke("backup", "--no-retention", env={"DBOPS_PG_BINDIR": new_bin})
    assert done.returncode == 0, done.stderr
    dump_version = pgbin.version(new_bin, "pg_dump")[1]
    assert (  # said when the backup is taken, not first at the restore
        f"warning: pg_dump {dump_version} is newer than the server (PostgreSQL {pg_major}."
        in done.stderr
    ), done.stderr
    assert f"back up with pg_dump {pg_major} " in done.stderr
    path17 = newest_backup(settings)
    done = invoke("verify-backup", str(path17))
    assert done.returncode == 1
    assert (
        f"error: pg_restore {own_version} cannot read {path17.name}: it was written by pg_dump "
        f"{pgbin.version(new_bin, 'pg_dump')[1]}"
    ) in done.stderr, done.stderr
    assert invoke("verify-backup", str(path17), env={"DBOPS_PG_BINDIR": new_bin}).returncode == 0
    done = invoke("restore", str(path17), "--yes", env={"DBOPS_PG_BINDIR": new_bin})
    assert done.returncode == 1 and "next: restore it into a PostgreSQL 17+ server" in done.stderr
    assert sql("SELECT * FROM items ORDER BY id") == data


def test_newer_dump_warning_only_for_pg_dump_17_plus_of_a_server_before_17():
    line = "pg_dump (PostgreSQL) {} (Debian)"
    assert pgbin.newer_dump_warning(line.format("17.10"), "15.18", 15).startswith(
        "warning: pg_dump 17.10 is newer than the server (PostgreSQL 15.18): this backup "
        "restores into PostgreSQL 17+ only"
    )
    assert pgbin.newer_dump_warning(line.format("18.1"), "16.2", 16) is not None
    assert pgbin.newer_dump_warning(line.format("16.2"), "15.18", 15) is None  # no SET
    assert pgbin.newer_dump_warning(line.format("18.1"), "17.10", 17) is None
    assert pgbin.newer_dump_warning(line.format("15.18"), "15.18", 15) is None
    assert pgbin.newer_dump_warning("", "15.18", 15) is None
