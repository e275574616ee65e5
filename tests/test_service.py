"""Issue 13: restore drills, metrics, events, notify pings and the scheduled service, against
real PostgreSQL (local target; the service runs as a subprocess with second-level cron)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbops import audit, catalog
from dbops.config import load_settings
from dbops.ops import freshness, schedule
from tests.conftest import ROOT
from tests.fixtures.projects import fill


def samples(path: Path) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text file, parsed by prometheus_client's own parser."""
    out = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            out[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "database")))] = (
                s.value
            )
    return out


def json_events(stderr: str) -> list[dict]:
    return [json.loads(ln) for ln in stderr.splitlines() if ln.startswith("{")]


def scratch_databases(db_conn) -> list[str]:
    return [
        r[0]
        for r in db_conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'dbops\\_scratch\\_%'"
        ).fetchall()
    ]


@pytest.fixture
def watched(ops_env, tmp_path):
    """The operator's environment plus a metrics file and a drill-check folder."""
    checks = tmp_path / "checks"
    checks.mkdir()
    ops_env.update(
        {
            "DBOPS_METRICS_FILE": str(tmp_path / "metrics" / "dbops.prom"),
            "DBOPS_DRILL_CHECKS": str(checks),
        }
    )
    return ops_env


def settings_of(env) -> object:
    return load_settings(ROOT, environ=env)


def test_drill_restores_checks_times_and_drops_the_scratch_database(
    invoke, watched, db_conn, pg_cluster
):
    assert invoke("migrate", env=watched).returncode == 0
    fill(db_conn)
    assert invoke("backup", env=watched).returncode == 0
    checks = Path(watched["DBOPS_DRILL_CHECKS"])
    (checks / "10-items.sql").write_text("SELECT count(*) = 1000 FROM items;\n")
    (checks / "20-odd.sql").write_text(
        '-- two statements: the last one answers\nSELECT 1;\nSELECT max(x) = 2 FROM "Odd Name";\n'
    )
    done = invoke("drill", "--log-format", "json", env=watched)
    assert done.returncode == 0, done.stderr
    assert "drill passed" in done.stdout and "RTO" in done.stdout
    assert scratch_databases(db_conn) == []
    rec = [r for r in audit.read(settings_of(watched)) if r["action"] == "drill"][-1]
    assert rec["result"] == "ok" and rec["restore_s"] > 0 and rec["rows"] >= 1002
    assert [c["check"] for c in rec["checks"]] == ["10-items.sql", "20-odd.sql"]
    m = samples(Path(watched["DBOPS_METRICS_FILE"]))
    assert m[("dbops_drill_last_success", ())] == 1
    assert m[("dbops_drill_restore_seconds", ())] == pytest.approx(rec["restore_s"])
    assert m[("dbops_backup_last_verified", ())] == 1
    assert m[("dbops_backups_verified", ())] == 2  # the pre-migrate one and ours
    assert m[("dbops_operation_last_success", (("operation", "migrate"),))] == 1
    assert freshness.drill_freshness(settings_of(watched))[0] is True
    # JSON events: every line parses, steps then one summary, no password anywhere
    evs = json_events(done.stderr)
    assert evs and all(e["task"] == "drill" for e in evs)
    assert all(ln.startswith("{") for ln in done.stderr.splitlines()), done.stderr  # JSON only
    assert any(e.get("command", "").startswith("psql") for e in evs)  # seam steps
    assert {"start", "step", "summary"} <= {e["event"] for e in evs}
    summary = evs[-1]
    assert summary["event"] == "summary" and summary["result"] == "ok"
    for key in ("database", "target", "duration_s", "backup", "revisions"):
        assert summary[key] not in (None, ""), key
    assert pg_cluster.password not in done.stderr + done.stdout


def test_a_failing_drill_check_fails_the_drill_metrics_and_freshness(invoke, watched, db_conn):
    assert invoke("migrate", "--no-backup", env=watched).returncode == 0
    fill(db_conn)
    assert invoke("backup", env=watched).returncode == 0
    (Path(watched["DBOPS_DRILL_CHECKS"]) / "items.sql").write_text(
        "SELECT count(*) > 5000 FROM items;"
    )
    done = invoke("drill", env=watched)
    assert done.returncode == 1
    assert (
        "error: 1 drill check(s) failed" in done.stderr and "items.sql: returned f" in done.stderr
    )
    assert "next: " in done.stderr
    assert scratch_databases(db_conn) == []
    m = samples(Path(watched["DBOPS_METRICS_FILE"]))
    assert m[("dbops_drill_last_success", ())] == 0
    assert ("dbops_drill_restore_seconds", ()) not in m  # no drill ever passed
    ok, message, nxt = freshness.drill_freshness(settings_of(watched))
    assert not ok and "failed" in message and nxt == "invoke drill"


