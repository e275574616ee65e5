"""Commands runnable as printed (issue 19 item 3): every `next:` line dbops can print passes
`bash -n`, explanations come after `#`, and a path with a space or `$(...)` round-trips as one
inert word — pasted, it runs the command and nothing else."""

from __future__ import annotations

import ast
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from dbops.errors import OpsError, as_command, command
from tests.conftest import ROOT, offline_settings

HOSTILE = "/tmp/back ups/$(touch /tmp/pwned)/it's `id`.dump"


def bash_ok(line: str) -> bool:
    return subprocess.run(["bash", "-n", "-c", line], capture_output=True).returncode == 0


def assert_runnable(line: str) -> None:
    assert bash_ok(line), f"not valid shell: {line}"
    cmd = line.split("   #")[0]
    assert "(" not in cmd or "$(" not in cmd.replace("'", "") or "'" in cmd, line


# --- the helper --------------------------------------------------------------------------
def test_command_quotes_every_word_and_puts_the_why_after_a_hash():
    line = command("invoke", "restore", HOSTILE, "--yes", why="the undo (it's safe)")
    assert_runnable(line)
    assert shlex.split(line, comments=True) == ["invoke", "restore", HOSTILE, "--yes"]


@pytest.mark.parametrize(
    "old, new",
    [
        ("invoke doctor   (after x (or y))", "invoke doctor   # after x (or y)"),
        ("invoke a   (why), then: invoke b", "invoke a   # why, then: invoke b"),
        ("invoke current", "invoke current"),
        ("invoke x   # already", "invoke x   # already"),
    ],
)
def test_as_command_moves_a_parenthesised_remark_after_a_hash(old, new):
    assert as_command(old) == new and bash_ok(new)


# --- every literal next command in the source --------------------------------------------
def _texts(node: ast.AST) -> list[str]:
    """The strings an expression can be, f-string fields filled with a plain word."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        parts = [v.value if isinstance(v, ast.Constant) else "word" for v in node.values]
        return ["".join(parts)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [a + b for a in _texts(node.left) for b in _texts(node.right)]
    if isinstance(node, ast.IfExp):
        return _texts(node.body) + _texts(node.orelse)
    if isinstance(node, ast.Call):  # command(...), psql_command(...), restore_command(...)
        return ["invoke built --by=a-helper"]
    return []


def _next_commands() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted((ROOT / "dbops").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            pairs = []
            if isinstance(node, ast.keyword) and node.arg in ("next_command", "next"):
                pairs.append(node.value)
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in ("nxt", "next_command") for t in node.targets
            ):
                pairs.append(node.value)
            for value in pairs:
                for text in _texts(value):
                    found.append((str(path.relative_to(ROOT)), value.lineno, text))
    return found


NEXT_COMMANDS = _next_commands()


def test_the_source_scan_finds_the_next_commands():
    assert len(NEXT_COMMANDS) > 80


@pytest.mark.parametrize(
    "where, line, text", NEXT_COMMANDS, ids=[f"{w}:{n}" for w, n, _ in NEXT_COMMANDS]
)
def test_every_next_command_in_the_source_passes_bash_n(where, line, text):
    assert bash_ok(as_command(text)), f"{where}:{line}: {as_command(text)}"


# --- built ones, with hostile values -----------------------------------------------------
def test_next_commands_built_from_hostile_paths_round_trip(tmp_path):
    from dbops import safefile
    from dbops.agent_client import AgentError
    from dbops.ops import failures
    from dbops.ops.restore import restore_command

    s = offline_settings(tmp_path)
    lines = [restore_command(HOSTILE, "--yes")]
    err = failures.explain(
        s, AgentError("x", "script", {"file": HOSTILE, "line": 3, "syntax": True})
    )
    lines.append(err.next_command)
    folder = Path(HOSTILE).parent
    for exc in (
        safefile._unwritable(folder, OSError(28, "full")),
        safefile._unwritable(folder, OSError(30, "ro")),
        safefile.FolderError(
            "x", kind="unsafe", next_command=f"chmod 700 {shlex.quote(str(folder))}"
        ),
    ):
        lines.append(exc.next_command)
    for line in lines:
        rendered = OpsError("x", next_command=line).render().splitlines()[-1]
        assert rendered.startswith("next: ")
        assert_runnable(rendered[len("next: ") :])
        words = shlex.split(rendered[len("next: ") :], comments=True)
        assert HOSTILE in words or str(folder) in words, (line, words)


@pytest.mark.parametrize(
    "cause", ["auth", "too_many", "database_missing", "starting", "refused", "other"]
)
def test_doctors_connection_next_commands_are_runnable(tmp_path, cause):
    from dbops.ops.doctor_connect import _connect_failure

    s = offline_settings(tmp_path, DBOPS_TARGET="local", DBOPS_ENV_FILE=str(tmp_path / "a b.env"))
    check = _connect_failure(
        SimpleNamespace(settings=s, errors={}, raw={}), {"cause": cause, "error": "boom"}
    )
    assert bash_ok(check.as_dict()["next"]), check.as_dict()["next"]


def test_a_backup_folder_with_a_space_and_dollar_paren_round_trips(invoke, tmp_path, settings):
    pwned = tmp_path / "pwned"
    folder = tmp_path / f"back ups $(touch {pwned})"
    env = {"DBOPS_BACKUP_DIR": str(folder)}
    done = invoke("backup", env=env)
    assert done.returncode == 0, done.stderr
    [line] = [ln for ln in done.stdout.splitlines() if ln.startswith("restore it with: ")]
    printed = line[len("restore it with: ") :]
    assert_runnable(printed)
    refused = invoke(*shlex.split(printed)[1:], env=env)  # no terminal, no --yes: refused
    assert refused.returncode == 1
    nxt = next(ln for ln in refused.stderr.splitlines() if ln.startswith("next: "))
    assert_runnable(nxt[len("next: ") :])
    pasted = subprocess.run(
        ["bash", "-c", nxt[len("next: ") :]],
        cwd=ROOT,
        env={**invoke.env, **env, "PATH": f"{ROOT / '.venv' / 'bin'}:{invoke.env['PATH']}"},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert pasted.returncode == 0, pasted.stderr
    assert not pwned.exists()
