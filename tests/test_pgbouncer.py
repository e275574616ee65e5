"""PgBouncer between dbops and PostgreSQL (issue 9), with a real pgbouncer (Debian package
`pgbouncer`; scripts/test installs it when root). In transaction or statement pooling a session
advisory lock does not hold: dbops refuses, naming DBOPS_DIRECT_HOST, or with it set takes the
lock and migrates on the server itself."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from dbops import localpg
from dbops.agent import lock
from tests.conftest import ROOT
from tests.fixtures.processes import start_invoke
from tests.fixtures.projects import REVS, catalog, make_project, version_rows
from tests.fixtures.records import audit_records

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class Bouncer:
    def __init__(self, cluster: localpg.Cluster, mode: str, stats: bool = True):
        self.mode, self.port = mode, localpg.free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"dbops-pgbouncer-{mode}-"))
        (self.dir / "users.txt").write_text(f'"{cluster.user}" "{cluster.password}"\n')
        (self.dir / "pgbouncer.ini").write_text(f"""[databases]
* = host=127.0.0.1 port={cluster.port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {self.dir}/users.txt
pool_mode = {mode}
default_pool_size = 20
max_client_conn = 200
ignore_startup_parameters = extra_float_digits,options
logfile = {self.dir}/pgbouncer.log
pidfile = {self.dir}/pgbouncer.pid
{f"stats_users = {cluster.user}" if stats else ""}
""")
        runas = localpg._runas_user()  # pgbouncer, like PostgreSQL, will not run as root
        argv = [PGBOUNCER, "-d", str(self.dir / "pgbouncer.ini")]
        if runas:
            pw = pwd.getpwnam(runas)
            for p in (self.dir, *self.dir.iterdir()):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            argv = ["runuser", "-u", runas, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen: {(self.dir / 'pgbouncer.log').read_text()}")

    def stop(self) -> None:
        try:
            os.kill(int((self.dir / "pgbouncer.pid").read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def bouncers(pg_cluster):
    if not os.path.exists(PGBOUNCER):
        pytest.skip(
            "pgbouncer is not installed (apt-get install pgbouncer; scripts/test installs "
            "it when root)"
        )
    made: dict[tuple[str, bool], Bouncer] = {}

    def get(mode: str, stats: bool = True) -> Bouncer:
        """A pgbouncer in ``mode``; ``stats``: the test user may read its admin console."""
        if (mode, stats) not in made:
            made[mode, stats] = Bouncer(pg_cluster, mode, stats)
        return made[mode, stats]

    yield get
    for b in made.values():
        b.stop()


def stranded(pg_cluster) -> list:
    """Advisory locks and idle-in-transaction sessions left on the server."""
    with pg_cluster.connect() as conn:
        return conn.execute(
            "SELECT 'lock', pid::text FROM pg_locks WHERE locktype = 'advisory' "
            "UNION ALL SELECT state, application_name FROM pg_stat_activity "
            "WHERE state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()"
        ).fetchall()


def agent_env(monkeypatch, cluster, database, port):
    for k, v in {**cluster.env(database), "POSTGRES_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)


def via(cluster, port: int) -> localpg.Cluster:
    return localpg.Cluster(cluster.root, port, cluster.user, cluster.password)


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_the_probe_sees_a_pooler_and_never_a_direct_server(
    bouncers, pg_cluster, database, monkeypatch, mode
):
    agent_env(monkeypatch, pg_cluster, database, pg_cluster.port)
    with pg_cluster.connect() as conn:
        assert lock._server_sees_this_socket(conn)
        assert lock._two_clients_one_backend(conn, "postgres") is None
        assert lock.pgbouncer_mode("postgres") is None
        assert lock.pooled(conn, "postgres") is None
    for stats, expected in ((True, None), (False, "unknown")):
        b = bouncers("session", stats)  # session pooling keeps the session, but only its
        agent_env(monkeypatch, pg_cluster, database, b.port)  # admin console can say so
        with via(pg_cluster, b.port).connect() as conn:
            assert not lock._server_sees_this_socket(conn)
            assert lock._two_clients_one_backend(conn, "postgres") is None
            assert lock.pooled(conn, "postgres") == expected
    for stats in (True, False):
        b = bouncers(mode, stats)
        agent_env(monkeypatch, pg_cluster, database, b.port)
        with via(pg_cluster, b.port).connect() as conn:
            for _ in range(3):  # the proof alone, without the admin console
                assert lock._two_clients_one_backend(conn, "postgres") == mode
            assert lock.pooled(conn, "postgres") == mode
        assert lock.pgbouncer_mode("postgres") == (mode if stats else "unknown")
    assert stranded(pg_cluster) == []


def test_through_a_transaction_pooler_dbops_refuses_in_one_line_naming_the_setting(
    bouncers, invoke, pg_cluster, db_conn
):
    b = bouncers("transaction")
    before = catalog(db_conn)
    for task in (("migrate",), ("backup",)):
        done = invoke(*task, env={"POSTGRES_PORT": str(b.port)})
        assert done.returncode == 1, done.stdout + done.stderr
        [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
        assert f"127.0.0.1:{b.port} is a connection pooler in transaction pooling mode" in line
        assert "set DBOPS_DIRECT_HOST (and DBOPS_DIRECT_PORT) to the PostgreSQL server" in line
    assert catalog(db_conn) == before and version_rows(db_conn) in (None, [])
    assert stranded(pg_cluster) == []


def test_direct_settings_that_lead_to_a_pooler_are_refused(bouncers, invoke):
    b = bouncers("transaction")
    done = invoke(
        "migrate", env={"DBOPS_DIRECT_HOST": "127.0.0.1", "DBOPS_DIRECT_PORT": str(b.port)}
    )
    assert done.returncode == 1
    assert "DBOPS_DIRECT_HOST/DBOPS_DIRECT_PORT (127.0.0.1:" in done.stderr
    assert "not to the PostgreSQL server" in done.stderr


def test_six_concurrent_migrates_through_pgbouncer_one_applies_nothing_is_stranded(
    bouncers, pg_cluster, ops_env, db_conn, tmp_path
):
    """POSTGRES_PORT is the pooler (as the application uses it); DBOPS_DIRECT_* the server."""
    b = bouncers("transaction")
    ini = make_project(tmp_path, "concurrent")
    gate = tmp_path / "gate"
    env = {
        **ops_env,
        "DBOPS_ALEMBIC_INI": str(ini),
        "DBOPS_FIXTURE_GATE": str(gate),
        "POSTGRES_PORT": str(b.port),
        "DBOPS_DIRECT_HOST": "127.0.0.1",
        "DBOPS_DIRECT_PORT": str(pg_cluster.port),
    }
    procs = [start_invoke(env, "migrate") for _ in range(6)]
    deadline = time.monotonic() + 120  # the winner waits at the gate, holding the lock
    while sum(p.poll() is not None for p in procs) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    gate.touch()
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    winners = [r for r in results if r[0] == 0]
    assert len(winners) == 1, [r[2][-600:] for r in results]
    assert "applied 7 revision(s)" in winners[0][1]
    for code, _out, err in results:
        if code != 0:
            assert "busy: another dbops operation holds its lock: pid" in err, err[-800:]
    assert version_rows(db_conn) == [REVS["concurrent"].rev]
    assert [r["result"] for r in audit_records(ops_env, "migrate")] == ["ok"]
    assert stranded(pg_cluster) == []
    # the application's path still works
    with via(pg_cluster, b.port).connect(ops_env["POSTGRES_DB"]) as conn:
        assert (
            conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
            == REVS["concurrent"].rev
        )


def test_direct_settings_reach_the_agent_and_the_pg_tools_on_both_targets(tmp_path):
    """Command construction only: where DBOPS_DIRECT_* take every dbops connection."""
    from dbops.config import load_settings
    from dbops.seam import ComposeTarget, LocalTarget

    base = {
        "DBOPS_ENV_FILE": str(tmp_path / "none"),
        "POSTGRES_USER": "u",
        "POSTGRES_DB": "d",
        "POSTGRES_HOST": "pgbouncer",
        "POSTGRES_PORT": "6432",
        "DBOPS_ALEMBIC_INI": str(ROOT / "backend" / "alembic.ini"),
    }
    plain = load_settings(ROOT, environ=base)
    direct = load_settings(
        ROOT, environ={**base, "DBOPS_DIRECT_HOST": "db", "DBOPS_DIRECT_PORT": "5433"}
    )
    assert LocalTarget(plain).pg(["psql"]).env["PGHOST"] == "pgbouncer"
    local = LocalTarget(direct)
    for launch in (local.pg(["psql"]), local.agent()):
        assert (launch.env["PGHOST"], launch.env["PGPORT"]) == ("db", "5433")
        assert (launch.env["POSTGRES_HOST"], launch.env["POSTGRES_PORT"]) == ("db", "5433")
        assert "@db:5433/d" in launch.env["DATABASE_URL"]
    argv = ComposeTarget(direct).agent().argv
    assert "-e" in argv and "POSTGRES_HOST=db" in argv and "POSTGRES_PORT=5433" in argv
    assert argv.index("POSTGRES_HOST=db") < argv.index("backend")
    assert "POSTGRES_HOST=db" not in ComposeTarget(plain).agent().argv


@pytest.mark.parametrize("stats", [True, False], ids=["mode readable", "mode unreadable"])
def test_six_concurrent_migrates_through_pgbouncer_without_direct_settings_all_refuse(
    bouncers, pg_cluster, ops_env, db_conn, stats
):
    """Six at once: the pool is busy, so the two-clients proof may miss; the admin console
    (or its refusal) still tells."""
    b = bouncers("transaction", stats)
    env = {**ops_env, "POSTGRES_PORT": str(b.port)}
    procs = [start_invoke(env, "migrate") for _ in range(6)]
    results = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    for code, _out, err in results:
        assert code == 1 and "set DBOPS_DIRECT_HOST" in err, err[-800:]
    assert version_rows(db_conn) in (None, [])
    assert not [r for r in audit_records(ops_env, "migrate") if r.get("result") == "ok"]
    assert stranded(pg_cluster) == []
