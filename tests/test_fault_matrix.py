"""The fault matrix (issue 18): a state-changing task x a way its run ends (kill -9 of the
host, SIGTERM to the host, the server stopped with ``pg_ctl stop -m immediate``) x the step it
was at (during the backup, during a revision, during restore's swap). Each cell asserts: no
commit without an audit line; the audit record and the printed state equal the database; the
lock ends with the work; what is left is named by the next run or by doctor with the command
that fixes it, and that command works.

Synchronised on state, never on sleeps: a revision waits on an advisory lock the test holds, a
pg_dump on a table the test holds ACCESS EXCLUSIVE, the swap on a pg_database row the test
holds FOR UPDATE; timeouts are safety nets only.

Cells covered elsewhere: migrate x {kill -9 host, SIGTERM host, SIGINT host, kill -9 agent}
during a revision (test_lifecycle_faults.py, test_migrate_concurrency.py); backup x kill -9
pg_dump / server stop during the stream (test_backup_faults.py); restore x kill -9 of the
whole process group / of pg_restore (test_backup_faults.py); serve x SIGTERM during a backup's
agent query (test_lifecycle_faults.py, test_service.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from dbops import audit, catalog, localpg
from dbops.config import load_settings
from tests.conftest import ROOT
from tests.fixtures.processes import start_invoke
from tests.fixtures.projects import HEADER, SAMPLE_HEAD, make_project
from tests.test_lifecycle_faults import alive, children, wait_for

REV = "fa17fa000001"
GATE = 4242  # the advisory lock key a gated revision waits on (per database: a scratch copy's
# revision never waits)
GATED = f"""
def upgrade():
    op.execute("CREATE SEQUENCE fm_marker")
    op.execute("SELECT pg_advisory_xact_lock({GATE})")


def downgrade():
    op.execute("DROP SEQUENCE fm_marker")
    op.execute("SELECT pg_advisory_xact_lock({GATE})")
"""
ROLLBACK = ("rollback", "--to=-1", "--yes", "--no-backup", "--no-putback")
MIGRATE = ("migrate", "--no-backup")


# --- helpers -------------------------------------------------------------------------------
def gated_project(tmp_path, env: dict) -> dict:
    ini = make_project(tmp_path, patch_models=False)
    (ini.parent / "alembic" / "versions" / f"{REV}_gated.py").write_text(
        HEADER.format(
            message="gated", rev=REV, down=SAMPLE_HEAD, down_repr=repr(SAMPLE_HEAD), labels="None"
        )
        + GATED
    )
    return {**env, "DBOPS_ALEMBIC_INI": str(ini)}


def run(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@contextlib.contextmanager
def gate_held(connect):
    """The test holds the revision's advisory lock: a gated revision waits there."""
    with connect() as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [GATE])
        yield conn.info.backend_pid


def waiting(conn, what: str, event: str) -> bool:
    """A dbops (or pg_dump) session of this server waits on a lock: ``what`` matches its
    application_name, ``event`` its wait_event."""
    return bool(
        conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE %s "
            "AND wait_event_type = 'Lock' AND wait_event = %s",
            [what, event],
        ).fetchall()
    )


def quiet(conn, *spare: int) -> bool:
    """No dbops session and no pg_dump left on the server, no advisory lock but the test's."""
    sessions = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE (application_name LIKE 'dbops:%%' "
        "OR application_name = 'pg_dump') AND pid <> pg_backend_pid()"
    ).fetchone()[0]
    locks = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT pid = ANY(%s)",
        [list(spare)],
    ).fetchone()[0]
    return sessions == 0 and locks == 0