def test_a_check_with_an_sql_error_fails_and_no_backup_is_a_clear_error(invoke, watched, db_conn):
    done = invoke("drill", env=watched)
    assert done.returncode == 1 and "error: nothing to drill: no verified backup" in done.stderr
    assert "next: invoke backup" in done.stderr
    assert invoke("backup", env=watched).returncode == 0
    (Path(watched["DBOPS_DRILL_CHECKS"]) / "bad.sql").write_text("SELECT * FROM no_such_table;")
    done = invoke("drill", env=watched)
    assert done.returncode == 1 and "bad.sql: error:" in done.stderr
    # PostgreSQL's ERROR line, not psql's caret line under it
    assert 'bad.sql: error: ERROR: relation "no_such_table" does not exist' in done.stderr
    assert scratch_databases(db_conn) == []


def test_a_restored_copy_unlike_its_manifest_fails_the_drill_and_the_restore_test(
    invoke, watched, db_conn
):
    """restore.check against the manifest (ops/restore.check_restored): drill and
    verify-backup --restore-test each say it in their own words, and drop the scratch copy."""
    fill(db_conn)
    assert invoke("backup", env=watched).returncode == 0
    [entry] = catalog.list_backups(settings_of(watched))
    mpath = catalog.manifest_path(Path(entry["path"]))
    manifest = json.loads(mpath.read_text())
    manifest["tables"]["public.items"] += 1  # the archive's sha256 still matches
    mpath.write_text(json.dumps(manifest))
    done = invoke("drill", env=watched)
    assert done.returncode == 1
    assert "error: the restored database does not match the backup: row" in done.stderr, done.stderr
    assert done.stderr.count("does not match the backup") == 1  # said once, not twice
    assert "row counts differ: public.items 1000 (manifest 1001)" in done.stderr
    assert "next: invoke backup   # a new verified backup, then invoke drill" in done.stderr
    done = invoke("verify-backup", entry["path"], "--restore-test", env=watched)
    assert done.returncode == 1
    assert "row counts differ: public.items 1000 (manifest 1001)" in done.stderr, done.stderr
    assert "database state: unchanged (a scratch database was used)" in done.stderr
    assert scratch_databases(db_conn) == []


def test_freshness_of_backups_follows_the_schedule(settings, invoke, ops_env):
    ok, message, nxt = freshness.backup_freshness(settings)
    assert not ok and nxt == "invoke backup"
    assert invoke("backup").returncode == 0
    assert freshness.backup_freshness(settings)[0] is True
    # daily schedule: 1.5 days later it is stale; with an hourly one, 2 h is already too old
    later = datetime.now(UTC) + timedelta(hours=37)
    ok, message, _ = freshness.backup_freshness(settings, now=later)
    assert not ok and "1.5" in message
    hourly = load_settings(ROOT, environ={**ops_env, "DBOPS_BACKUP_SCHEDULE": "0 * * * *"})
    assert (
        freshness.backup_freshness(hourly, now=datetime.now(UTC) + timedelta(hours=2))[0] is False
    )
    assert freshness.backup_freshness(hourly, now=datetime.now(UTC) + timedelta(hours=1))[0] is True


def test_a_bad_schedule_is_refused_before_anything(invoke):
    done = invoke("serve", "--dry-run", env={"DBOPS_BACKUP_SCHEDULE": "every day"})
    assert done.returncode == 1
    assert done.stderr.startswith("error: DBOPS_BACKUP_SCHEDULE='every day' is not a cron schedule")


# --- notify pings ------------------------------------------------------------------
class _Pings(http.server.BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).got.append((self.path.split("?")[0], json.loads(body or b"{}")))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *a):
        pass


