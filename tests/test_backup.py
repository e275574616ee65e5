"""invoke backup / backups / verify-backup against real PostgreSQL (local target)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from dbops import catalog, process, seam
from dbops.agent_client import Agent
from dbops.ops import backup as backup_op
from dbops.ops import retention
from tests.fixtures.projects import SAMPLE_HEAD, fill


def backup_files(folder: Path) -> list[str]:
    """The folder's files, less the run record (dbops/metrics.py: every backup run counts)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if ".dbops-runs." not in p.name)


def only_backup(settings) -> dict:
    entries = catalog.list_backups(settings)
    assert len(entries) == 1 and entries[0]["verified"], entries
    return entries[0]


def test_backup_is_verified_private_and_described_by_its_manifest(
    invoke, settings, db_conn, pg_major
):
    assert invoke("migrate").returncode == 0
    fill(db_conn)
    done = invoke("backup", "--no-retention")
    assert done.returncode == 0, done.stderr
    newest = catalog.list_backups(settings)[0]
    path = Path(newest["path"])
    assert f"invoke restore {path}" in done.stdout
    assert path.name.startswith(f"{settings.database}.") and SAMPLE_HEAD[:12] in path.name
    folder = settings.backup_dir
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for p in folder.iterdir():
        if p.name != "audit.jsonl":
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert not [p for p in backup_files(folder) if p.endswith(".partial")]
    m = newest["manifest"]
    assert m["sha256"] == catalog.sha256_file(path) and m["size"] == path.stat().st_size
    assert (
        m["revisions"] == [SAMPLE_HEAD]
        and m["reason"] == "manual"
        and m["database"] == settings.database
    )
    assert m["tables"]["public.items"] == 1000 and m["tables"]["public.Odd Name"] == 2
    assert m["tables"]["public.alembic_version"] == 1
    assert m["verification"]["ok"] and m["server_version"].startswith(f"{pg_major}.")
    assert m["pg_dump_version"].startswith("pg_dump (PostgreSQL)")
    for key in ("started_at", "finished_at", "duration_s", "operator", "compression"):
        assert m[key] not in (None, "")


def test_row_counts_come_from_the_dumps_snapshot(settings, db_conn):
    """Writes committed after the snapshot is exported are in neither the dump nor the counts."""
    fill(db_conn, 10)
    with Agent(settings) as agent:
        agent.call("lock.acquire", purpose="backup")
        info = agent.call("backup.begin")
        db_conn.execute("INSERT INTO items VALUES (1000001, 'late')")
        counts = agent.call("backup.counts")["tables"]
        agent.call("backup.end")
    assert counts["public.items"] == 10 and info["snapshot"]


def test_backups_lists_newest_first_with_json(invoke, db_conn):
    fill(db_conn, 10)
    assert invoke("backup", "--no-retention").returncode == 0
    assert invoke("backup", "--no-retention", "--reason", "pre-migrate").returncode == 0
    done = invoke("backups", "--json")
    entries = json.loads(done.stdout)
    assert [e["reason"] for e in entries] == ["pre-migrate", "manual"]
    assert all(e["verified"] and e["size"] > 0 and e["created_at"].endswith("Z") for e in entries)
    text = invoke("backups").stdout
    assert "pre-migrate" in text and "yes" in text


def test_jobs_gives_a_directory_dump_that_verifies_and_restores(invoke, settings, db_conn):
    fill(db_conn, 2000)
    done = invoke("backup", "--jobs", "2", "--no-retention")
    assert done.returncode == 0, done.stderr
    e = only_backup(settings)
    assert e["path"].endswith(".dir.tar") and e["manifest"]["format"] == "directory"
    assert invoke("verify-backup", e["path"]).returncode == 0
    done = invoke("verify-backup", e["path"], "--restore-test")
    assert done.returncode == 0, done.stderr
    assert "restore test" in done.stdout


def test_verify_backup_full_read_and_restore_test(invoke, settings, db_conn, pg_cluster):
    fill(db_conn, 100)
    assert invoke("backup", "--no-retention").returncode == 0
    path = only_backup(settings)["path"]
    done = invoke("verify-backup", path)
    assert done.returncode == 0 and "full read" in done.stdout, done.stderr
    done = invoke("verify-backup", Path(path).name, "--restore-test")  # a bare name works too
    assert done.returncode == 0, done.stderr
    with pg_cluster.connect() as conn:
        assert not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname LIKE 'dbops_scratch_%'"
        ).fetchall()


