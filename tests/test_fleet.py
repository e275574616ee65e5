"""invoke fleet on real PostgreSQL: databases across two throwaway clusters (listed and
discovered), one with planted drift and one unreachable. Canary first, waves in order,
--max-failures stops new work and leaves the rest untouched, a killed run resumes applying each
remaining database once (the audit records prove it), --parallel bounds how many run at once
(measured on the servers: advisory locks held at the same moment).

FLEET_TEST_SIZE sets how many databases (default 8; the issue's full run: FLEET_TEST_SIZE=50)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from psycopg import sql

from dbops import audit, localpg
from tests.conftest import ALEMBIC_INI, ROOT, offline_settings
from tests.fixtures.processes import Sampler
from tests.fixtures.projects import SAMPLE_HEAD, version_rows

SIZE = int(os.environ.get("FLEET_TEST_SIZE", "8"))
ALL_REVS = 6  # the sample history


@pytest.fixture(scope="module")
def second_cluster():
    cluster = localpg.new_cluster()
    yield cluster
    cluster.destroy()


class Fleet:
    """Databases on two clusters, a fleet.toml describing them, and the runner's environment."""

    def __init__(self, tmp_path: Path, a: localpg.Cluster, b: localpg.Cluster):
        self.dir, self.a, self.b = tmp_path, a, b
        self.prefix = f"f{uuid.uuid4().hex[:6]}"
        self.created: list[tuple[localpg.Cluster, str]] = []
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("POSTGRES_", "DBOPS_", "PG", "DATABASE_URL"))
        }
        self.env.update(
            {
                "DBOPS_TARGET": "local",
                "DBOPS_ENV_FILE": str(tmp_path / "no.env"),
                "DBOPS_ALEMBIC_INI": str(ALEMBIC_INI),
                "DBOPS_PG_BINDIR": a.bindir,
                "DBOPS_BACKUP_DIR": str(tmp_path / "backups"),
                "DBOPS_FLEET_DIR": str(tmp_path / "fleet"),
                "DBOPS_FLEET_FILE": str(tmp_path / "fleet.toml"),
                "FLEET_A_PASSWORD": a.password,
                "FLEET_B_PASSWORD": b.password,
            }
        )

    def create(self, cluster: localpg.Cluster, name: str) -> str:
        cluster.create_database(name)
        self.created.append((cluster, name))
        return name

    def write(self, text: str) -> None:
        (self.dir / "fleet.toml").write_text(text)

    def server(self, cluster: localpg.Cluster) -> str:
        var = "FLEET_A_PASSWORD" if cluster is self.a else "FLEET_B_PASSWORD"
        return (
            f'host = "127.0.0.1"\nport = {cluster.port}\nuser = "{cluster.user}"\n'
            f'password_env = "{var}"\n'
        )

    def invoke(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "invoke", "fleet", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "invoke", "fleet", *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def audit(self, name: str) -> list[dict]:
        path = self.dir / "backups" / name / "audit.jsonl"
        return [
            r
            for r in audit.read(None, path)
            if r["action"] == "migrate" and r.get("result") != "applying"
        ]

    def state(self) -> dict:
        return json.loads((self.dir / "fleet" / "migrate.state.json").read_text())["databases"]

    def rows(self, cluster: localpg.Cluster, db: str) -> list[str]:
        with cluster.connect(db) as conn:
            return version_rows(conn)

    def drop(self) -> None:
        for cluster, name in self.created:
            with cluster.connect() as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@pytest.fixture
def fleet(tmp_path, pg_cluster, second_cluster):
    f = Fleet(tmp_path, pg_cluster, second_cluster)
    yield f
    f.drop()


def interval(rec: dict) -> tuple[float, float]:
    from datetime import datetime

    end = datetime.fromisoformat(rec["ts"].replace("Z", "+00:00")).timestamp()
    return end - rec["duration_s"], end


class AdvisoryLockWatch(Sampler):
    """Samples pg_locks on both servers: the most dbops advisory locks held at one moment."""

    every = 0.02

    def __init__(self, *clusters: localpg.Cluster):
        super().__init__()
        self.conns = [c.connect() for c in clusters]
        self.most = 0
        self.most_per_server = [0] * len(self.conns)

    def sample(self) -> None:
        counts = [
            c.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            ).fetchone()[0]
            for c in self.conns
        ]
        self.most = max(self.most, sum(counts))
        self.most_per_server = [
            max(a, b) for a, b in zip(self.most_per_server, counts, strict=True)
        ]

    def __exit__(self, *exc):
        super().__exit__(*exc)
        for c in self.conns:
            c.close()