@pytest.fixture
def ping_server():
    handler = type("Pings", (_Pings,), {"got": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/ping/abc", handler.got
    srv.shutdown()


def test_notify_pings_start_success_and_failure(invoke, ping_server, pg_cluster):
    url, got = ping_server
    done = invoke("backup", env={"DBOPS_NOTIFY_URL": url})
    assert done.returncode == 0, done.stderr
    assert [p for p, _ in got] == ["/ping/abc/start", "/ping/abc"]
    assert got[1][1]["result"] == "ok" and got[1][1]["backup"].endswith(".dump")
    got.clear()
    done = invoke("restore", "no-such-file", "--yes", env={"DBOPS_NOTIFY_URL": url})
    assert done.returncode == 1
    assert [p for p, _ in got] == ["/ping/abc/start", "/ping/abc/fail"]
    assert "no-such-file: no such file" in got[1][1]["error"]
    assert pg_cluster.password not in json.dumps(got) and "abc" not in done.stderr


def test_a_dead_notify_url_does_not_fail_the_backup(invoke, settings):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = invoke(
        "backup",
        env={
            "DBOPS_NOTIFY_URL": f"http://127.0.0.1:{port}/hc/secret-token",
            "DBOPS_NOTIFY_TIMEOUT": "2",
        },
    )
    assert done.returncode == 0, done.stderr
    assert "warning: notify ping" in done.stderr and "secret-token" not in done.stderr
    assert catalog.newest_verified(settings, settings.database) is not None


# --- the service ---------------------------------------------------------------------
def serve_proc(env: dict, *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dbops.serve", "--project-dir", str(ROOT), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, log=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n" + (log.read_text() if log else ""))


def stop(proc: subprocess.Popen, timeout: float = 90) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


def test_the_service_backs_up_and_drills_on_schedule(
    watched, invoke, db_conn, tmp_path, pg_cluster
):
    assert invoke("migrate", "--no-backup", env=watched).returncode == 0
    fill(db_conn)
    env = {
        **watched,
        "DBOPS_BACKUP_SCHEDULE": "*/4 * * * * *",
        "DBOPS_DRILL_SCHEDULE": "*/7 * * * * *",
        "DBOPS_LOG_FORMAT": "json",
    }
    metrics_file = Path(env["DBOPS_METRICS_FILE"])
    log = tmp_path / "serve.log"
    proc = serve_proc(env, log=log)
    try:

        def drilled():
            return (
                metrics_file.exists()
                and samples(metrics_file).get(("dbops_drill_last_success", ())) == 1
            )

        wait_for(drilled, 90, "a backup and a passed drill in the metrics", proc, log)
    finally:
        rc = stop(proc)
    assert rc == 0, log.read_text()
    s = settings_of(env)
    backups = catalog.list_backups(s)
    assert backups and all(b["verified"] and b["reason"] == "scheduled" for b in backups)
    m = samples(metrics_file)
    assert m[("dbops_backups_verified", ())] >= 1 and m[("dbops_backup_last_size_bytes", ())] > 0
    assert m[("dbops_backup_schedule_interval_seconds", ())] == 4
    assert not [p for p in s.backup_dir.iterdir() if p.name.endswith(".partial")]
    assert scratch_databases(db_conn) == []
    text = log.read_text()
    events = json_events(text)
    summaries = [e for e in events if e["event"] == "summary"]
    assert {e["task"] for e in summaries} >= {"scheduled-backup", "scheduled-drill"}
    assert pg_cluster.password not in text


def test_two_jobs_for_the_same_tick_make_one_backup(ops_env, settings):
    tick = schedule.iso(datetime.now(UTC).replace(microsecond=0))
    argv = [
        sys.executable,
        "-m",
        "dbops.serve",
        "job",
        "backup",
        "--tick",
        tick,
        "--project-dir",
        str(ROOT),
    ]
    procs = [
        subprocess.Popen(
            argv,
            cwd=ROOT,
            env=ops_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert len(catalog.list_backups(settings)) == 1
    assert sum("skipped" in err for _, err in outs) == 2
    again = subprocess.run(argv, cwd=ROOT, env=ops_env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already ran" in again.stderr
    assert len(catalog.list_backups(settings)) == 1


def test_two_services_make_one_backup_per_tick(ops_env, settings, tmp_path):
    env = {**ops_env, "DBOPS_BACKUP_SCHEDULE": "*/5 * * * * *", "DBOPS_DRILL_SCHEDULE": "off"}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [serve_proc(env, log=lg) for lg in logs]
    try:
        wait_for(
            lambda: len(catalog.list_backups(settings)) >= 3, 60, "three ticks", procs[0], logs[0]
        )
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0], [lg.read_text() for lg in logs]
    starts = [schedule.parse_iso(b["created_at"]) for b in catalog.list_backups(settings)]
    ticks = [t.replace(second=t.second - t.second % 5, microsecond=0) for t in starts]
    assert len(ticks) == len(set(ticks)), starts  # never two backups for one tick
    assert "another instance" in logs[0].read_text() + logs[1].read_text()


def test_sigterm_mid_backup_leaves_nothing_partial_and_exits_cleanly(
    ops_env, settings, db_conn, pg_cluster, tmp_path
):
    fill(db_conn)
    env = {**ops_env, "DBOPS_BACKUP_SCHEDULE": "*/3 * * * * *", "DBOPS_DRILL_SCHEDULE": "off"}
    # an open transaction holding ACCESS EXCLUSIVE on items: pg_dump waits for it (a long dump)
    with pg_cluster.connect(settings.database) as blocker:
        blocker.autocommit = False
        blocker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        log = tmp_path / "serve.log"
        proc = serve_proc(env, log=log)
        try:
            folder = settings.backup_dir
            wait_for(
                lambda: (
                    folder.is_dir() and any(p.name.endswith(".partial") for p in folder.iterdir())
                ),
                60,
                "a backup in progress",
                proc,
                log,
            )
            time.sleep(1)
        finally:
            rc = stop(proc)
        blocker.rollback()
    assert rc == 0, log.read_text()
    assert not [p.name for p in settings.backup_dir.iterdir() if p.name.endswith(".partial")]
    assert catalog.list_backups(settings) == []
    assert "interrupted" in log.read_text()
    # the interrupted tick is not recorded as done: a restart catches it up
    assert schedule.last_tick(settings, "backup") is None
    busy = db_conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%%' "
        "AND datname = current_database()"
    ).fetchone()[0]
    assert busy == 0


def test_a_tick_missed_while_down_runs_at_start(ops_env, settings, tmp_path):
    env = {**ops_env, "DBOPS_BACKUP_SCHEDULE": "0 0 1 1 *", "DBOPS_DRILL_SCHEDULE": "off"}
    s = settings_of(env)
    trig = schedule.trigger_for(s, "backup")
    this_year = schedule.last_fire(trig)
    schedule.record_tick(s, "backup", this_year.replace(year=this_year.year - 1), "ok")
    assert schedule.missed_tick(s, "backup") == this_year
    log = tmp_path / "serve.log"
    proc = serve_proc(env, log=log)
    try:
        wait_for(lambda: catalog.list_backups(settings), 60, "the missed backup", proc, log)
        wait_for(
            lambda: schedule.last_tick(s, "backup") == this_year, 30, "the tick recorded", proc, log
        )
    finally:
        assert stop(proc) == 0
    assert "was missed while the service was down" in log.read_text()
    assert schedule.missed_tick(s, "backup") is None


# --- rich: tables and progress at a terminal, stable text elsewhere ---------------------
def run_on_tty(env: dict, *args: str, stream: str = "stdout") -> tuple[int, str, str]:
    """Run `invoke ARGS` with ``stream`` on a pseudo-terminal; (code, tty text, other text)."""
    import pty
    import select

    master, slave = pty.openpty()
    other = "stderr" if stream == "stdout" else "stdout"
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        env={**env, "TERM": "xterm", "COLUMNS": "160"},
        stdin=subprocess.DEVNULL,
        **{stream: slave, other: subprocess.PIPE},
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    rest = getattr(proc, other).read().decode()
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace"), rest


def test_backups_is_a_table_at_a_terminal_and_stable_text_otherwise(invoke, ops_env, db_conn):
    fill(db_conn, 200_000)
    code, tty, err = run_on_tty(ops_env, "backup", stream="stderr")
    assert code == 0, err + tty
    assert "dumping " in tty and "/s" in tty  # the rich bar: bytes and rate
    plain = invoke("backup")
    assert "dumping " not in plain.stderr
    code, tty, _ = run_on_tty(ops_env, "backups")
    assert code == 0 and "━" in tty and "created (UTC)" in tty and "scheduled" not in tty
    text = invoke("backups").stdout
    assert text.splitlines()[0].split() == [
        "created",
        "(UTC)",
        "size",
        "revision",
        "reason",
        "verified",
        "file",
    ]
    assert "━" not in text and len(text.splitlines()) == 3
    assert len(json.loads(invoke("backups", "--json").stdout)) == 2
    code, tty, _ = run_on_tty(ops_env, "history")
    assert code == 0 and "━" in tty and "pending" in tty
    assert "━" not in invoke("history").stdout


# --- the compose service and the alert rules -----------------------------------------
def test_the_compose_service_is_opt_in_and_runs_this_checkouts_dbops():
    import yaml

    svc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["dbops"]
    assert svc["profiles"] == ["ops"]
    assert svc["command"][:3] == ["python", "-m", "dbops.serve"]
    assert "./dbops:/opt/dbops/dbops:ro" in svc["volumes"]
    assert any(v.endswith(":/backups") for v in svc["volumes"])
    env = svc["environment"]
    assert env["DBOPS_TARGET"] == "local" and env["POSTGRES_HOST"] == "db"
    assert "${DBOPS_BACKUP_SCHEDULE" in env["DBOPS_BACKUP_SCHEDULE"]
    assert ":?" in env["POSTGRES_PASSWORD"]
    assert svc["stop_signal"] == "SIGTERM" and svc["stop_grace_period"]
    assert (ROOT / svc["build"]["dockerfile"]).is_file()


def test_alert_rules_use_metrics_that_exist(invoke, watched):
    import re

    import yaml

    assert invoke("migrate", "--no-backup", env=watched).returncode == 0
    assert invoke("backup", env=watched).returncode == 0
    assert invoke("drill", env=watched).returncode == 0
    assert invoke("doctor", "--no-schema", env=watched).returncode in (0, 1)
    written = {name for name, _ in samples(Path(watched["DBOPS_METRICS_FILE"]))}
    rules = yaml.safe_load((ROOT / "docs" / "dbops-alerts.yml").read_text())["groups"][0]["rules"]
    used = {m for r in rules for m in re.findall(r"\bdbops_[a-z_]+", r["expr"])}
    # written only once PITR is in use (tests/test_alerts.py writes and reads them)
    pitr = {"dbops_wal_archive_failing", "dbops_physical_backup_last_success_timestamp_seconds"}
    assert used and used - pitr <= written, used - pitr - written
    assert {"DbopsBackupTooOld", "DbopsDrillTooOld", "DbopsMigrateFailed"} <= {
        r["alert"] for r in rules
    }
    assert ("dbops_doctor_check_status", (("check", "backups"),)) in samples(
        Path(watched["DBOPS_METRICS_FILE"])
    )


def test_never_drilled_warns_only_once_backups_are_older_than_the_drill_limit(invoke, settings):
    assert freshness.drill_freshness(settings)[0] is True  # a new install: not an incident
    assert invoke("backup").returncode == 0
    ok, message, nxt = freshness.drill_freshness(
        settings, now=datetime.now(UTC) + timedelta(days=9)
    )
    assert not ok and "no restore drill recorded" in message and nxt == "invoke drill"
    assert invoke("drill").returncode == 0
    assert freshness.drill_freshness(settings, now=datetime.now(UTC) + timedelta(days=7))[0] is True
    ok, message, _ = freshness.drill_freshness(settings, now=datetime.now(UTC) + timedelta(days=9))
    assert not ok and "> 8 days" in message


def test_metrics_task_and_a_bad_log_format(invoke, ops_env):
    done = invoke("metrics", "--print")
    assert done.returncode == 0, done.stderr
    names = {s.name for f in text_string_to_metric_families(done.stdout) for s in f.samples}
    assert "dbops_backups_verified" in names and "dbops_metrics_written_timestamp_seconds" in names
    bad = invoke("backup", "--log-format", "yaml")
    assert bad.returncode == 1 and "error: --log-format='yaml' is not text or json" in bad.stderr
    assert not (
        Path(ops_env["DBOPS_BACKUP_DIR"]).exists()
        and list(Path(ops_env["DBOPS_BACKUP_DIR"]).glob("*.dump"))
    )
