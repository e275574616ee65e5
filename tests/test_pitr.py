"""Point-in-time recovery with real pgBackRest on a dedicated throwaway cluster (archive_mode
needs a restart, so not the shared session cluster): enable, restart with the printed command,
physical backup, restore to a time and to the moment before a migrate, the live server never
stopped; a broken archive_command named by doctor; bad input refused before anything."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dbops import audit, localpg
from dbops.errors import OpsError
from dbops.ops import pitr as pitr_op
from tests.conftest import ALEMBIC_INI, ROOT, InvokeRunner, offline_settings
from tests.fixtures.projects import SAMPLE_REVS as REVS

NO_PGBACKREST = (
    "pgbackrest is not installed (apt-get install -y --no-install-recommends pgbackrest; "
    "scripts/test installs it)"
)
DB = "app"


def postmaster_pid(cluster: localpg.Cluster) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def rows(cluster: localpg.Cluster, dbname: str = DB) -> list[str]:
    with cluster.connect(dbname) as conn:
        return [r[0] for r in conn.execute("SELECT note FROM pitr_probe ORDER BY id")]


def insert(cluster: localpg.Cluster, note: str) -> None:
    with cluster.connect(DB) as conn:
        conn.execute("INSERT INTO pitr_probe (note) VALUES (%s)", (note,))


@pytest.fixture(scope="module")
def pitr(tmp_path_factory):
    """A cluster with archiving on (pitr-enable, the printed restart, pitr-enable again), a
    database at REVS[2] with a probe table, and one full physical backup."""
    if shutil.which("pgbackrest") is None:
        pytest.skip(NO_PGBACKREST)
    cluster = localpg.new_cluster(fast=False)
    work = tmp_path_factory.mktemp("pitr")
    try:
        cluster.create_database(DB)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("POSTGRES_", "DBOPS_", "PG", "DATABASE_URL"))
        }
        env.update(cluster.env(DB))
        env.update(
            DBOPS_TARGET="local",
            DBOPS_ENV_FILE=str(work / "no.env"),
            DBOPS_BACKUP_DIR=str(work / "backups"),
            DBOPS_ALEMBIC_INI=str(ALEMBIC_INI),
            # the server's user must reach it: under the cluster's folder (pytest's is root's)
            DBOPS_PITR_REPO=str(Path(cluster.root) / "pgbackrest"),
            DBOPS_PITR_ARCHIVE_TIMEOUT="30s",
        )
        run = InvokeRunner(env)
        first = run("pitr-enable", "--yes")
        assert first.returncode == 0, first.stderr
        assert "restart" in first.stdout
        restart = next(
            ln.strip() for ln in first.stdout.splitlines() if "pg_ctl" in ln and "restart" in ln
        )
        waiting = json.loads(run("doctor", "--json").stdout)
        check = {c["name"]: c for c in waiting["checks"]}["archiving"]
        assert check["status"] == "warn" and check["next"].startswith(restart)
        pid_before = postmaster_pid(cluster)
        done = subprocess.run(restart, shell=True, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr + done.stdout
        assert postmaster_pid(cluster) != pid_before  # really restarted
        second = run("pitr-enable", "--yes")
        assert second.returncode == 0, second.stderr
        assert "archiving works" in second.stdout
        again = run("pitr-enable")  # idempotent: nothing to change, no question asked
        assert again.returncode == 0, again.stderr
        assert "archiving works" in again.stdout and "ALTER SYSTEM" not in again.stderr
        repo = Path(env["DBOPS_PITR_REPO"])
        assert repo.stat().st_mode & 0o777 == 0o700
        assert (repo / "pgbackrest.conf").stat().st_mode & 0o777 == 0o600
        assert run("migrate", "--to", REVS[2], "--no-backup").returncode == 0
        with cluster.connect(DB) as conn:
            conn.execute("CREATE TABLE pitr_probe (id serial PRIMARY KEY, note text)")
        backup = run("backup", "--physical")
        assert backup.returncode == 0, backup.stderr
        assert "physical backup:" in backup.stdout and "verified" in backup.stdout
        yield {"cluster": cluster, "run": run, "env": env}
    finally:
        cluster.destroy()


def test_backups_lists_the_physical_backup_next_to_the_dumps(pitr):
    listing = pitr["run"]("backups")
    assert listing.returncode == 0, listing.stderr
    assert "physical (pgBackRest):" in listing.stdout
    row = listing.stdout.split("physical (pgBackRest):")[1]
    assert "full" in row and " yes " in row and "F" in row  # type, verified, label …F
    data = json.loads(pitr["run"]("backups", "--json").stdout)
    phys = [e for e in data if e.get("kind") == "physical"]
    assert phys and phys[0]["type"] == "full" and phys[0]["wal_start"] and phys[0]["verified"]
    settings = pitr["run"]("settings")
    assert "DBOPS_PITR_RETENTION_FULL" in settings.stdout


def test_restore_to_time_keeps_rows_before_and_the_live_server_running(pitr):
    cluster, run = pitr["cluster"], pitr["run"]
    pid = postmaster_pid(cluster)
    insert(cluster, "A")
    with cluster.connect(DB) as conn:
        (t,) = conn.execute("SELECT clock_timestamp()::text").fetchone()
    time.sleep(0.2)
    insert(cluster, "B")
    done = run("restore", f"--to-time={t}", "--yes")
    assert done.returncode == 0, done.stderr
    assert rows(cluster) == ["A"]
    assert postmaster_pid(cluster) == pid  # the live server never stopped
    assert "previous database kept as" in done.stdout
    # the side instance is gone; the dump of that moment is a verified backup
    side = Path(pitr["env"]["DBOPS_PITR_REPO"]) / "side"
    assert list(side.iterdir()) == []
    assert "dump of that moment" in done.stdout


def test_restore_before_a_migrate_lands_at_the_revision_before(pitr):
    cluster, run = pitr["cluster"], pitr["run"]
    pid = postmaster_pid(cluster)
    insert(cluster, "before-migrate")
    done = run("migrate", "--to", REVS[3], "--no-backup")
    assert done.returncode == 0, done.stderr
    insert(cluster, "after-migrate")
    audit_log = Path(pitr["env"]["DBOPS_BACKUP_DIR"]) / "audit.jsonl"
    record = [json.loads(ln) for ln in audit_log.read_text().splitlines() if '"migrate"' in ln][-1]
    assert record["wal_lsn"] and record["wal_at"]  # recorded before its first statement
    done = run("restore", f"--before={record['ts']}", "--yes", "--keep-side")
    assert done.returncode == 0, done.stderr
    with cluster.connect(DB) as conn:
        (rev,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert rev == REVS[2]
    assert rows(cluster)[-1] == "before-migrate" and "after-migrate" not in rows(cluster)
    assert postmaster_pid(cluster) == pid
    assert "side instance kept" in done.stdout
    side = next((Path(pitr["env"]["DBOPS_PITR_REPO"]) / "side").iterdir())
    remove = next(ln for ln in done.stdout.splitlines() if "remove it when done" in ln)
    rm = subprocess.run(remove.split(": ", 1)[1], shell=True, capture_output=True, text=True)
    assert rm.returncode == 0, rm.stderr
    assert not side.exists()


def test_an_interrupted_restore_leaves_the_live_database_and_its_side_instance_is_named(pitr):
    cluster, env = pitr["cluster"], pitr["env"]
    insert(cluster, "C")
    before = rows(cluster)
    with cluster.connect(DB) as conn:
        (t,) = conn.execute("SELECT clock_timestamp()::text").fetchone()
    insert(cluster, "D")
    side = Path(env["DBOPS_PITR_REPO"]) / "side"
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "restore", f"--to-time={t}", "--yes"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not list(side.glob("*/data/postmaster.pid")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # dbops dies; the side instance it started does not
        proc.wait()
    assert rows(cluster) == before + ["D"]  # the live database is untouched
    rep = json.loads(pitr["run"]("doctor", "--json").stdout)
    check = {c["name"]: c for c in rep["checks"]}["archiving"]
    left = next(side.iterdir())
    assert check["status"] == "warn" and "interrupted" in check["summary"]
    assert str(left) in check["next"] and "running" in " ".join(check["details"])
    again = pitr["run"]("restore", f"--to-time={t}", "--yes")
    assert again.returncode == 0, again.stderr
    assert f"removed side instance {left}" in again.stderr
    assert rows(cluster) == before and list(side.iterdir()) == []


def test_bad_input_is_refused_before_anything(pitr):
    run = pitr["run"]
    for args, says in [
        (("--to-lsn=nonsense",), "not a WAL position"),
        (("--to-time=yesterday-ish",), "--to-time"),
        (("--before=nosuchrev",), "no migrate or rollback"),
        (("--to-time=2020-01-01 00:00:00+00",), "no physical backup finished before"),
        (("--to-time=2999-01-01 00:00:00+00",), "is in the future"),
        (("latest", "--to-time=2020-01-01"), "not both"),
    ]:
        done = run("restore", *args, "--yes")
        assert done.returncode == 1, (args, done.stdout)
        assert says in done.stderr, (args, done.stderr)
        assert "nothing was touched" in done.stderr or "unchanged" in done.stderr


def test_each_pitr_run_writes_one_lifecycle_record(pitr, tmp_path):
    """pitr-enable, backup --physical and restore --to-time audit through lifecycle.Operation:
    an op_id and duration on each; a refusal before the confirmation writes nothing; a
    restore that fails after it is recorded as failed, with the state it left."""
    cluster, run = pitr["cluster"], pitr["run"]
    audit_log = Path(pitr["env"]["DBOPS_BACKUP_DIR"]) / "audit.jsonl"

    def records(action: str) -> list[dict]:
        lines = audit_log.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["action"] == action]

    enables = records("pitr-enable")
    assert [r["result"] for r in enables[:2]] == ["restart_needed", "ok"]
    assert all(r["op_id"] and r["stanza"] and "duration_s" in r for r in enables)
    (phys, *_) = records("backup-physical")
    assert phys["result"] == "ok" and phys["verified"] is True and phys["label"]
    assert 0 <= phys["backup_s"] <= phys["duration_s"]
    for r in records("restore-pitr"):  # the restores of the tests before, when they ran
        assert r["result"] == "ok" and r["op_id"] and r["dump"] and r["timings"]["total_s"] > 0
    before = len(records("restore-pitr"))
    assert run("restore", "--to-lsn=nonsense", "--yes").returncode == 1
    assert len(records("restore-pitr")) == before  # refused before anything: no record
    with cluster.connect(DB) as conn:
        (t,) = conn.execute("SELECT clock_timestamp()::text").fetchone()
    no_bin = tmp_path / "no-server-binaries"
    no_bin.mkdir()
    done = run("restore", f"--to-time={t}", "--yes", env={"DBOPS_PG_BINDIR": str(no_bin)})
    assert done.returncode == 1 and "server binaries" in done.stderr, done.stderr
    failed = records("restore-pitr")[-1]
    assert failed["result"] == "failed" and "server binaries" in failed["error"]
    assert failed["state"] == "unchanged (nothing was touched)" and failed["physical_backup"]
    assert list((Path(pitr["env"]["DBOPS_PITR_REPO"]) / "side").iterdir()) == []


def test_a_broken_archive_command_is_named_by_doctor(pitr):
    cluster, run = pitr["cluster"], pitr["run"]
    with cluster.connect() as conn:
        conn.execute("ALTER SYSTEM SET archive_command = 'false'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(1)
        insert(cluster, "E")  # something to archive: a switch with no WAL since is a no-op
        with cluster.connect(DB) as conn:
            conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with cluster.connect() as conn:
                (failed,) = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()
            if failed:
                break
            time.sleep(0.5)
        assert failed, "the archiver never ran the broken archive_command"
        rep = json.loads(run("doctor", "--json").stdout)
        check = {c["name"]: c for c in rep["checks"]}["archiving"]
        assert check["status"] == "fail"
        assert "false" in " ".join(check["details"])  # the archive_command named
        assert check["next"] == "invoke pitr-enable --yes"
        fixed = run("pitr-enable", "--yes")
        assert fixed.returncode == 0, fixed.stderr
        assert "archiving works" in fixed.stdout
    finally:
        with cluster.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
    rep = json.loads(run("doctor", "--json").stdout)
    assert {c["name"]: c for c in rep["checks"]}["archiving"]["status"] == "ok"


def test_refusals_without_pitr_set_up(invoke, tmp_path):
    """On the shared session cluster (no pitr-enable): each refusal is one line, nothing
    touched, and names the next command."""
    done = invoke("restore", "--to-time=2026-01-01 00:00:00+00", "--yes")
    assert done.returncode == 1
    assert "not set up" in done.stderr and "next: invoke pitr-enable" in done.stderr
    done = invoke("backup", "--physical")
    assert done.returncode == 1 and "next: invoke pitr-enable" in done.stderr
    done = invoke("backup", "--physical", "--type=weekly")
    assert done.returncode == 1 and "not one of full, diff, incr" in done.stderr
    done = invoke("pitr-enable", "--yes", env={"DBOPS_TARGET": "compose"})
    assert done.returncode == 1 and "DBOPS_TARGET=local" in done.stderr
    done = invoke("restore")
    assert done.returncode != 0 and "file" in done.stderr  # FILE still required without a time
    assert not (tmp_path / "pgbackrest").exists()


def test_the_backup_a_restore_starts_from_finished_before_the_target():
    def b(label, stop_s, stop_lsn, error=False):
        return {
            "label": label,
            "timestamp": {"stop": stop_s},
            "lsn": {"stop": stop_lsn},
            "error": error,
        }

    backups = [
        b("1F", 100, "0/2000100"),
        b("2F", 200, "0/5000100"),
        b("3F", 300, "0/9000000", True),
    ]
    at = lambda s: datetime.fromtimestamp(s, UTC)  # noqa: E731
    assert pitr_op.pick_backup(backups, lsn=None, at=at(150))["label"] == "1F"
    assert pitr_op.pick_backup(backups, lsn=None, at=at(200.5))["label"] == "1F"  # 1 s margin
    assert pitr_op.pick_backup(backups, lsn=None, at=at(400))["label"] == "2F"  # 3F has an error
    assert pitr_op.pick_backup(backups, lsn="0/5000100", at=None)["label"] == "2F"
    assert pitr_op.pick_backup(backups, lsn="0/1000000", at=None) is None


def test_before_finds_the_run_by_its_ts_or_a_revision_it_ran(tmp_path):
    s = offline_settings(tmp_path, DBOPS_BACKUP_DIR=str(tmp_path / "b"))
    audit.append(s, "migrate", result="ok", steps=[{"revision": "aaa111"}], wal_lsn="0/10")
    second = audit.append(
        s, "migrate", result="failed", steps=[{"revision": "bbb222"}], wal_lsn="0/20"
    )
    audit.append(s, "rollback", result="ok", steps=[{"revision": "ccc333"}])  # no position
    assert pitr_op.audit_target(s, "aaa")["wal_lsn"] == "0/10"
    assert pitr_op.audit_target(s, second["ts"])["wal_lsn"] == "0/20"
    with pytest.raises(OpsError, match="holds no WAL position"):
        pitr_op.audit_target(s, "ccc333")
    with pytest.raises(OpsError, match="no migrate or rollback"):
        pitr_op.audit_target(s, "zzz")


def test_an_unchanged_archive_timeout_is_not_changed_again():
    assert not pitr_op._differs("archive_timeout", "60", "60s")
    assert not pitr_op._differs("archive_timeout", "60", "1min")
    assert pitr_op._differs("archive_timeout", "30", "60s")
    assert pitr_op._differs("archive_command", "false", "pgbackrest … %p")
