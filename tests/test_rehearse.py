"""invoke rehearse end to end on the sample project (real PostgreSQL): the data source and its
refusals, the copy restored through restore's machinery and dropped, the live database left
alone, the same end state as a real migrate, a killed rehearsal's copy swept, migrate's gate."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid

import psycopg
import pytest

from dbops.agent_client import Agent
from dbops.config import load_settings
from dbops.ops import rehearse as rehearse_op
from tests.conftest import ROOT
from tests.fixtures.projects import SAMPLE_HEAD, make_project

INITIAL = "d90082bb79a0"


@pytest.fixture
def env(ops_env, tmp_path):
    ops_env["DBOPS_CACHE_DIR"] = str(tmp_path / "cache")
    return ops_env


@pytest.fixture
def at_initial(invoke, env, db_conn):
    r = invoke("migrate", f"--to={INITIAL}", "--no-backup")
    assert r.returncode == 0, r.stderr
    db_conn.execute(
        "INSERT INTO users (username, email) SELECT 'u' || g, 'u' || g || '@x.org' "
        "FROM generate_series(1, 500) g"
    )
    return db_conn


def conninfo(env) -> dict:
    return {
        "host": env["POSTGRES_HOST"],
        "port": env["POSTGRES_PORT"],
        "user": env["POSTGRES_USER"],
        "password": env["POSTGRES_PASSWORD"],
        "dbname": "postgres",
    }


def live_state(env) -> str:
    """The live schema's fingerprint (dbops/agent/fingerprint.py), read here."""
    from dbops.agent.fingerprint import collect, digest

    with psycopg.connect(**{**conninfo(env), "dbname": env["POSTGRES_DB"]}) as conn:
        return digest(collect(conn))


def counts(conn) -> dict:
    rows = conn.execute("SELECT relname, n_live_tup FROM pg_stat_user_tables").fetchall()
    out = {}
    for name, _ in rows:
        out[name] = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
    return out


def copies(conn) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'dbops\\_scratch\\_rehearse\\_%'"
        ).fetchall()
    ]


def test_rehearse_sample_history_matches_migrate_and_leaves_live_alone(invoke, env, at_initial):
    assert invoke("backup").returncode == 0
    before_fp, before_rows = live_state(env), counts(at_initial)
    database = env["POSTGRES_DB"]
    seen: list = []
    done = threading.Event()

    # any client's lock on the live database but a reader's, while it rehearses
    def watch_live_locks():
        with psycopg.connect(**conninfo(env), autocommit=True) as conn:
            while not done.is_set():
                seen.extend(
                    conn.execute(
                        "SELECT l.mode, l.locktype, a.application_name FROM pg_locks l "
                        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.database = "
                        "(SELECT oid FROM pg_database WHERE datname = %s) "
                        "AND l.pid <> pg_backend_pid() "
                        "AND l.mode NOT IN ('AccessShareLock') AND l.locktype = 'relation' "
                        # autovacuum may analyze the freshly loaded tables; it is not the rehearsal
                        "AND a.backend_type = 'client backend'",
                        [database],
                    ).fetchall()
                )
                time.sleep(0.01)

    watcher = threading.Thread(target=watch_live_locks)
    watcher.start()
    try:
        r = invoke("rehearse", "--json")
    finally:
        done.set()
        watcher.join()
    assert seen == []
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["from"] == [INITIAL] and report["target"] == SAMPLE_HEAD
    assert report["complete"] and len(report["revisions"]) == 5
    assert report["predicted_seconds"] > 0
    assert all("verdict" in rev and rev["heads"] for rev in report["revisions"])
    assert os.path.exists(report["stored"])
    # the live database: same schema, same rows, no copy left
    assert live_state(env) == before_fp and counts(at_initial) == before_rows
    assert copies(at_initial) == []
    # the copy ended where a real migrate ends
    r = invoke("migrate", "--no-backup")
    assert r.returncode == 0, r.stderr
    assert "rehearsal " in r.stdout and "no rehearsal" not in r.stdout  # the gate found it
    assert live_state(env) == report["fingerprint_after"]


def test_rehearse_refuses_without_a_backup_at_the_live_revision(invoke, env, at_initial, tmp_path):
    r = invoke("rehearse")
    assert r.returncode == 1 and "error:" in r.stderr and "no verified full backup" in r.stderr
    assert "invoke rehearse --from=fresh" in r.stderr
    assert invoke("backup").returncode == 0
    assert invoke("migrate", "--to=308ea353e93f", "--no-backup").returncode == 0
    r = invoke("rehearse")  # the newest backup is at the initial revision, live one above
    assert r.returncode == 1 and "is at" in r.stderr and "--from=fresh" in r.stderr, r.stderr
    old = next(p for p in (tmp_path / "backups").iterdir() if p.name.endswith(".dump"))
    r = invoke("rehearse", f"--from={old}")  # named: the same refusal, nothing created
    assert r.returncode == 1 and f"{old.name} is at {INITIAL}" in r.stderr, r.stderr
    assert copies(at_initial) == []
    r = invoke("rehearse", "--from=fresh")
    assert r.returncode == 0, r.stderr
    assert "predicted duration" in r.stdout
    assert copies(at_initial) == []