def version(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT version_num FROM alembic_version").fetchall()]


def marker(conn) -> bool:
    return conn.execute("SELECT to_regclass('fm_marker')").fetchone()[0] is not None


def records(settings) -> list[dict]:
    return [r for r in audit.read(settings) if r.get("database") == settings.database]


def unsettled(settings) -> list[dict]:
    from dbops.ops.settle import unsettled as orphans

    return orphans(settings)


def started(env: dict, args: tuple, until) -> tuple[subprocess.Popen, list[int]]:
    """``invoke args`` started; returns once ``until()`` holds: (the process, its agents)."""
    proc = start_invoke(env, *args)
    try:
        wait_for(until, timeout=120, what=f"invoke {args[0]} to reach the step")
    except AssertionError:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(out + err) from None
    return proc, [pid for pid in children(proc.pid) if b"dbops.agent" in cmdline(pid)]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def doctor_check(env: dict, name: str) -> dict:
    report = json.loads(run(env, "doctor", "--json", "--no-schema").stdout)
    return next(c for c in report["checks"] if c["name"] == name)


@pytest.fixture
def own_cluster(ops_env, tmp_path):
    """A throwaway cluster of this test's own (it is stopped with -m immediate): database
    "app", the environment and settings pointed at it."""
    cluster = localpg.new_cluster(fast=False)  # durable commits: a crash keeps them
    try:
        cluster.create_database("app")
        env = {**ops_env, **cluster.env("app")}
        yield cluster, env
    finally:
        cluster.destroy()


# --- a revision: migrate and rollback ------------------------------------------------------
@pytest.fixture
def at_rev(ops_env, tmp_path, alembic_at, pg_cluster, database):
    """The gated project, the test database at its head (REV): ready for a rollback."""
    env = gated_project(tmp_path, ops_env)
    alembic_at(REV, ini=env["DBOPS_ALEMBIC_INI"])
    return env


def revision_waits(conn, task: str):
    return lambda: waiting(conn, f"dbops:{task}%", "advisory")


def test_rollback_kill_9_host_mid_revision_rolls_back_and_is_settled(
    at_rev, settings, pg_cluster, database, db_conn
):
    with gate_held(lambda: pg_cluster.connect(database)) as holder:
        proc, agents = started(at_rev, ROLLBACK, revision_waits(db_conn, "rollback"))
        assert agents, "no agent process under invoke"
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        wait_for(lambda: not any(alive(a) for a in agents), what="the agent to exit")
        # the lock ends with the work: while the test still holds the gate
        wait_for(lambda: quiet(db_conn, holder), what="its sessions and lock to end")
    assert version(db_conn) == [REV] and marker(db_conn)  # the downgrade did not commit
    [applying] = unsettled(settings)
    assert applying["action"] == "rollback" and applying["direction"] == "down"
    check = doctor_check(at_rev, "audit")
    assert check["unsettled"] == [applying["op_id"]]
    assert check["next"].startswith("invoke doctor --settle")
    settled = ok(run(at_rev, "doctor", "--settle", "--json", "--no-schema"))
    assert "did NOT commit" in settled.stderr
    last = records(settings)[-1]
    assert last["result"] == "host_died" and last["committed"] is False and last["to"] == [REV]
    ok(run(at_rev, *ROLLBACK))  # the next run is not told busy, and applies it
    assert version(db_conn) == [SAMPLE_HEAD] and not marker(db_conn)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_rollback_signal_to_the_host_alone_exits_130_with_the_state_read_back(
    sig, at_rev, settings, pg_cluster, database, db_conn
):
    with gate_held(lambda: pg_cluster.connect(database)) as holder:
        proc, agents = started(at_rev, ROLLBACK, revision_waits(db_conn, "rollback"))
        os.kill(proc.pid, sig)  # the host only, not its process group
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, out + err
        assert not any(alive(a) for a in agents)
        assert quiet(db_conn, holder)  # before the gate opens: nothing could commit later
    assert "rollback interrupted" in err and "Traceback" not in err
    assert f"now (read from the database after the agent exited): {REV}" in err
    assert version(db_conn) == [REV] and marker(db_conn)
    last = records(settings)[-1]
    assert last["result"] == "interrupted" and last["to"] == [REV]
    assert unsettled(settings) == []


def test_rollback_kill_9_agent_mid_revision_is_one_line_and_rolled_back(
    at_rev, settings, pg_cluster, database, db_conn
):
    with gate_held(lambda: pg_cluster.connect(database)) as holder:
        proc, agents = started(at_rev, ROLLBACK, revision_waits(db_conn, "rollback"))
        for pid in agents:
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        # the server notices the dead client (client_connection_check_interval)
        wait_for(lambda: quiet(db_conn, holder), timeout=90, what="the sessions to end")
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err and "the dbops agent exited" in err
    assert f"now (read from the database after the agent exited): {REV}" in err
    assert version(db_conn) == [REV] and marker(db_conn)
    last = records(settings)[-1]
    assert last["result"] == "failed" and last["error_kind"] == "agent_died"
    assert unsettled(settings) == []


@pytest.mark.parametrize("task", ["migrate", "rollback"])
def test_server_immediate_stop_mid_revision(task, own_cluster, tmp_path):
    cluster, env = own_cluster
    env = gated_project(tmp_path, env)
    settings = load_settings(ROOT, environ=env)
    ok(run(env, "migrate", f"--to={REV if task == 'rollback' else SAMPLE_HEAD}", "--no-backup"))
    before = REV if task == "rollback" else SAMPLE_HEAD
    args = ROLLBACK if task == "rollback" else MIGRATE
    with cluster.connect("app") as watch:
        with gate_held(lambda: cluster.connect("app")):
            proc, agents = started(env, args, revision_waits(watch, task))
            cluster.stop("immediate")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err, err
    assert not any(alive(a) for a in agents)
    cluster.start()
    with cluster.connect("app") as conn:
        assert version(conn) == [before]  # crash recovery: the revision's transaction is gone
        assert marker(conn) is (task == "rollback")
        assert quiet(conn)
    last = records(settings)[-1]
    assert last["action"] == task and last["result"] == "failed", last
    assert unsettled(settings) == []  # the host wrote the outcome: nothing for doctor to settle
    # the printed state never claims a revision the database does not have
    after = REV if task == "migrate" else SAMPLE_HEAD
    assert f"now (read from the database after the agent exited): {after}" not in err
    ok(run(env, *args))
    with cluster.connect("app") as conn:
        assert version(conn) == [SAMPLE_HEAD if task == "rollback" else REV]


# --- at commit: the agent asked the host (ready_to_commit); the host never answers ---------
@pytest.fixture
def below_rev(ops_env, tmp_path, alembic_at, pg_cluster, database):
    """The gated project, the test database one revision below its head: ready for a migrate."""
    alembic_at(SAMPLE_HEAD)
    return gated_project(tmp_path, ops_env)


def waiting_for_commit(conn):
    """The revision's work is done, its transaction open: the agent waits for the host's word."""
    return lambda: conn.execute(
        "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'dbops:migrate%%' "
        "AND state = 'idle in transaction'"
    ).fetchall()


def stopped_at_commit(env, pg_cluster, database, db_conn):
    """``invoke migrate`` with its host stopped (SIGSTOP) while the revision waits on the
    gate; the gate then opens: the agent asks the host to commit and nobody answers."""
    with gate_held(lambda: pg_cluster.connect(database)):
        proc, agents = started(env, MIGRATE, revision_waits(db_conn, "migrate"))
        os.kill(proc.pid, signal.SIGSTOP)
    wait_for(waiting_for_commit(db_conn), what="the agent to ask for the commit")
    return proc, agents


def test_migrate_kill_9_host_at_commit_rolls_back_and_is_settled(
    below_rev, settings, pg_cluster, database, db_conn
):
    proc, agents = stopped_at_commit(below_rev, pg_cluster, database, db_conn)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_for(lambda: not any(alive(a) for a in agents), what="the agent to exit")
    wait_for(lambda: quiet(db_conn), what="its sessions and lock to end")
    assert version(db_conn) == [SAMPLE_HEAD] and not marker(db_conn)
    [applying] = unsettled(settings)
    assert applying["revision"] == REV
    settled = ok(run(below_rev, "doctor", "--settle", "--json", "--no-schema"))
    assert "did NOT commit" in settled.stderr
    ok(run(below_rev, *MIGRATE))
    assert version(db_conn) == [REV] and marker(db_conn)


def test_migrate_sigterm_host_at_commit_exits_130_and_says_what_the_database_holds(
    below_rev, settings, pg_cluster, database, db_conn
):
    proc, agents = stopped_at_commit(below_rev, pg_cluster, database, db_conn)
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, err
    assert not any(alive(a) for a in agents)
    assert quiet(db_conn)
    now = version(db_conn)
    assert marker(db_conn) is (now == [REV])  # all of the revision or none of it
    assert f"now (read from the database after the agent exited): {now[0]}" in err
    last = records(settings)[-1]
    assert last["result"] == "interrupted" and last["to"] == now
    assert unsettled(settings) == []


# --- the backup: pg_dump waits on a table the test holds -----------------------------------
BLOCK = "fm_block"


def end(conn) -> None:
    """Roll back the test's transaction; closed when the server stopped under it."""
    try:
        conn.rollback()
    except psycopg.OperationalError:
        conn.close()


@contextlib.contextmanager
def table_held(connect):
    with connect() as conn:
        conn.autocommit = False
        conn.execute(f"LOCK TABLE {BLOCK} IN ACCESS EXCLUSIVE MODE")
        yield conn.info.backend_pid
        end(conn)


def dump_waits(conn):
    return lambda: waiting(conn, "pg_dump", "relation")


def partials(settings) -> list[str]:
    folder = settings.backup_dir
    if not folder.exists():
        return []
    return [p.name for p in folder.iterdir() if p.name.endswith(".partial")]


def dump_pids(port: int) -> list[int]:
    """This server's pg_dump processes (other test runs may dump on other servers)."""
    out = subprocess.run(["pgrep", "-f", "^pg_dump --snapshot"], capture_output=True, text=True)
    mine = []
    for pid in (int(x) for x in out.stdout.split()):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PGPORT={port}".encode() in environ:
            mine.append(pid)
    return mine


@pytest.fixture
def blockable(ops_env, alembic_at, db_conn):
    alembic_at(SAMPLE_HEAD)
    db_conn.execute(f"CREATE TABLE {BLOCK} (x int)")
    db_conn.execute(f"INSERT INTO {BLOCK} SELECT generate_series(1, 10)")
    return ops_env


def agent_gone(conn) -> bool:
    """No dbops session, no advisory lock (the dbops lock, the exported snapshot's session)."""
    return not conn.execute(
        "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'dbops:%%' "
        "UNION ALL SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
    ).fetchall()


def assert_partials_named_and_swept(env, settings) -> None:
    """A killed dump's .partial is named by doctor with `invoke backup`, which removes it."""
    left = partials(settings)
    if left:
        check = doctor_check(env, "backups")
        assert check["next"] == "invoke backup", check
        assert sorted(Path(p).name for p in check["partial_files"]) == sorted(left), check
        ok(run(env, "backup"))
    assert partials(settings) == []


def test_backup_kill_9_host_while_pg_dump_waits_frees_the_lock_and_is_swept(
    blockable, settings, pg_cluster, database, db_conn
):
    with table_held(lambda: pg_cluster.connect(database)):
        proc, agents = started(blockable, ("backup",), dump_waits(db_conn))
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        wait_for(lambda: not any(alive(a) for a in agents), what="the agent to exit")
        wait_for(lambda: agent_gone(db_conn), what="the dbops lock to end")
    wait_for(lambda: quiet(db_conn), what="pg_dump to end once the table is free")
    assert catalog.list_backups(settings) == []
    assert partials(settings)  # what the killed run left: named by doctor, swept by a backup
    assert_partials_named_and_swept(blockable, settings)
    assert len(catalog.list_backups(settings)) == 1


def test_backup_kill_9_host_while_pg_dump_waits_ends_pg_dump_with_it(
    blockable, settings, pg_cluster, database, db_conn
):
    env = {**blockable, "DBOPS_BACKUP_LOCK_WAIT": "600s"}
    with table_held(lambda: pg_cluster.connect(database)):
        proc, agents = started(env, ("backup",), dump_waits(db_conn))
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        wait_for(lambda: not any(alive(a) for a in agents), what="the agent to exit")
        try:  # the work ends with its host, while the table is still held
            wait_for(lambda: not dump_pids(pg_cluster.port), timeout=20, what="pg_dump to end")
        finally:
            stray = dump_pids(pg_cluster.port)
            for pid in stray:
                os.kill(pid, signal.SIGKILL)
    assert not stray


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_backup_signal_to_the_host_while_pg_dump_waits_exits_130_and_leaves_nothing(
    sig, blockable, settings, pg_cluster, database, db_conn
):
    with table_held(lambda: pg_cluster.connect(database)) as holder:
        proc, agents = started(blockable, ("backup",), dump_waits(db_conn))
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, out + err
        assert not any(alive(a) for a in agents)
        assert not dump_pids(pg_cluster.port)
        wait_for(lambda: quiet(db_conn, holder), timeout=30, what="the sessions to end")
    assert "Traceback" not in err and "interrupted" in err
    assert catalog.list_backups(settings) == [] and partials(settings) == []
    ok(run(blockable, "backup"))


def test_backup_kill_9_agent_while_pg_dump_waits_fails_in_one_line_and_leaves_nothing(
    blockable, settings, pg_cluster, database, db_conn
):
    env = {**blockable, "DBOPS_BACKUP_LOCK_WAIT": "600s"}
    with table_held(lambda: pg_cluster.connect(database)):
        proc, agents = started(env, ("backup",), dump_waits(db_conn))
        for pid in agents:
            os.kill(pid, signal.SIGKILL)
        try:  # the host fails while the table is still held: it waits for no dump
            out, err = proc.communicate(timeout=30)
            waited = False
        except subprocess.TimeoutExpired:
            waited = True
    if waited:
        out, err = proc.communicate(timeout=120)
    wait_for(lambda: quiet(db_conn), timeout=30, what="the sessions to end")
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert not dump_pids(pg_cluster.port)
    assert catalog.list_backups(settings) == [] and partials(settings) == []
    ok(run(blockable, "backup"))
    assert not waited


def test_backup_server_immediate_stop_while_pg_dump_waits(own_cluster):
    cluster, env = own_cluster
    ok(run(env, "migrate", f"--to={SAMPLE_HEAD}", "--no-backup"))
    settings = load_settings(ROOT, environ=env)
    with cluster.connect("app") as conn:
        conn.execute(f"CREATE TABLE {BLOCK} (x int)")
    with cluster.connect("app") as watch:
        with table_held(lambda: cluster.connect("app")):
            proc, agents = started(env, ("backup",), dump_waits(watch))
            cluster.stop("immediate")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err and "no backup was written" in err, err
    assert not any(alive(a) for a in agents) and not dump_pids(cluster.port)
    assert catalog.list_backups(settings) == [] and partials(settings) == []
    cluster.start()
    ok(run(env, "backup"))
    assert len(catalog.list_backups(settings)) == 1


# --- restore's swap: waits on the pg_database rows the test holds --------------------------
def restoring_name(conn, database: str) -> str | None:
    row = conn.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
        [f"{database}_dbops_restoring_"],
    ).fetchone()
    return row[0] if row else None


