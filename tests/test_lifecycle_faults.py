"""The agent never outlives its host's decision (dbops/agent/lifeline.py), with real processes:
the host (the invoke process) killed with -9, sent SIGTERM or SIGINT alone, the agent killed,
while a revision runs. Asserted on the database's state, the lock and the audit record."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from dbops import audit
from tests.fixtures.processes import start_invoke
from tests.fixtures.projects import HEADER, SAMPLE_HEAD, make_project

REV = "1f1f1f000001"
SLEEPING = """
def upgrade():
    op.execute("CREATE SEQUENCE lf_marker")
    op.execute("SELECT pg_sleep(%s)" % os.environ.get("LF_SLEEP", "0"))


def downgrade():
    op.execute("DROP SEQUENCE lf_marker")
"""
# Outside a transaction: each statement commits as it runs.
SLEEPING_AUTOCOMMIT = """
def upgrade():
    with op.get_context().autocommit_block():
        op.execute("CREATE SEQUENCE IF NOT EXISTS lf_marker")
        op.execute("SELECT pg_sleep(%s)" % os.environ.get("LF_SLEEP", "0"))


def downgrade():
    op.execute("DROP SEQUENCE lf_marker")
"""


def project(tmp_path, ops_env, alembic_at, body: str) -> dict:
    alembic_at(SAMPLE_HEAD)
    ini = make_project(tmp_path, patch_models=False)
    (ini.parent / "alembic" / "versions" / f"{REV}_sleep.py").write_text(
        HEADER.format(
            message="sleep", rev=REV, down=SAMPLE_HEAD, down_repr=repr(SAMPLE_HEAD), labels="None"
        )
        + body
    )
    return {**ops_env, "DBOPS_ALEMBIC_INI": str(ini), "LF_SLEEP": "60"}


def wait_for(pred, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def sleeping(db_conn) -> bool:
    return bool(
        db_conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
            "AND query LIKE 'SELECT pg_sleep%%' AND state = 'active'",
            (f"dbops:migrate {REV}",),
        ).fetchall()
    )


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def quiet_server(db_conn, database) -> bool:
    """Nothing of the migration left on the server: no session of it, no advisory lock."""
    sessions = db_conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dbops:%%' "
        "AND pid <> pg_backend_pid()"
    ).fetchone()[0]
    locks = db_conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[
        0
    ]
    return sessions == 0 and locks == 0


def version(db_conn) -> list[str]:
    return [r[0] for r in db_conn.execute("SELECT version_num FROM alembic_version").fetchall()]


def marker(db_conn) -> bool:
    return db_conn.execute("SELECT to_regclass('lf_marker')").fetchone()[0] is not None


def records(settings) -> list[dict]:
    return [r for r in audit.read(settings) if r.get("database") == settings.database]


def start_sleeping_migrate(env, db_conn):
    proc = start_invoke(env, "migrate", "--no-backup")
    try:
        wait_for(lambda: sleeping(db_conn), what="the revision's pg_sleep")
    except AssertionError:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(out + err) from None
    agents = children(proc.pid)
    assert agents, "no agent process under invoke"
    return proc, agents


def kill_host(proc, agents, db_conn, database) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_for(lambda: not any(alive(a) for a in agents), what="the agent to exit")
    wait_for(lambda: quiet_server(db_conn, database), what="its sessions and lock to end")


def orphans(settings) -> list[dict]:
    from dbops.ops.settle import unsettled

    return unsettled(settings)


def test_kill_9_host_mid_revision_rolls_back_frees_the_lock_and_is_settled(
    ops_env, settings, db_conn, database, tmp_path, alembic_at, invoke
):
    env = project(tmp_path, ops_env, alembic_at, SLEEPING)
    proc, agents = start_sleeping_migrate(env, db_conn)
    kill_host(proc, agents, db_conn, database)
    assert version(db_conn) == [SAMPLE_HEAD] and not marker(db_conn)
    [applying] = orphans(settings)  # written before the step: the only trace of the run
    assert applying["revision"] == REV and applying["direction"] == "up"

    report = json.loads(invoke("doctor", "--json", "--no-schema", env=env).stdout)
    audit_check = next(c for c in report["checks"] if c["name"] == "audit")
    assert audit_check["status"] == "warn" and audit_check["unsettled"] == [applying["op_id"]]
    assert any(REV in d and "did NOT commit" in d for d in audit_check["details"])
    assert audit_check["next"].startswith("invoke doctor --settle")

    settled = invoke("doctor", "--settle", "--json", "--no-schema", env=env)
    assert "did NOT commit" in settled.stderr, settled.stderr
    last = records(settings)[-1]
    assert last["result"] == "host_died" and last["op_id"] == applying["op_id"]
    assert last["committed"] is False and last["to"] == [SAMPLE_HEAD]
    assert orphans(settings) == []
    again = json.loads(invoke("doctor", "--json", "--no-schema", env=env).stdout)
    assert "unsettled" not in next(c for c in again["checks"] if c["name"] == "audit")
    # the next run is not told "busy" and applies it (no sleep this time)
    done = invoke("migrate", "--no-backup", env={**env, "LF_SLEEP": "0"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert version(db_conn) == [REV]


def test_next_migrate_settles_a_run_killed_outside_a_transaction(
    ops_env, settings, db_conn, database, tmp_path, alembic_at, invoke
):
    env = project(tmp_path, ops_env, alembic_at, SLEEPING_AUTOCOMMIT)
    proc, agents = start_sleeping_migrate(env, db_conn)
    kill_host(proc, agents, db_conn, database)
    assert version(db_conn) == [SAMPLE_HEAD]
    assert marker(db_conn)  # autocommit_block: its first statement had committed
    done = invoke("migrate", "--no-backup", env={**env, "LF_SLEEP": "0"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "settled:" in done.stdout and "did NOT commit" in done.stdout
    ops = [r for r in records(settings) if r.get("action") == "migrate"]
    assert [r["result"] for r in ops] == ["applying", "host_died", "applying", "ok"]
    assert ops[0]["op_id"] == ops[1]["op_id"] != ops[2]["op_id"] == ops[3]["op_id"]
    assert version(db_conn) == [REV]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_signal_to_the_host_alone_exits_130_with_the_state_read_back(
    sig, ops_env, settings, db_conn, database, tmp_path, alembic_at
):
    env = project(tmp_path, ops_env, alembic_at, SLEEPING)
    proc, agents = start_sleeping_migrate(env, db_conn)
    t0 = time.monotonic()
    os.kill(proc.pid, sig)  # the host only, not its process group
    out, err = proc.communicate(timeout=90)
    took = time.monotonic() - t0
    print(f"{sig.name} to exit: {took:.2f} s")
    assert proc.returncode == 130, out + err
    assert "migrate interrupted" in err and "Traceback" not in err
    assert f"now (read from the database after the agent exited): {SAMPLE_HEAD}" in err
    assert not any(alive(a) for a in agents)
    assert quiet_server(db_conn, database)
    assert version(db_conn) == [SAMPLE_HEAD] and not marker(db_conn)
    last = records(settings)[-1]
    assert last["result"] == "interrupted" and last["to"] == [SAMPLE_HEAD]


def test_agent_killed_mid_revision_is_one_line_without_traceback(
    ops_env, settings, db_conn, database, tmp_path, alembic_at
):
    env = project(tmp_path, ops_env, alembic_at, SLEEPING)
    proc, agents = start_sleeping_migrate(env, db_conn)
    for pid in agents:
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err and "BrokenPipeError" not in err
    assert "error: migrate stopped: the dbops agent exited" in err
    assert f"now (read from the database after the agent exited): {SAMPLE_HEAD}" in err
    # the server notices the dead client (client_connection_check_interval, PostgreSQL 14+;
    # older ones when the statement ends): its transaction rolls back
    wait_for(lambda: quiet_server(db_conn, database), timeout=90, what="the sessions to end")
    assert version(db_conn) == [SAMPLE_HEAD] and not marker(db_conn)
    last = records(settings)[-1]
    assert last["result"] == "failed" and last["error_kind"] == "agent_died"


# --- crash states of a restore: the swap cut short, a drill's scratch copy left behind -----
def allows_connections(pg_cluster, name: str) -> bool | None:
    with pg_cluster.connect() as m:
        row = m.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", [name])
        found = row.fetchone()
    return None if found is None else found[0]


def doctor_connectivity(invoke) -> dict:
    rep = invoke("doctor", "--json", "--no-schema")
    return next(c for c in json.loads(rep.stdout)["checks"] if c["name"] == "connectivity")


def test_swap_cut_short_after_closing_live_is_reopened_by_restore_undo(
    pg_cluster, database, settings, invoke
):
    with pg_cluster.connect() as m:  # the swap's first step, then the agent died
        m.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
    check = doctor_connectivity(invoke)
    assert check["status"] == "fail" and check["next"] == "invoke restore-undo", check
    assert "refusing connections" in check["summary"]
    undo = invoke("restore-undo", "--yes")
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert allows_connections(pg_cluster, database) is True
    last = records(settings)[-1]
    assert last["action"] == "restore-undo" and last["repaired"] == "closed"
    assert f"repaired: reopened {database}" in undo.stdout and "None" not in undo.stdout
    assert doctor_connectivity(invoke)["status"] != "fail"


def test_swap_cut_short_after_renaming_live_away_is_undone_by_restore_undo(
    pg_cluster, database, settings, invoke
):
    from dbops.agent.restore import OLD, derived_name

    old = derived_name(database, OLD)
    with pg_cluster.connect() as m:  # closed, renamed away; the restored copy never came in
        m.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        m.execute(f'ALTER DATABASE "{database}" RENAME TO "{old}"')
    check = doctor_connectivity(invoke)
    assert check["status"] == "fail" and check["next"] == "invoke restore-undo", check
    assert old in check["summary"] and "does not exist" in check["summary"]
    undo = invoke("restore-undo", "--yes")
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert allows_connections(pg_cluster, database) is True
    assert allows_connections(pg_cluster, old) is None
    assert records(settings)[-1]["repaired"] == "moved_away"
    assert f"repaired: renamed {old} back to {database}" in undo.stdout


def test_a_killed_drills_scratch_copy_is_swept_by_the_next_restore_test(
    pg_cluster, database, settings, invoke
):
    assert invoke("migrate").returncode == 0
    assert invoke("backup", "--no-retention").returncode == 0
    left = "dbops_scratch_restoretest_0badc0de"
    with pg_cluster.connect() as m:  # what a drill killed with -9 leaves: nobody holds it
        m.execute(f'CREATE DATABASE "{left}"')
    done = invoke("verify-backup", "latest", "--restore-test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"dropped {left}, left behind by a killed drill or restore-test" in done.stderr
    assert allows_connections(pg_cluster, left) is None


def test_serve_stopped_while_an_agent_query_waits_cancels_it_and_exits(
    ops_env, settings, db_conn, pg_cluster, database, tmp_path, alembic_at
):
    from tests.test_service import serve_proc, stop

    alembic_at(SAMPLE_HEAD)
    env = {**ops_env, "DBOPS_BACKUP_SCHEDULE": "*/3 * * * * *", "DBOPS_DRILL_SCHEDULE": "off"}
    with pg_cluster.connect(database) as blocker:  # backup.begin's read of the version row waits
        blocker.autocommit = False
        blocker.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
        log = tmp_path / "serve.log"
        proc = serve_proc(env, log=log)
        waiting = (
            "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'dbops:backup snapshot%%' "
            "AND wait_event_type = 'Lock'"
        )
        try:
            wait_for(lambda: db_conn.execute(waiting).fetchall(), what="the agent's query to wait")
        finally:
            t0 = time.monotonic()
            rc = stop(proc)
            took = time.monotonic() - t0
        blocker.rollback()
    print(f"serve stopped {took:.2f} s after SIGTERM")
    assert rc == 0, log.read_text()
    assert took < 30, log.read_text()  # it waited out DBOPS_BACKUP_LOCK_WAIT (60 s) before
    assert not db_conn.execute(waiting.replace(" AND wait_event_type = 'Lock'", "")).fetchall()