def test_killed_rehearsal_copy_is_listed_then_swept(invoke, env, at_initial):
    settings = load_settings(ROOT, environ=env)
    agent = Agent(settings).__enter__()
    name = agent.call("rehearse.scratch")["name"]
    assert rehearse_op.list_leftovers(settings) == []  # its rehearsal is alive: not a leftover
    os.kill(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait()
    assert [x["name"] for x in rehearse_op.list_leftovers(settings)] == [name]
    assert invoke("backup").returncode == 0
    r = invoke("rehearse")
    assert r.returncode == 0, r.stderr
    assert f"swept a killed rehearsal's copy: {name}" in r.stdout
    assert copies(at_initial) == [] and rehearse_op.list_leftovers(settings) == []


def test_gate_refuses_over_the_limits_in_production_unless_risk_is_accepted(
    invoke, env, db_conn, tmp_path
):
    ini = make_project(tmp_path, "flag")  # ALTER TABLE comments + CREATE INDEX on it
    env["DBOPS_ALEMBIC_INI"] = str(ini)
    assert invoke("migrate", "--to=" + SAMPLE_HEAD, "--no-backup").returncode == 0
    db_conn.execute("INSERT INTO users (username, email) VALUES ('u', 'u@x.org')")
    assert invoke("backup").returncode == 0
    strict = {
        "DBOPS_MAX_BLOCK_READS": "0",
        "DBOPS_MAX_BLOCK_WRITES": "0",
        "ENVIRONMENT": "production",
    }
    r = invoke("rehearse", env=strict)
    assert r.returncode == 0, r.stderr
    assert "over the limit" in r.stdout
    fp = live_state(env)
    r = invoke("migrate", "--no-backup", env=strict)
    assert r.returncode == 1 and "over the production limits" in r.stderr, r.stdout + r.stderr
    assert "--accept-risk" in r.stderr
    assert live_state(env) == fp  # refused before anything
    r = invoke("migrate", "--no-backup", "--accept-risk=index on 3 rows, quiet hour", env=strict)
    assert r.returncode == 0, r.stderr
    audit = [json.loads(x) for x in open(tmp_path / "backups" / "audit.jsonl")]
    accepted = [a for a in audit if a["action"] == "accept-risk"]
    assert (
        accepted and accepted[0]["reason"] == "index on 3 rows, quiet hour" and accepted[0]["over"]
    )
    # the same limits outside production: shown, not refused
    r = invoke("rehearse", env={**strict, "ENVIRONMENT": "development"})
    assert r.returncode == 0 and "nothing pending" in r.stdout


def test_room_refusal_names_the_numbers(env, at_initial):
    settings = load_settings(ROOT, environ=env)
    from dbops.seam import target_for

    lines = []
    free, how = rehearse_op.free_space(settings, target_for(settings))
    assert free and free > 0, how  # the local test server: df of its data directory works
    with pytest.raises(Exception) as err:
        rehearse_op.check_room(settings, target_for(settings), free * 10, lines.append)
    assert "not enough room on the server" in str(err.value) and "free" in str(err.value)
    assert copies(at_initial) == []


def test_keep_and_always(invoke, env, at_initial):
    assert invoke("backup").returncode == 0
    r = invoke("rehearse", "--keep")
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    kept = copies(at_initial)
    assert len(kept) == 1 and f"kept the copy: {kept[0]}" in r.stdout
    assert "predicted duration" in r.stdout and "add_comments" not in r.stderr
    r = invoke("migrate", "--no-backup", env={"DBOPS_REHEARSE": "always"})
    assert r.returncode == 0, r.stderr
    assert "rehearsing first (DBOPS_REHEARSE=always)" in r.stdout
    assert (
        f"swept a killed rehearsal's copy: {kept[0]}" in r.stdout
    )  # a kept copy is swept next time
    assert copies(at_initial) == []


def test_always_takes_a_backup_when_none_is_at_the_live_revision(invoke, env, at_initial, tmp_path):
    r = invoke("migrate", "--no-backup", env={"DBOPS_REHEARSE": "always"})
    assert r.returncode == 0, r.stderr
    assert "pre-rehearse" in r.stdout and "predicted" in r.stdout
    assert copies(at_initial) == []


def test_scratch_copies_take_the_live_databases_encoding_and_collation(pg_cluster, ops_env):
    """The rehearsal's copy (and the restore test's scratch database) is created with the live
    database's encoding, collation and ctype, not the server's defaults (UTF8 here; the test
    cluster has only the C locale, so the encoding is what tells them apart)."""
    live = f"t_latin1_{uuid.uuid4().hex[:8]}"
    with pg_cluster.connect() as conn:
        conn.execute(
            f"CREATE DATABASE {live} TEMPLATE template0 ENCODING 'LATIN1' "
            f"LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    try:
        settings = load_settings(ROOT, environ={**ops_env, "POSTGRES_DB": live})
        with Agent(settings) as agent:
            made = [agent.call("rehearse.scratch")["name"], agent.call("restore.scratch")["name"]]
            with pg_cluster.connect() as conn:
                got = conn.execute(
                    "SELECT pg_encoding_to_char(encoding), datcollate, datctype "
                    "FROM pg_database WHERE datname = ANY(%s)",
                    [made],
                ).fetchall()
                default = conn.execute(
                    "SELECT pg_encoding_to_char(encoding) FROM pg_database "
                    "WHERE datname = 'postgres'"
                ).fetchone()[0]
            assert default != "LATIN1"
            assert got == [("LATIN1", "C", "C")] * 2, got
            agent.call("rehearse.drop", name=made[0])
            agent.call("restore.scratch_drop", name=made[1])
    finally:
        with pg_cluster.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {live} WITH (FORCE)")