def allows(conn, name: str) -> bool | None:
    row = conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", [name])
    found = row.fetchone()
    return None if found is None else found[0]


@contextlib.contextmanager
def row_held(connect, name: str):
    """The test holds ``name``'s pg_database row FOR UPDATE: ALTER DATABASE on it waits."""
    with connect() as conn:
        conn.autocommit = False
        conn.execute("SELECT 1 FROM pg_database WHERE datname = %s FOR UPDATE", [name])
        yield conn
        end(conn)


def swap_waits(conn):
    return lambda: waiting(conn, "dbops:restore swap%", "transactionid")


def start_restore_in_swap(env, connect, database, maint):
    """``invoke restore`` cut in its swap after the live database was closed and renamed away
    (the restored copy's rename waits on its row): (process, agents, restored copy's name,
    the held row's context)."""
    live_row = row_held(connect, database)
    live_row.__enter__()  # the swap's first step (closing the live database) waits here
    try:
        proc, agents = started(env, ("restore", "latest", "--yes"), swap_waits(maint))
        name = restoring_name(maint, database)
        new_row = row_held(connect, name)
        new_row.__enter__()
    finally:
        live_row.__exit__(None, None, None)
    wait_for(lambda: allows(maint, database) is None, what="the live database to be renamed")
    wait_for(swap_waits(maint), what="the restored copy's rename to wait")
    return proc, agents, name, new_row