def test_canary_then_waves_max_failures_stops_new_work_then_resume(fleet):
    f, p = fleet, fleet.prefix
    n_a = max(2, SIZE // 2 - 1)
    n_b = max(3, SIZE - n_a - 1)
    wave1 = [f.create(f.a, f"{p}_a{i:02d}") for i in range(n_a)]
    wave2 = [f.create(f.b, f"{p}_t{i:02d}") for i in range(n_b)]
    drift = wave2[1]
    with f.b.connect(drift) as conn:  # planted drift: a table the history creates later
        conn.execute("CREATE TABLE tag_stats (id int)")
    lines = [f'[[database]]\nname = "{db}"\ndb = "{db}"\nwave = 1\n{f.server(f.a)}' for db in wave1]
    lines.append(
        f'[[discover]]\nname = "b"\nwhere = "datname LIKE \'{p}\\\\_t%\'"\n'
        f"wave = 2\n{f.server(f.b)}"
    )
    lines.append(
        f'[[database]]\nname = "gone"\ndb = "app"\nwave = 3\nhost = "127.0.0.1"\n'
        f'port = {localpg.free_port()}\nuser = "x"\n'
    )
    f.write("\n".join(lines))

    done = f.invoke("migrate", "--canary", "1", "--parallel", "1", "--max-failures", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    state = f.state()
    # canary first, then wave 1, then wave 2 in order until the drift failed
    assert state[wave1[0]]["status"] == "ok"
    assert all(state[db]["status"] == "ok" for db in wave1)
    assert state[f"b/{wave2[0]}"]["status"] == "ok"
    assert state[f"b/{drift}"]["status"] == "failed"
    canary_end = interval(f.audit(wave1[0])[0])[1]
    assert all(interval(f.audit(db)[0])[0] >= canary_end for db in wave1[1:])
    w1_end = max(interval(f.audit(db)[0])[1] for db in wave1)
    assert interval(f.audit(f"b/{wave2[0]}")[0])[0] >= w1_end
    # --max-failures 1: nothing after the drift was started, and those databases are untouched
    untouched = wave2[2:]
    for db in untouched:
        assert state[f"b/{db}"]["status"] == "pending"
        assert f.rows(f.b, db) == [] and f.audit(f"b/{db}") == []
        assert not (f.dir / "backups" / "b" / db).exists()
    assert state["gone"]["status"] == "pending"
    assert "stopping: 1 failure(s) reached --max-failures 1" in out
    assert out.count("stopping:") == 1  # said once, never again with a stale count
    # the failure: what happened, the database state, the exact commands; no password anywhere
    assert f"b/{drift} (local:127.0.0.1:{f.b.port}/{drift}): failed" in out, out
    assert f"rerun: invoke fleet migrate --only b/{drift}" in out
    assert f"POSTGRES_DB={drift} " in out and 'POSTGRES_PASSWORD="$FLEET_B_PASSWORD"' in out
    assert "then the rest: invoke fleet migrate --resume" in out
    for secret in (f.a.password, f.b.password):
        assert secret not in out + done.stderr
        assert secret not in (f.dir / "fleet" / "migrate.state.json").read_text()
    [failed] = f.audit(f"b/{drift}")
    assert failed["result"] == "failed" and failed["backup"]  # its own verified backup first
    table = out[out.index("database ") :]
    assert f"b/{drift}" in table and "not started" in table and "gone" in table

    # the printed rerun of the failed one keeps the run's state: --resume after it still knows
    rerun = f.invoke("migrate", "--only", f"b/{drift}")
    assert rerun.returncode == 1 and f.state()[wave1[0]]["status"] == "ok"
    assert len(f.audit(f"b/{drift}")) == 2 and f.rows(f.b, untouched[0]) == []

    # --resume without a failure limit: re-applies nothing completed, runs the rest; the
    # unreachable one fails on its own, the drift fails again; --parallel 3 measured
    with AdvisoryLockWatch(f.a, f.b) as watch:
        done = f.invoke("migrate", "--resume", "--max-failures", "0", "--parallel", "3", "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    status = {r["name"]: r["status"] for r in report["databases"]}
    assert all(status[db] == "done earlier" for db in wave1)
    assert status[f"b/{wave2[0]}"] == "done earlier"
    assert status[f"b/{drift}"] == "failed" and status["gone"] == "failed"
    gone = next(r for r in report["databases"] if r["name"] == "gone")
    assert "connect" in gone["error"].lower() or "refused" in gone["error"].lower(), gone
    for db in untouched:
        assert status[f"b/{db}"] == "ok" and f.rows(f.b, db) == [SAMPLE_HEAD]
    ok_names = [*wave1, *[f"b/{db}" for db in wave2 if db != drift]]
    for name in ok_names:  # each applied once, in one ok record
        records = [r for r in f.audit(name) if r["result"] == "ok"]
        assert len(records) == 1 and len(records[0]["revision_hashes_applied"]) == ALL_REVS, name
    assert 2 <= watch.most <= 3, watch.most
    assert report["max_running"] <= 3


def test_killed_run_resumes_applying_each_remaining_database_once(fleet):
    f, p = fleet, fleet.prefix
    dbs = [f.create(f.a if i % 2 else f.b, f"{p}_k{i:02d}") for i in range(max(5, SIZE - 3))]
    f.write(
        "\n".join(
            f'[[database]]\nname = "{db}"\ndb = "{db}"\n{f.server(f.a if i % 2 else f.b)}'
            for i, db in enumerate(dbs)
        )
    )
    proc = f.start("migrate", "--parallel", "2")
    state_file = f.dir / "fleet" / "migrate.state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill once some are done and others are running
        st = json.loads(state_file.read_text())["databases"] if state_file.exists() else {}
        if sum(1 for d in st.values() if d["status"] == "ok") >= 2 and any(
            d["status"] == "running" for d in st.values()
        ):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner's group: its children have their own
    proc.wait()
    before = f.state()
    completed = [n for n, d in before.items() if d["status"] == "ok"]
    assert 2 <= len(completed) < len(dbs)
    orphans = [d["pid"] for d in before.values() if d["status"] == "running" and d.get("pid")]
    assert orphans

    # at once: the children got SIGINT (their death signal); --resume waits for them, naming
    # each, instead of calling their databases busy
    done = f.invoke("migrate", "--resume", "--parallel", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    for pid in orphans:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "busy" not in done.stdout and "locked" not in done.stdout
    after = f.state()
    assert all(d["status"] == "ok" for d in after.values())
    for i, db in enumerate(dbs):
        assert f.rows(f.a if i % 2 else f.b, db) == [SAMPLE_HEAD]
        ok = [r for r in f.audit(db) if r["result"] == "ok"]
        assert len(ok) == 1, (db, f.audit(db))
        if db in completed:  # not touched again by the resumed run
            assert after[db]["attempts"] == 1 and f"{db} " in done.stdout
        # every revision applied exactly once across the killed and the resumed run
        applied = [rev for r in f.audit(db) for rev in r.get("revision_hashes_applied", {})]
        assert len(applied) <= ALL_REVS and len(set(applied)) == len(applied), db
    assert "done earlier" in done.stdout


def test_bad_fleet_files_are_refused_before_anything_runs(fleet):
    f = fleet
    db = f.create(f.a, f"{f.prefix}_x")
    cases = {
        'password = "hunter2"\n': "passwords are never written in the fleet file",
        'password_env = "NOT_SET_ANYWHERE"\n': "NOT_SET_ANYWHERE is not set",
        'port = "many"\n': "POSTGRES_PORT='many' is not a whole number",
        'colour = "blue"\n': "unknown key(s) colour",
        'settings = { POSTGRES_PASSWORD = "x" }\n': "cannot be set in the fleet file",
    }
    for extra, message in cases.items():
        f.write(f'[[database]]\ndb = "{db}"\nhost = "127.0.0.1"\nuser = "{f.a.user}"\n{extra}')
        done = f.invoke("migrate")
        assert done.returncode == 1 and message in done.stderr, (extra, done.stderr)
        assert done.stderr.lstrip().startswith("error:")
        assert f.rows(f.a, db) == [] and not (f.dir / "fleet" / "migrate.state.json").exists()
    f.write(f'[defaults]\nuser = "u"\n[[database]]\ndb = "{db}"\n[[database]]\ndb = "{db}"\n')
    assert "repeated" in f.invoke("current").stderr
    f.write(f'[[database]]\ndb = "{db}"\n')  # no user here, none in the environment
    assert f"fleet member {db}: POSTGRES_USER is not set" in f.invoke("current").stderr
    f.write(f'[[database]]\ndb = "{db}"\nuser = "u"\n')
    done = f.invoke("migrate", "--resume")
    assert done.returncode == 1 and "nothing to resume" in done.stderr
    (f.dir / "fleet").mkdir(exist_ok=True)
    with open(f.dir / "fleet" / "migrate.lock", "w") as held:  # as a running runner holds it
        held.write("pid 4242, started earlier\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        done = f.invoke("migrate")
    assert done.returncode == 1 and "another invoke fleet migrate is running" in done.stderr
    assert "pid 4242" in done.stderr and f.rows(f.a, db) == []
    done = f.invoke("explode")
    assert done.returncode == 1 and "not a fleet verb" in done.stderr
    done = f.invoke("migrate", "--from", "fresh")
    assert done.returncode == 1 and "--from applies to invoke fleet rehearse only" in done.stderr
    done = f.invoke("rehearse", "--from", "backups/x.dump")
    assert done.returncode == 1 and "from latest or fresh" in done.stderr


def test_current_backup_and_doctor_run_per_database(fleet):
    f = fleet
    one, two = f.create(f.a, f"{f.prefix}_c1"), f.create(f.b, f"{f.prefix}_c2")
    f.write(
        f'[[database]]\ndb = "{one}"\n{f.server(f.a)}\n[[database]]\ndb = "{two}"\n{f.server(f.b)}'
    )
    done = f.invoke("current", "--json", "--parallel", "2")
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)["databases"]}
    assert rows[one]["before"] == rows[two]["after"] == "base"
    f.env["DBOPS_METRICS_FILE"] = str(f.dir / "metrics" / "dbops.prom")
    done = f.invoke("backup")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in (one, two):
        [dump] = (f.dir / "backups" / name).glob("*.dump")
        assert str(dump) in done.stdout  # the table names each database's own backup
        # one metrics file per member: the fleet's view is complete after the run
        text = (f.dir / "metrics" / f"dbops.{name}.prom").read_text()
        assert f'dbops_job_runs_total{{database="{name}",job="backup"}} 1.0' in text
    done = f.invoke("doctor", "--json")  # at base with pending revisions: a warning, not a failure
    report = json.loads(done.stdout)
    assert [r["status"] for r in report["databases"]] == ["ok", "ok"], report
    for r in report["databases"]:  # each database's own doctor, ending with its next command
        assert "next: invoke migrate" in Path(r["log"]).read_text()
        assert r["warnings"], r  # its warnings travel with it
    done = f.invoke("doctor")
    assert "ok, " in done.stdout and "warning(s)" in done.stdout
    assert f"warning: {one}: " in done.stdout, done.stdout


def test_the_example_fleet_file_is_valid(monkeypatch, tmp_path):
    from dbops.fleet import plan

    monkeypatch.setenv("FLEET_PG_PASSWORD", "x")
    monkeypatch.setenv("US_EAST_PG_PASSWORD", "us-east-secret-9")
    s = offline_settings(tmp_path)
    members = plan.load(s, ROOT / "fleet.example.toml", discover=False)
    assert [(m.name, m.wave) for m in members] == [("staging", 0), ("eu-west", 1), ("us-east", 2)]
    staging = members[0]
    assert staging.env["DBOPS_COMPOSE"] == "docker --context staging compose"
    assert "us-east-secret-9" not in str(
        staging.command("migrate", [])
    ) and "$US_EAST_PG_PASSWORD" in members[2].command("migrate", [])


def test_sigterm_stops_new_starts_records_the_running_ones_and_resume_finishes(fleet):
    f = fleet
    dbs = [f.create(f.a, f"{f.prefix}_s{i}") for i in range(3)]
    f.write("\n".join(f'[[database]]\ndb = "{db}"\n{f.server(f.a)}' for db in dbs))
    proc = f.start("migrate", "--parallel", "2")
    state_file = f.dir / "fleet" / "migrate.state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = json.loads(state_file.read_text())["databases"] if state_file.exists() else {}
        if sum(1 for d in st.values() if d["status"] == "running") == 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # the runner only, as a CI cancel or a pod eviction would
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    state = f.state()
    statuses = sorted(d["status"] for d in state.values())
    assert "pending" in statuses and "running" not in statuses, statuses
    assert "then the rest: invoke fleet migrate --resume" in out.decode()
    done = f.invoke("migrate", "--resume", "--parallel", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    for db in dbs:
        assert f.rows(f.a, db) == [SAMPLE_HEAD]
        assert len([r for r in f.audit(db) if r["result"] == "ok"]) == 1


def test_per_server_bounds_each_server_apart_from_parallel(fleet):
    f = fleet
    dbs = [
        (c, f.create(c, f"{f.prefix}_p{i}{x}"))
        for i in range(2)
        for c, x in ((f.a, "a"), (f.b, "b"))
    ]
    f.write("\n".join(f'[[database]]\ndb = "{db}"\n{f.server(c)}' for c, db in dbs))
    with AdvisoryLockWatch(f.a, f.b) as watch:
        done = f.invoke("migrate", "--parallel", "4", "--per-server", "1", "--json")
    assert done.returncode == 0, done.stderr
    assert watch.most_per_server == [1, 1], watch.most_per_server  # measured on each server
    assert json.loads(done.stdout)["max_running"] == 2