def test_a_second_operation_is_refused_naming_the_lock_holder(invoke, settings):
    with Agent(settings) as agent:
        agent.call("lock.acquire", purpose="migrate")
        done = invoke("backup")
    assert done.returncode == 1
    assert "busy" in done.stderr and "pid" in done.stderr and "dbops:migrate" in done.stderr
    assert backup_files(settings.backup_dir) == []


def test_password_is_on_no_argv_and_in_no_output(settings, db_conn, monkeypatch, invoke):
    fill(db_conn, 10)
    seen: list[list[str]] = []
    real_start, real_run = seam.start, seam.run

    def spy_start(launch, **kw):
        seen.append(launch.argv)
        return real_start(launch, **kw)

    def spy_run(launch, **kw):
        seen.append(launch.argv)
        return real_run(launch, **kw)

    monkeypatch.setattr(seam, "start", spy_start)
    monkeypatch.setattr(seam, "run", spy_run)
    import dbops.agent_client

    monkeypatch.setattr(dbops.agent_client, "start", spy_start)
    assert settings.password
    backup_op.backup(settings, prune=False)
    from dbops.ops import restore as restore_op

    path = only_backup(settings)["path"]
    restore_op.verify(settings, path, restore_test=True)
    assert len(seen) >= 4
    assert not [a for a in seen if settings.password in " ".join(a)]
    done = invoke("backup", "--no-retention")
    assert settings.password not in done.stdout + done.stderr


def test_pg_dump_older_than_the_server_is_refused_clearly(invoke, settings, tmp_path, pg_major):
    fake = tmp_path / "oldbin"
    fake.mkdir()
    (fake / "pg_dump").write_text(f"#!/bin/sh\necho 'pg_dump (PostgreSQL) {pg_major - 1}.11'\n")
    (fake / "pg_dump").chmod(0o755)
    done = invoke("backup", env={"DBOPS_PG_BINDIR": str(fake)})
    assert done.returncode == 1
    assert "older than the server" in done.stderr and "DBOPS_PG_BINDIR" in done.stderr
    assert [n for n in backup_files(settings.backup_dir) if not n.startswith("audit")] == []


def test_not_enough_free_space_is_refused_before_dumping(invoke, settings):
    done = invoke("backup", env={"DBOPS_BACKUP_RESERVE_MB": str(10**12)})
    assert done.returncode == 1 and "not enough free space" in done.stderr
    assert backup_files(settings.backup_dir) == []


def test_stale_partials_of_this_database_are_swept(invoke, settings):
    settings.backup_dir.mkdir(mode=0o700)
    stale = (
        settings.backup_dir / f".{settings.database}.2026-01-01T000000Z.base.manual.dump.partial"
    )
    other = settings.backup_dir / ".otherdb.2026-01-01T000000Z.base.manual.dump.partial"
    stale.write_bytes(b"x" * 100)
    other.write_bytes(b"x")
    assert invoke("backup").returncode == 0
    assert not stale.exists() and other.exists()


def test_a_dump_without_manifest_is_listed_as_not_a_backup(invoke, settings):
    assert invoke("backup").returncode == 0
    path = Path(only_backup(settings)["path"])
    catalog.manifest_path(path).unlink()
    entries = catalog.list_backups(settings)
    assert len(entries) == 1 and not entries[0]["verified"] and entries[0]["manifest"] is None
    assert "NOT A BACKUP" in invoke("backups").stdout
    assert catalog.list_backups(settings, include_invalid=False) == []


def _entry(path: str, created: str, reason: str = "manual") -> dict:
    return {"path": path, "created_at": created, "reason": reason}