def assert_swap_repaired_by_restore_undo(env, settings, maint, database, name):
    """What the cut swap left is named by doctor with restore-undo, which repairs it; the
    restored copy left behind is swept by the next restore."""
    check = doctor_check(env, "connectivity")
    if allows(maint, database) is not True:
        assert check["status"] == "fail" and check["next"] == "invoke restore-undo", check
        ok(run(env, "restore-undo", "--yes"))
    assert allows(maint, database) is True
    assert doctor_check(env, "connectivity")["status"] != "fail"
    left = allows(maint, name) is not None
    done = ok(run(env, "restore", "latest", "--yes"))
    if left:
        assert f"dropped {name}, left behind by an interrupted restore" in done.stderr
    assert restoring_name(maint, database) is None
    assert records(settings)[-1]["result"] == "ok"


@pytest.fixture
def backed_up(ops_env, alembic_at, invoke):
    alembic_at(SAMPLE_HEAD)
    ok(invoke("backup", "--no-retention"))
    return ops_env


def test_restore_kill_9_host_mid_swap_is_named_and_repaired(
    backed_up, settings, pg_cluster, database
):
    with pg_cluster.connect() as maint:
        proc, agents, name, new_row = start_restore_in_swap(
            backed_up, pg_cluster.connect, database, maint
        )
        try:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
            wait_for(lambda: not any(alive(a) for a in agents), what="the agent to exit")
            wait_for(lambda: quiet(maint), what="its sessions and lock to end")
        finally:
            new_row.__exit__(None, None, None)
        assert [r["result"] for r in records(settings) if r["action"] == "restore"][-1:] == [
            "swapping"
        ]
        assert_swap_repaired_by_restore_undo(backed_up, settings, maint, database, name)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_restore_signal_to_the_host_mid_swap_exits_130_naming_the_state_and_the_repair(
    sig, backed_up, settings, pg_cluster, database
):
    with pg_cluster.connect() as maint:
        proc, agents, name, new_row = start_restore_in_swap(
            backed_up, pg_cluster.connect, database, maint
        )
        try:
            os.kill(proc.pid, sig)
            out, err = proc.communicate(timeout=120)
            assert not any(alive(a) for a in agents)
            wait_for(lambda: quiet(maint), what="its sessions and lock to end")
        finally:
            new_row.__exit__(None, None, None)
        assert proc.returncode == 130, out + err
        assert "restore interrupted" in err and "Traceback" not in err, err
        last = records(settings)[-1]
        assert last["result"] == "interrupted"
        if allows(maint, database) is not True:  # the state printed is the catalog's
            assert "invoke restore-undo" in err and "interrupted restore swap" in last["state"]
        assert_swap_repaired_by_restore_undo(backed_up, settings, maint, database, name)


