"""One at a time, and never queue user traffic: 10 concurrent migrates (through an
autocommit_block revision), and a session holding a lock on comments while migrate alters it."""

from __future__ import annotations

import subprocess
import threading
import time

from tests.fixtures.processes import start_invoke
from tests.fixtures.projects import REVS, SAMPLE_HEAD, catalog, make_project, seed, version_rows
from tests.fixtures.records import audit_records


def test_ten_concurrent_migrates_from_base_one_applies_the_others_name_the_holder(
    tmp_path, ops_env, db_conn
):
    ini = make_project(tmp_path, "concurrent")
    gate = tmp_path / "gate"
    env = {**ops_env, "DBOPS_ALEMBIC_INI": str(ini), "DBOPS_FIXTURE_GATE": str(gate)}
    procs = [start_invoke(env, "migrate") for _ in range(10)]
    # The winner waits at the gate AFTER its CREATE INDEX CONCURRENTLY committed: the lock must
    # survive that commit while the nine others try.
    deadline = time.monotonic() + 120
    while sum(p.poll() is not None for p in procs) < 9 and time.monotonic() < deadline:
        time.sleep(0.1)
    gate.touch()
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    winners = [r for r in results if r[0] == 0]
    losers = [r for r in results if r[0] != 0]
    assert len(winners) == 1, [r[2][-600:] for r in results]
    assert "applied 7 revision(s)" in winners[0][1]
    for _code, _out, err in losers:
        assert "busy: another dbops operation holds its lock: pid" in err, err[-800:]
        assert "dbops:migrate" in err and "since" in err
        assert "unchanged" in err
    assert version_rows(db_conn) == [REVS["concurrent"].rev]
    recs = audit_records(ops_env, "migrate")
    assert [r["result"] for r in recs] == ["ok"]
    from pathlib import Path

    assert len(list(Path(ops_env["DBOPS_BACKUP_DIR"]).glob("*pre-migrate*.dump"))) == 1


def _prober(conn_factory, stop: threading.Event, worst: list[float]):
    with conn_factory() as conn:
        while not stop.is_set():
            t0 = time.monotonic()
            conn.execute("SELECT count(*) FROM comments").fetchone()
            worst[0] = max(worst[0], time.monotonic() - t0)
            time.sleep(0.02)


def _setup_locked(pg_cluster, database, invoke, tmp_path, db_conn):
    ini = make_project(tmp_path, "flag")
    env = {
        "DBOPS_ALEMBIC_INI": str(ini),
        "DBOPS_LOCK_TIMEOUT": "500ms",
        "DBOPS_LOCK_RETRY_WAIT": "0.2",
    }
    assert invoke("migrate", "--to", SAMPLE_HEAD, "--no-backup", env=env).returncode == 0
    seed(db_conn)
    holder = pg_cluster.connect(database, application_name="app-worker")
    holder.autocommit = False
    holder.execute("UPDATE comments SET content = content")  # ROW EXCLUSIVE, transaction left open
    return env, holder


def test_migrate_waits_out_a_lock_holder_without_blocking_selects(
    pg_cluster, database, invoke, tmp_path, db_conn
):
    env, holder = _setup_locked(pg_cluster, database, invoke, tmp_path, db_conn)
    stop, worst = threading.Event(), [0.0]
    probe = threading.Thread(
        target=_prober, args=(lambda: pg_cluster.connect(database), stop, worst)
    )
    probe.start()
    # The holder lets go once the migrate has hit its first lock_timeout (read from its output,
    # not a timer: on a loaded machine the migrate may reach its ALTER late).
    proc = start_invoke({**invoke.env, **env, "DBOPS_LOCK_RETRIES": "8"}, "migrate", "--no-backup")
    lines: list[str] = []

    def release_after_first_timeout() -> None:
        released = False
        for line in proc.stdout:
            lines.append(line)
            if not released and "attempt 1/9" in line:
                holder.commit()
                released = True

    watcher = threading.Thread(target=release_after_first_timeout)
    watcher.start()
    try:
        code = proc.wait(timeout=300)
        watcher.join()
        stderr = proc.stderr.read()
    finally:
        proc.kill()
        stop.set()
        probe.join()
        holder.close()
    done = subprocess.CompletedProcess(proc.args, code, "".join(lines), stderr)
    assert done.returncode == 0, done.stderr
    assert "lock_timeout (500ms) on a1f1a9000001, attempt 1/9" in done.stdout
    assert "app-worker" in done.stdout  # the blocker is named while retrying
    assert version_rows(db_conn) == [REVS["flag"].rev]
    assert worst[0] < 0.5 + 0.35, f"a SELECT waited {worst[0]:.2f} s behind the migration"