def test_retention_plan_keeps_last_daily_weekly_and_protected():
    entries = [_entry(f"b{i}", f"2026-11-{22 - i:02d}T10:00:00Z") for i in range(20)]
    entries.insert(5, _entry("premig", "2026-11-17T11:00:00Z", "pre-migrate"))
    entries.sort(key=lambda e: e["created_at"], reverse=True)
    keep, delete = retention.plan(entries, {"last": 2, "daily": 3, "weekly": 2})
    kept = {e["path"] for e in keep}
    assert {"b0", "b1", "b2", "premig"} <= kept  # last 2, 3 days, newest pre-migrate
    assert len(kept) < len(entries) and delete
    keep, _ = retention.plan(entries, {"last": 0, "daily": 0, "weekly": 0})
    assert {e["path"] for e in keep} == {"b0", "premig"}  # never the newest nor the pre-migrate


def test_retention_runs_after_a_backup_and_spares_the_newest_pre_migrate(invoke, settings):
    env = {
        "DBOPS_BACKUP_KEEP_LAST": "1",
        "DBOPS_BACKUP_KEEP_DAILY": "0",
        "DBOPS_BACKUP_KEEP_WEEKLY": "0",
    }
    assert invoke("backup", "--reason", "pre-migrate", env=env).returncode == 0
    for _ in range(2):
        assert invoke("backup", env=env).returncode == 0
    reasons = [e["reason"] for e in catalog.list_backups(settings)]
    assert reasons == ["manual", "pre-migrate"]
    # an invalid file is never touched by retention
    junk = settings.backup_dir / f"{settings.database}.2020-01-01T000000Z.base.manual.dump"
    junk.write_bytes(b"")
    assert invoke("backup", env=env).returncode == 0
    assert junk.exists()


@pytest.mark.parametrize("bad", ["gzip:99x!", "bzip"])
def test_bad_compression_setting_is_refused(invoke, bad):
    done = invoke("backup", env={"DBOPS_BACKUP_COMPRESSION": bad})
    assert done.returncode == 1 and "DBOPS_BACKUP_COMPRESSION" in done.stderr


def test_compression_override_is_used_and_recorded(invoke, settings):
    assert invoke("backup", env={"DBOPS_BACKUP_COMPRESSION": "0"}).returncode == 0
    assert only_backup(settings)["manifest"]["compression"] == "0"


def test_dump_command_runs_pg_tools_through_the_seam(settings):
    """Command construction: the dump is one `sh -c` next to the server, with the snapshot."""
    target = seam.target_for(settings)
    info = {"snapshot": "SNAP", "server_version_num": 150004}
    argv = backup_op.dump_argv(settings, info, fmt="custom", jobs=1, z="1", touched=None)
    assert argv == process.sh_argv(
        "backup",
        "dbops-backup",
        "SNAP",
        "15",
        "custom",
        "1",
        "1",
        settings.get("DBOPS_BACKUP_LOCK_WAIT"),
    )
    launch = target.pg(argv)
    assert launch.argv[:2] == ["sh", "-c"] and "SNAP" in launch.argv
    assert "dbops backup" in launch.display and "pg_dump --snapshot" not in launch.display


def test_compose_commands_run_next_to_the_server_without_a_tty_or_password(settings):
    """Command construction for the compose target: exec -T in the db service, the password
    only in the compose process's environment (the container has its own)."""
    from dataclasses import replace

    s = replace(settings, target="compose", compose=("docker", "compose"))
    target = seam.target_for(s)
    for launch in (
        target.pg(process.sh_argv("backup", "dbops-backup", "S", "15", "custom", "1", "1")),
        target.pg(process.sh_argv("restore", "dbops-restore", "restore", "custom", "x", "1")),
    ):
        assert launch.argv[:5] == ["docker", "compose", "exec", "-T", "-e"]
        assert s.db_service in launch.argv and "sh" in launch.argv
        assert s.password not in " ".join(launch.argv) and s.password not in launch.display


def test_a_table_locked_by_someone_else_fails_the_backup_instead_of_queueing(
    invoke, settings, pg_cluster, database
):
    with pg_cluster.connect(database) as setup:
        fill(setup, 10)
    with pg_cluster.connect(database) as other:
        with other.transaction():
            other.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
            done = invoke("backup", env={"DBOPS_BACKUP_LOCK_WAIT": "1s"}, timeout=60)
    assert done.returncode == 1, done.stdout
    assert "lock" in done.stderr.lower()
    assert catalog.list_backups(settings) == []