def test_restore_kill_9_agent_mid_swap_ends_the_swap_with_it(
    backed_up, settings, pg_cluster, database
):
    with pg_cluster.connect() as maint:
        proc, agents, name, new_row = start_restore_in_swap(
            backed_up, pg_cluster.connect, database, maint
        )
        try:
            for pid in agents:
                os.kill(pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=120)
            # the swap's statement ends with its agent, while the row is still held: a swap
            # going on after the host printed the state would make that state a lie
            try:
                wait_for(lambda: quiet(maint), timeout=20, what="the swap's session to end")
                outlived = False
            except AssertionError:
                outlived = True
        finally:
            new_row.__exit__(None, None, None)
        assert proc.returncode == 1, out + err
        assert "Traceback" not in err and "the dbops agent exited" in err, err
        assert "invoke restore-undo" in err, err
        wait_for(lambda: quiet(maint), what="the swap's session to end")
        assert_swap_repaired_by_restore_undo(backed_up, settings, maint, database, name)
        assert not outlived  # it renamed the restored copy in after the state was printed


def test_restore_server_immediate_stop_mid_swap_is_named_and_repaired(own_cluster):
    cluster, env = own_cluster
    ok(run(env, "migrate", f"--to={SAMPLE_HEAD}", "--no-backup"))
    ok(run(env, "backup", "--no-retention"))
    settings = load_settings(ROOT, environ=env)
    with cluster.connect() as maint:
        proc, agents, name, new_row = start_restore_in_swap(env, cluster.connect, "app", maint)
        cluster.stop("immediate")
        new_row.__exit__(None, None, None)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, out + err
    assert not any(alive(a) for a in agents)
    # the server could not be read: the state printed says so rather than guess
    assert "database state: unknown: the server could not be read" in err, err
    assert "next: invoke doctor" in err
    last = records(settings)[-1]
    assert last["action"] == "restore" and last["result"] == "failed", last
    cluster.start()
    with cluster.connect() as maint:
        assert allows(maint, "app") is None  # renamed away: the catalog change had committed
        assert_swap_repaired_by_restore_undo(env, settings, maint, "app", name)
    assert "Traceback" not in err, err


