"""ops/steps.audited: one audit record on every outcome of a run (ok, refused by the agent,
agent died, interrupted), with the same fields migrate and rollback always wrote."""

from __future__ import annotations

import time

import pytest

from dbops import audit
from dbops.agent_client import AgentError
from dbops.errors import OpsError
from dbops.ops.steps import Run, audited

HASHES = {"aaa": "h-a", "bbb": "h-b"}


def new_run(settings, **kw):
    return Run(
        settings,
        "migrate",
        ["000"],
        "/b/pre.dump",
        record={"from": ["000"], "requested": "head", "backup": "/b/pre.dump"},
        hashes=HASHES,
        started=time.monotonic(),
        **kw,
    )


def body(run, then):
    """Completes step aaa (and a skipped bbb), then ends as ``then`` says."""

    def go():
        run.done.append({"revision": "aaa", "seconds": 0.1})
        run.done.append({"revision": "bbb", "seconds": 0.0, "skipped": True})
        if isinstance(then, BaseException):
            raise then
        return then

    return go


def never(exc):
    raise AssertionError(f"failure() called for {exc}")


def test_ok_writes_the_verified_revision_and_completed_hashes(settings):
    run = new_run(settings, hash_keys=("revision_hashes", "revision_hashes_applied"))
    res = audited(run, body(run, {"current": ["aaa"]}), never)
    assert res == {"current": ["aaa"]}
    [rec] = audit.read(settings)
    assert rec["action"] == "migrate" and rec["result"] == "ok" and rec["to"] == ["aaa"]
    assert rec["from"] == ["000"] and rec["backup"] == "/b/pre.dump"
    assert rec["revision_hashes"] == rec["revision_hashes_applied"] == {"aaa": "h-a"}
    assert [s["revision"] for s in rec["steps"]] == ["aaa", "bbb"]
    assert rec["duration_s"] >= 0 and "error" not in rec


def test_agent_failure_is_described_by_the_operation_and_audited_with_its_state(settings):
    run = new_run(settings)
    exc = AgentError("boom", "upgrade", {"after": ["aaa"], "revision": "bbb"})
    with pytest.raises(OpsError) as raised:
        audited(run, body(run, exc), lambda e: OpsError(f"described {e.kind}", state="half"))
    assert raised.value.message == "described upgrade"
    [rec] = audit.read(settings)
    assert rec["result"] == "failed" and rec["to"] == ["aaa"] and rec["state"] == "half"
    assert rec["error"] == "boom" and rec["error_kind"] == "upgrade"
    assert rec["revision_hashes"] == {"aaa": "h-a"} and "revision_hashes_applied" not in rec


def test_agent_died_names_what_completed(settings):
    run = new_run(settings)
    with pytest.raises(OpsError) as raised:
        audited(run, body(run, OpsError("the agent exited (status -9)")), never)
    assert raised.value.message == "migrate stopped: the agent exited (status -9)"
    assert "completed by this run: aaa;" in raised.value.state
    assert raised.value.details == ["migrate backup: /b/pre.dump"]
    [rec] = audit.read(settings)
    assert rec["result"] == "failed" and rec["error_kind"] == "agent_died"
    assert rec["to"] == [] and "now (read from the database after" in raised.value.state


def test_interrupted_exits_130_and_is_audited(settings):
    run = new_run(settings)
    with pytest.raises(OpsError) as raised:
        audited(run, body(run, KeyboardInterrupt()), never)
    assert raised.value.exit_code == 130 and raised.value.message == "migrate interrupted"
    [rec] = audit.read(settings)
    assert rec["result"] == "interrupted" and rec["to"] == [] and "error" not in rec
    assert rec["revision_hashes"] == {"aaa": "h-a"}


def test_an_applying_line_that_cannot_be_written_refuses_the_commit(ops_env):
    from dbops.config import load_settings
    from tests.fixtures.projects import ROOT

    unwritable = load_settings(ROOT, environ={**ops_env, "DBOPS_AUDIT_LOG": "/dev/null/a.jsonl"})
    run = new_run(unwritable)
    with pytest.raises(OpsError) as raised:
        run.applying({"revision": "aaa", "direction": "up"})
    assert "aaa was not committed" in raised.value.message


def test_the_applying_line_carries_the_runs_id_and_precedes_its_outcome(settings):
    run = new_run(settings)
    assert run.applying({"revision": "aaa", "direction": "up", "transactional": True}) is True
    audited(run, body(run, {"current": ["aaa"]}), never)
    applying, outcome = audit.read(settings)
    assert applying["result"] == "applying" and applying["revision"] == "aaa"
    assert applying["from"] == ["000"] and outcome["result"] == "ok"
    assert applying["op_id"] == outcome["op_id"] == run.op_id