def test_migrate_gives_up_cleanly_after_its_retries(
    pg_cluster, database, invoke, tmp_path, db_conn
):
    env, holder = _setup_locked(pg_cluster, database, invoke, tmp_path, db_conn)
    pid = holder.info.backend_pid
    stop, worst = threading.Event(), [0.0]
    probe = threading.Thread(
        target=_prober, args=(lambda: pg_cluster.connect(database), stop, worst)
    )
    probe.start()
    try:
        before = catalog(db_conn)
        done = invoke("migrate", "--no-backup", env={**env, "DBOPS_LOCK_RETRIES": "2"})
        after = catalog(db_conn)
    finally:
        stop.set()
        probe.join()
        holder.rollback()
        holder.close()
    assert done.returncode != 0
    err = done.stderr
    assert "gave up after 3 attempts" in err and f"pid {pid} 'app-worker'" in err
    assert f"now: {SAMPLE_HEAD}" in err and "# after the blocking session(s) above end" in err
    assert after == before
    assert worst[0] < 0.5 + 0.35, f"a SELECT waited {worst[0]:.2f} s behind the migration"


def _children(pid: int) -> list[int]:
    import os

    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def test_agent_killed_mid_run_is_reported_audited_and_releases_the_lock(
    tmp_path, ops_env, db_conn, invoke
):
    import os
    import signal

    ini = make_project(tmp_path, "concurrent")
    gate = tmp_path / "gate"
    env = {**ops_env, "DBOPS_ALEMBIC_INI": str(ini), "DBOPS_FIXTURE_GATE": str(gate)}
    proc = start_invoke(env, "migrate", "--no-backup")
    rev = REVS["concurrent"].rev
    deadline = time.monotonic() + 60
    # Kill only once the revision's CREATE INDEX CONCURRENTLY has committed (a valid index) and
    # the revision is waiting at the gate: killing earlier tests a different case.
    while time.monotonic() < deadline and not (
        db_conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (f"dbops:migrate {rev}",)
        ).fetchall()
        and db_conn.execute(
            "SELECT 1 FROM pg_index WHERE indexrelid = "
            "to_regclass('idx_comments_author_email') AND indisvalid"
        ).fetchall()
    ):
        time.sleep(0.1)
    agents = _children(proc.pid)
    assert agents, "the agent process was not found"
    for pid in agents:
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "migrate stopped" in err and "next: invoke current" in err
    assert version_rows(db_conn) == [SAMPLE_HEAD]  # the sample revisions committed, one by one
    rec = audit_records(ops_env, "migrate")[-1]
    assert rec["result"] == "failed" and rec["error_kind"] == "agent_died"
    assert len(rec["revision_hashes_applied"]) == 6
    gate.touch()
    # The lock died with the agent: the next run gets it. Its CREATE INDEX CONCURRENTLY had
    # committed before the kill, so re-running the revision meets the index; dbops says the
    # revision runs outside a transaction and points to doctor, instead of pretending.
    done = invoke("migrate", "--no-backup", env={"DBOPS_ALEMBIC_INI": str(ini)})
    assert done.returncode != 0 and "busy" not in done.stderr
    assert "already exists" in done.stderr and "OUTSIDE a transaction" in done.stderr
    assert "next: invoke doctor" in done.stderr
    assert version_rows(db_conn) == [SAMPLE_HEAD]
