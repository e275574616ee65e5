"""How a task ends (dbops.tasks.guarded): an expected failure is its message, state and next
command with no traceback; DBOPS_DEBUG=1 adds the causes; anything else is a dbops bug, said as
one (exit 70), with the traceback only under DBOPS_DEBUG=1."""

from __future__ import annotations

import pytest
from invoke import Context, Exit

from dbops.errors import OpsError
from dbops.tasks import EXIT_BUG, guarded


def context(tmp_path, debug: str = "0") -> Context:
    (tmp_path / ".env").write_text(f"POSTGRES_USER=u\nPOSTGRES_DB=d\nDBOPS_DEBUG={debug}\n")
    return Context(config={"dbops": {"project_dir": str(tmp_path)}})


def failing(exc: BaseException):
    @guarded
    def task(c):
        try:
            raise ConnectionResetError("peer went away")
        except ConnectionResetError:
            raise exc from None

    return task


def run(task, c, capsys) -> tuple[int, str]:
    with pytest.raises(Exit) as ended:
        task(c)
    return ended.value.code, capsys.readouterr().err


def test_an_expected_failure_has_no_traceback(tmp_path, capsys):
    err = OpsError("the lock is held", state="unchanged at a1", next_command="invoke doctor")
    code, out = run(failing(err), context(tmp_path), capsys)
    assert code == 1
    assert out.splitlines() == [
        "error: the lock is held",
        "database state: unchanged at a1",
        "next: invoke doctor",
    ]


def test_dbops_debug_adds_the_cause_an_error_from_none_hides(tmp_path, capsys):
    code, out = run(failing(OpsError("reset")), context(tmp_path, debug="1"), capsys)
    assert code == 1
    assert "debug: what caused it:" in out
    assert "ConnectionResetError: peer went away" in out


def test_a_bug_says_it_is_one_and_how_to_report_it_without_a_traceback(tmp_path, capsys):
    code, out = run(failing(KeyError("steps")), context(tmp_path), capsys)
    assert code == EXIT_BUG == 70
    assert out.startswith("error: dbops bug: KeyError: 'steps' at ")
    assert "DBOPS_DEBUG=1" in out and "Reporting a bug" in out
    assert "Traceback" not in out


def test_a_bug_under_dbops_debug_prints_its_traceback(tmp_path, capsys):
    code, out = run(failing(KeyError("steps")), context(tmp_path, debug="1"), capsys)
    assert code == 70
    assert "Traceback (most recent call last)" in out and "ConnectionResetError" in out


def test_a_task_s_own_exit_status_is_not_a_bug(tmp_path, capsys):
    @guarded
    def task(c):
        raise Exit(code=1)  # doctor found a failing check: its own status, already printed

    code, out = run(task, context(tmp_path), capsys)
    assert code == 1 and out == ""
