"""The seam's process layer (dbops/process.py): jobs, streams, the marker parser, the scripts in
dbops/sh/. Real processes on this machine (no database needed); scripts/test lints the scripts
with shellcheck."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import time
from importlib import resources
from pathlib import Path

import pytest

from dbops import process, seam
from dbops.errors import OpsError
from dbops.ops import backup as backup_op
from tests.conftest import ROOT

SECRET = "s3cr3t-Pa55"
SH_DIR = ROOT / "dbops" / "sh"


class Progress:
    def __init__(self):
        self.seen: list[tuple[int, bool]] = []

    def update(self, n: int, final: bool = False) -> None:
        self.seen.append((n, final))


def sh(script: str, *args: str) -> seam.Launch:
    return seam.Launch(["sh", "-c", script, "dbops-test", *args], dict(os.environ), None, (SECRET,))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def test_markers_and_messages_are_told_apart_and_masked():
    markers, messages = process.parse(
        [
            "dbops:dump_exit=0",
            "dbops:restore_failed",
            "dbops:dump_exit=1",  # the last one of a key wins
            "dbops: the tar archive is unreadable",  # a sentence, not a marker
            "",
            f'psql: FATAL: password "{SECRET}" refused',
        ],
        (SECRET,),
    )
    assert markers == {"dump_exit": "1", "restore_failed": ""}
    assert messages == [
        "dbops: the tar archive is unreadable",
        'psql: FATAL: password "****" refused',
    ]


def test_a_job_reports_status_markers_and_masked_messages():
    done = process.run_job(
        sh(f'echo "dbops:psql_exit=3" >&2; echo "{SECRET} leaked?" >&2; echo out; exit 5')
    )
    assert done == process.Ended(5, {"psql_exit": "3"}, ["**** leaked?"])


def test_a_job_reads_its_stdin_from_a_file(tmp_path):
    src = tmp_path / "in"
    src.write_text("one\ntwo\n")
    with open(src, "rb") as f:
        done = process.run_job(sh('echo "dbops:lines=$(wc -l | tr -d " ")" >&2'), stdin=f)
    assert done.rc == 0 and done.markers == {"lines": "2"}


def test_stop_ends_the_script_and_everything_it_started(tmp_path):
    pidfile = tmp_path / "pid"
    job = process.Job(sh('sleep 300 & echo $! > "$1"; wait', str(pidfile)))
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "the script did not start its child"
        time.sleep(0.05)
    child = int(pidfile.read_text())
    job.stop()
    done = job.finish()
    assert done.rc != 0
    deadline = time.monotonic() + 30
    while alive(child):
        assert time.monotonic() < deadline, "the script's child outlived stop()"
        time.sleep(0.05)


def test_a_stream_copies_stdout_into_the_file_with_its_digest(tmp_path):
    out = tmp_path / "archive"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    progress = Progress()
    try:
        job = process.Job(
            sh("head -c 3000000 /dev/zero; echo dbops:dump_exit=0 >&2"), stdout=subprocess.PIPE
        )
        stream = job.stream_to(fd, progress)
        stream.wait()
        done = job.finish()
    finally:
        os.close(fd)
    data = out.read_bytes()
    assert len(data) == 3_000_000 and stream.error is None
    assert stream.state == {"size": 3_000_000, "sha256": hashlib.sha256(data).hexdigest()}
    assert done.rc == 0 and done.markers == {"dump_exit": "0"}
    assert progress.seen[-1] == (3_000_000, True)


def test_a_write_error_stops_the_job_at_once(tmp_path):
    """The file cannot be written (here: opened read-only; on a full disk ENOSPC): the copy
    records the error and stops the job, which would otherwise write forever."""
    target = tmp_path / "ro"
    target.write_bytes(b"")
    fd = os.open(target, os.O_RDONLY)
    try:
        job = process.Job(sh("exec yes"), stdout=subprocess.PIPE)
        stream = job.stream_to(fd, Progress())
        stream.wait()
        done = job.finish()
    finally:
        os.close(fd)
    assert isinstance(stream.error, OSError)
    assert done.rc != 0 and stream.state["size"] == 0


def test_a_command_that_cannot_start_is_one_clear_error():
    launch = seam.Launch(["/nonexistent/dbops-tool"], dict(os.environ), None)
    with pytest.raises(OpsError, match="cannot run '/nonexistent/dbops-tool'"):
        process.Job(launch)


def test_every_script_is_shipped_shown_by_its_first_comment_and_checked_as_posix_sh():
    names = sorted(p.stem for p in SH_DIR.glob("*.sh"))
    assert names
    for name in names:
        text = process.script(name)
        assert text == (resources.files("dbops") / "sh" / f"{name}.sh").read_text()
        lines = text.splitlines()
        assert lines[0].startswith("# dbops "), name  # what `$ …` shows instead of the script
        assert "# shellcheck shell=sh" in lines[:3], name
        label = seam.Launch(process.sh_argv(name, "dbops-x"), {}, None).display
        assert label.startswith("sh -c '<script: dbops "), label


def test_the_backup_module_keeps_its_old_private_names():
    """restore.py (and older callers) import these from dbops/ops/backup.py."""
    assert backup_op._pump is process.pump
    assert backup_op._drain is process.drain
    assert backup_op._stop is process.stop
    assert backup_op._widen_pipe is process.widen_pipe


def test_no_shell_script_lives_in_a_python_string():
    """Every script dbops runs through ``sh -c`` is a file under dbops/sh/ (shellcheck reads
    them in scripts/test): no module passes a literal script to ``sh -c``."""
    found = []
    for path in sorted((ROOT / "dbops").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.List) and len(node.elts) >= 3:
                first = node.elts[:3]
                if all(isinstance(e, ast.Constant) for e in first[:2]) and [
                    e.value for e in first[:2]
                ] == ["sh", "-c"]:
                    if not (isinstance(first[2], ast.Call)):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []
