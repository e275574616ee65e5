"""dbops.lifecycle.Operation: one audit record on every outcome of a state-changing task,
with the exit code of the table in its docstring; intents written before the change."""

from __future__ import annotations

import pytest

from dbops import audit
from dbops.agent_client import AgentDied, AgentError
from dbops.errors import OpsError
from dbops.lifecycle import EXIT_CODES, Operation, Refused, outcome_of
from tests.conftest import offline_settings


@pytest.fixture
def settings(tmp_path):
    return offline_settings(tmp_path, DBOPS_BACKUP_DIR=str(tmp_path / "backups"))


def records(settings):
    return audit.read(settings)


def test_a_body_that_returns_is_recorded_ok_with_its_record_and_added_fields(settings):
    with Operation(settings, "stamp", **{"from": ["a1"]}) as op:
        op.add(backup="/b/x.dump")
    (rec,) = records(settings)
    assert rec["action"] == "stamp" and rec["result"] == "ok"
    assert rec["from"] == ["a1"] and rec["backup"] == "/b/x.dump"
    assert rec["op_id"] == op.op_id and rec["duration_s"] >= 0
    assert op.exit_code == 0


def test_finish_writes_once_and_leaving_the_block_adds_nothing(settings):
    with Operation(settings, "drill") as op:
        op.finish("ok", restored=3)
        op.finish("failed", error="second call")
    (rec,) = records(settings)
    assert rec["restored"] == 3 and rec["result"] == "ok"


@pytest.mark.parametrize(
    ("exc", "result", "code"),
    [
        (OpsError("disk full"), "failed", 1),
        (AgentError("relation exists", "upgrade", {}), "failed", 1),
        (AgentDied("the agent exited"), "agent_died", 1),
        (Refused("not confirmed"), "refused", 1),
        (OpsError("interrupted", exit_code=130), "interrupted", 130),
        (KeyboardInterrupt(), "interrupted", 130),
        (ValueError("boom"), "failed", 1),
    ],
)
def test_every_way_a_body_ends_has_its_record_and_exit_code(settings, exc, result, code):
    with pytest.raises(type(exc)), Operation(settings, "restore", database_was="app") as op:
        raise exc
    (rec,) = records(settings)
    assert rec["result"] == result and rec["database_was"] == "app"
    assert op.exit_code == code == EXIT_CODES[result]
    assert ("error" in rec) is not isinstance(exc, KeyboardInterrupt)


def test_an_agent_error_keeps_its_kind_and_a_bug_says_it_is_one():
    assert outcome_of(AgentError("x", "locked", {}))[1]["error_kind"] == "locked"
    result, fields = outcome_of(ZeroDivisionError("division by zero"))
    assert result == "failed" and fields == {
        "error": "ZeroDivisionError: division by zero",
        "bug": True,
    }


def test_the_intent_is_written_before_the_change_and_the_outcome_after(settings):
    with Operation(settings, "restore") as op:
        op.intent("swapping", new_database="app_new")
        assert [r["result"] for r in records(settings)] == ["swapping"]
    assert [r["result"] for r in records(settings)] == ["swapping", "ok"]
    assert {r["op_id"] for r in records(settings)} == {op.op_id}
    assert [r["result"] for r in audit.read(settings, intents=False)] == ["ok"]


def test_an_intent_that_cannot_be_written_stops_before_the_change(settings):
    settings.audit_log.parent.mkdir(parents=True, exist_ok=True)
    settings.audit_log.mkdir()  # a folder where the file should be: the append fails
    changed = []
    with pytest.raises(OpsError) as raised, Operation(settings, "stamp") as op:
        op.intent("applying", unchanged="a1 was not committed", revision="a1")
        changed.append("a1")
    assert changed == []
    assert "so a1 was not committed (stamp stopped before: applying)" in raised.value.message


def test_an_outcome_that_cannot_be_written_is_warned_not_raised(settings):
    settings.audit_log.parent.mkdir(parents=True, exist_ok=True)
    settings.audit_log.mkdir()
    warned = []
    with Operation(settings, "drill", warn=warned.append) as op:
        pass
    assert op.written == {}
    assert "this drill's outcome (ok) is not recorded there" in warned[0]
