"""Issue 20: notify pings that cannot hurt. A local catcher (raw sockets) answers garbage, a
500, drips one byte a second or hangs; the operation is unaffected and each ping is bounded
by ONE deadline (DBOPS_NOTIFY_TIMEOUT) for connect + send + answer."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from datetime import UTC, datetime

import pytest

from dbops import catalog, events, metrics
from tests.conftest import offline_settings


class Catcher:
    """A raw-socket endpoint; ``mode`` says how it answers each connection."""

    def __init__(self, mode: str):
        self.mode = mode
        self.got: list[tuple[str, dict]] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.closed = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/ping/secret-token"

    def serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def read_request(self, conn) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        length = next(
            (int(h.split(":")[1]) for h in lines if h.lower().startswith("content-length")), 0
        )
        while len(body) < length:
            body += conn.recv(65536)
        self.got.append((lines[0].split()[1], json.loads(body or b"{}")))

    def answer(self, conn) -> None:
        with conn:
            try:
                self.read_request(conn)
                if self.mode == "ok":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                elif self.mode == "garbage":
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6 not http at all\r\n\r\n")
                elif self.mode == "500":
                    conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nOops")
                elif self.mode == "drip":  # a byte a second, forever: each read is quick
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                        if self.closed.is_set():
                            return
                        conn.sendall(bytes([byte]))
                        time.sleep(1)
                elif self.mode == "hang":
                    self.closed.wait(120)
            except OSError:
                pass

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


@pytest.fixture
def catcher():
    made = []

    def make(mode: str) -> Catcher:
        made.append(Catcher(mode))
        return made[-1]

    yield make
    for c in made:
        c.close()


def command(tmp_path, task: str = "backup", **environ) -> events.Command:
    return events.Command(task, offline_settings(tmp_path, **environ), notify=True)


@pytest.mark.parametrize("mode", ["garbage", "500", "drip", "hang", "refused"])
def test_every_bad_endpoint_is_a_warning_within_one_deadline(tmp_path, catcher, capsys, mode):
    if mode == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}/ping/secret-token"
    else:
        url = catcher(mode).url
    cmd = command(tmp_path, DBOPS_NOTIFY_URL=url, DBOPS_NOTIFY_TIMEOUT="2")
    t0 = time.monotonic()
    assert cmd.ping("/start") is False
    took = time.monotonic() - t0
    assert took < 2 + 3  # one deadline (2 s) for the whole exchange, not one per read
    err = capsys.readouterr().err
    assert err.startswith("warning: notify ping (start) failed:"), err
    assert "the operation is not affected" in err and "secret-token" not in err
    if mode == "drip":
        print(f"\ndrip endpoint: the ping ended after {took:.2f} s (deadline 2 s)")


def test_a_run_pairs_start_and_finish_by_run_id(tmp_path, catcher):
    c = catcher("ok")
    cmd = command(tmp_path, DBOPS_NOTIFY_URL=c.url)
    cmd.start()
    cmd.finish("ok")
    cmd.release()
    paths = [urllib.parse.urlsplit(p) for p, _ in c.got]
    assert [p.path for p in paths] == ["/ping/secret-token/start", "/ping/secret-token"]
    rids = {urllib.parse.parse_qs(p.query)["rid"][0] for p in paths}
    assert len(rids) == 1 and rids == {cmd.run_id}
    assert c.got[1][1]["result"] == "ok" and c.got[1][1]["rid"] == cmd.run_id


def test_each_job_pings_its_own_url_falling_back_to_the_common_one(tmp_path, catcher):
    common, backups, drills = catcher("ok"), catcher("ok"), catcher("ok")
    env = {"DBOPS_NOTIFY_URL": common.url, "DBOPS_NOTIFY_URL_BACKUP": backups.url}
    for task in ("backup", "scheduled-backup", "drill", "migrate"):
        cmd = command(tmp_path, task, **env)
        cmd.ping("")
    assert len(backups.got) == 2 and len(common.got) == 2 and drills.got == []
    cmd = command(tmp_path, "scheduled-drill", DBOPS_NOTIFY_URL_DRILL=drills.url)
    cmd.ping("/fail")
    assert [urllib.parse.urlsplit(p).path for p, _ in drills.got] == ["/ping/secret-token/fail"]
    assert command(tmp_path, "migrate", DBOPS_NOTIFY_URL_DRILL=drills.url).ping("") is False


def test_a_skipped_tick_sends_a_log_note_and_no_start_or_success(tmp_path, catcher):
    c = catcher("ok")
    s = offline_settings(tmp_path, DBOPS_NOTIFY_URL=c.url, DBOPS_BACKUP_DIR=str(tmp_path / "b"))

    def skipped():
        events.note(outcome="skipped")

    events.run_command("scheduled-backup", s, skipped, notify=True, defer_start=True)
    assert [urllib.parse.urlsplit(p).path for p, _ in c.got] == ["/ping/secret-token/log"]
    assert metrics.read_runs(s) == {}  # not a run
    c.got.clear()

    def ran():
        events.begin()

    events.run_command("scheduled-backup", s, ran, notify=True, defer_start=True)
    assert [urllib.parse.urlsplit(p).path for p, _ in c.got] == [
        "/ping/secret-token/start",
        "/ping/secret-token",
    ]


def test_an_interrupted_run_is_a_log_note_neither_success_nor_failure(tmp_path, catcher):
    c = catcher("ok")
    s = offline_settings(tmp_path, DBOPS_NOTIFY_URL=c.url, DBOPS_BACKUP_DIR=str(tmp_path / "b"))

    def stopped():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        events.run_command("drill", s, stopped, notify=True)
    assert [urllib.parse.urlsplit(p).path for p, _ in c.got] == [
        "/ping/secret-token/start",
        "/ping/secret-token/log",
    ]
    row = metrics.read_runs(s)["drill"]
    assert row["interrupted"] == 1 and "last_failure" not in row and "last_success" not in row


def test_json_events_from_many_threads_are_whole_lines(tmp_path, capsys):
    cmd = events.Command("serve", offline_settings(tmp_path), "json")
    words = "x" * 5000

    def spam(n):
        for i in range(200):
            cmd.emit("step", message=f"{n}-{i}-{words}")

    threads = [threading.Thread(target=spam, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 800 and all(json.loads(ln)["event"] == "step" for ln in lines)


# --- through the CLI: the operation itself is unaffected ------------------------------------
def test_a_garbage_endpoint_does_not_stop_a_backup(invoke, settings, catcher):
    done = invoke("backup", env={"DBOPS_NOTIFY_URL": catcher("garbage").url})
    assert done.returncode == 0, done.stderr
    assert "warning: notify ping (start) failed" in done.stderr
    assert "secret-token" not in done.stderr
    assert catalog.newest_verified(settings, settings.database) is not None


def test_a_drip_endpoint_costs_a_backup_at_most_the_deadline_per_ping(invoke, settings, catcher):
    t0 = time.monotonic()
    done = invoke(
        "backup", env={"DBOPS_NOTIFY_URL": catcher("drip").url, "DBOPS_NOTIFY_TIMEOUT": "2"}
    )
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no answer within 2 s") == 2  # start and success
    assert took < 60, took  # before: unbounded (a byte a second resets a per-read timeout)
    print(f"\nbackup with a drip endpoint: {took:.1f} s (2 pings x 2 s deadline)")


def test_a_bad_setting_still_sends_fail_and_is_one_json_event(invoke, catcher):
    c = catcher("ok")
    done = invoke(
        "backup",
        "--log-format",
        "json",
        env={"DBOPS_NOTIFY_URL": c.url, "DBOPS_BACKUP_RESERVE_MB": "lots"},
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines and all(json.loads(ln) for ln in lines), done.stderr  # JSON only
    summary = json.loads(lines[-1])
    assert summary["event"] == "summary" and summary["result"] == "failed"
    assert "DBOPS_BACKUP_RESERVE_MB" in summary["error"]
    assert [urllib.parse.urlsplit(p).path for p, _ in c.got] == ["/ping/secret-token/fail"]


def test_a_failure_in_json_mode_is_events_only(invoke):
    done = invoke("restore", "no-such-file", "--yes", "--log-format", "json")
    assert done.returncode == 1
    evs = [json.loads(ln) for ln in done.stderr.splitlines()]  # every line parses
    summary = evs[-1]
    assert summary["event"] == "summary" and summary["result"] == "failed"
    assert "no such file" in summary["error"] and summary["state"] and summary["next_command"]


def test_a_failed_tick_then_a_late_instance_sends_no_success(ops_env, settings, catcher):
    """Two instances, one tick: the first fails it (/fail); the late one finds the tick already
    ran and sends a /log note — never a success that would flip the check back to up."""
    import subprocess
    import sys

    from dbops.ops import schedule
    from tests.conftest import ROOT

    c = catcher("ok")
    tick = schedule.iso(datetime.now(UTC).replace(microsecond=0))
    argv = [sys.executable, "-m", "dbops.serve", "job", "backup", "--tick", tick]
    argv += ["--project-dir", str(ROOT)]
    env = {**ops_env, "DBOPS_NOTIFY_URL": c.url}
    failing = {**env, "DBOPS_BACKUP_RESERVE_MB": "100000000"}  # no disk has that much room
    first = subprocess.run(argv, cwd=ROOT, env=failing, capture_output=True, text=True, timeout=120)
    assert first.returncode == 1, first.stderr
    late = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert late.returncode == 0 and "already ran" in late.stderr, late.stderr
    paths = [urllib.parse.urlsplit(p).path for p, _ in c.got]
    assert paths == [
        "/ping/secret-token/start",
        "/ping/secret-token/fail",
        "/ping/secret-token/log",
    ], paths
    assert catalog.list_backups(settings) == []
    row = metrics.read_runs(settings)["backup"]
    assert row["runs"] == 1 and row["failures"] == 1  # the skipped tick is not a run


def test_json_mode_is_json_only_for_tasks_that_pass_and_fail(invoke, ops_env):
    """Every line of stderr parses, for successes and failures; each ends with its summary."""
    runs = [
        (("migrate", "--no-backup"), 0),
        (("backup",), 0),
        (("verify-backup", "no-such.dump"), 1),
        (("drill", "--file", "no-such.dump"), 1),
        (("doctor", "--no-schema"), None),
        (("rollback", "--to", "nope", "--yes"), 1),
    ]
    for args, code in runs:
        done = invoke(*args, "--log-format", "json", env={"DBOPS_BACKUP_RESERVE_MB": "0"})
        if code is not None:
            assert done.returncode == code, (args, done.stderr)
        lines = done.stderr.splitlines()
        bad = [ln for ln in lines if not ln.startswith("{")]
        assert not bad, (args, bad)
        evs = [json.loads(ln) for ln in lines]
        summary = [e for e in evs if e["event"] == "summary"]
        assert len(summary) == 1 and summary[0] is evs[-1], args
        if done.returncode:
            assert summary[0]["result"] == "failed" and summary[0]["error"], args
            assert summary[0]["state"] and summary[0]["next_command"] is not None, args


def test_an_agent_traceback_in_json_mode_is_events(invoke, tmp_path):
    """The agent's own stderr (here: a traceback from a broken env.py) becomes step events."""
    project = tmp_path / "broken"
    (project / "alembic" / "versions").mkdir(parents=True)
    (project / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/alembic\n")
    (project / "alembic" / "env.py").write_text(
        "import sys\nprint('env.py: about to fail', file=sys.stderr)\n"
        "raise RuntimeError('broken env.py')\n"
    )
    (project / "alembic" / "script.py.mako").write_text("")
    (project / "alembic" / "versions" / "a1_first.py").write_text(
        "revision = 'a1'\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n"
        "def upgrade():\n    pass\ndef downgrade():\n    pass\n"
    )
    done = invoke(
        "migrate",
        "--no-backup",
        "--log-format",
        "json",
        env={"DBOPS_ALEMBIC_INI": str(project / "alembic.ini")},
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert all(ln.startswith("{") for ln in lines), done.stderr
    evs = [json.loads(ln) for ln in lines]
    assert evs[-1]["event"] == "summary" and evs[-1]["result"] == "failed"
    assert any("about to fail" in (e.get("message") or "") for e in evs), evs