@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, signal.SIGKILL],
    ids=["sigterm", "kill9"],
)
def test_restore_signal_to_the_host_during_its_pre_restore_backup(
    sig, blockable, settings, pg_cluster, database, db_conn
):
    ok(run(blockable, "backup", "--no-retention"))
    before = version(db_conn)
    with table_held(lambda: pg_cluster.connect(database)) as holder:
        proc, agents = started(
            blockable, ("restore", "latest", "--yes", "--pre-backup"), dump_waits(db_conn)
        )
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
        wait_for(lambda: not any(alive(a) for a in agents), what="the agents to exit")
        if sig == signal.SIGTERM:  # the host stopped its pg_dump (killed, it cannot: see above)
            assert not dump_pids(pg_cluster.port)
            wait_for(lambda: quiet(db_conn, holder), timeout=30, what="the sessions to end")
        else:
            wait_for(lambda: agent_gone(db_conn), what="the dbops lock to end")
    wait_for(lambda: quiet(db_conn), what="every session of the run to end")
    assert version(db_conn) == before and allows(db_conn, database) is True  # live untouched
    assert partials(settings) == [] or sig == signal.SIGKILL
    left = restoring_name(db_conn, database)
    if sig == signal.SIGTERM:
        assert proc.returncode == 130, out + err
        assert "restore interrupted" in err and "Traceback" not in err, err
        assert left is None or f"{left} is left (the next restore drops it)" in err, err
        last = records(settings)[-1]
        assert last["action"] == "restore" and last["result"] == "interrupted"
    done = ok(run(blockable, "restore", "latest", "--yes"))  # sweeps what the run left
    if left:
        assert f"dropped {left}, left behind by an interrupted restore" in done.stderr
    with pg_cluster.connect() as maint:  # the swap ended db_conn's session
        assert restoring_name(maint, database) is None
    assert_partials_named_and_swept(blockable, settings)
    if sig == signal.SIGTERM:  # the command printed is the one that clears what it named
        assert left is None or "next: invoke restore " in err, err
