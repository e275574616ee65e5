"""Failures classified where they happen (issue 19 item 6): a wrong password, a missing
database or a broken revision file give every task doctor's words and next command — one
`error:` line, no traceback, never "wait for it to finish" unless the lock query said busy."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import ROOT


def _one_error(done, *needles: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("error: ") == 1, done.stderr
    assert "wait for" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)


@pytest.mark.parametrize("task", [["backup"], ["drill"], ["migrate"], ["current"]])
def test_a_wrong_password_is_doctors_authentication_failure(invoke, ops_env, task):
    done = invoke(*task, env={"POSTGRES_PASSWORD": "wrong-Pa55"})
    _one_error(
        done,
        f"rejects role {ops_env['POSTGRES_USER']} (authentication failed)",
        "next: invoke doctor",
    )
    assert "wrong-Pa55" not in done.stdout + done.stderr


@pytest.mark.parametrize("task", [["backup"], ["migrate"]])
def test_a_missing_database_is_named_with_the_create_command(invoke, task):
    done = invoke(*task, env={"POSTGRES_DB": "no_such_db_here"})
    _one_error(done, "database no_such_db_here does not exist", "CREATE DATABASE no_such_db_here")


def test_a_refused_connection_says_nothing_answers(invoke):
    done = invoke("backup", env={"POSTGRES_PORT": "1", "POSTGRES_HOST": "127.0.0.1"})
    _one_error(done, "cannot reach database", "next: ")


@pytest.mark.parametrize(
    "broken, syntax",
    [("def upgrade(:\n", True), ("import no_such_module_dbops\n", False)],
)
def test_a_broken_revision_file_is_one_line_naming_file_and_line(invoke, tmp_path, broken, syntax):
    project = tmp_path / "backend"
    shutil.copytree(ROOT / "backend", project, ignore=shutil.ignore_patterns("__pycache__"))
    [rev] = (project / "alembic" / "versions").glob("308ea353e93f_*.py")
    lines = rev.read_text().splitlines(keepends=True)
    at = next(i for i, ln in enumerate(lines) if ln.startswith("def upgrade"))
    lines.insert(at, broken)
    rev.write_text("".join(lines))
    done = invoke("migrate", env={"DBOPS_ALEMBIC_INI": str(project / "alembic.ini")})
    _one_error(done, f"{rev}, line {at + 1}")
    nxt = next(ln for ln in done.stderr.splitlines() if ln.startswith("next: "))
    if syntax:
        assert nxt.startswith(f"next: python -m py_compile {rev}")
    assert "database state: unchanged" in done.stderr
