"""stamp and recover --apply through the lifecycle (issue 18): the "applying" line before the
version row changes, the agent's commit only on the host's word, a dead agent's record with
the rows read back, and the settlement of a line whose host died, read from the database."""

from __future__ import annotations

import pytest

from dbops import audit
from dbops.agent_client import Agent, AgentDied
from dbops.errors import OpsError
from dbops.lifecycle import Operation
from dbops.ops import settle as settle_op
from dbops.ops import stamp as stamp_op
from tests.fixtures.projects import SAMPLE_HEAD, SAMPLE_REVS, version_rows

FIRST = SAMPLE_REVS[0]


def records(settings, action: str) -> list[dict]:
    return [r for r in audit.read(settings) if r.get("action") == action]


def quiet(_line: str) -> None:
    pass


def test_stamp_writes_its_intent_then_its_outcome_under_one_op_id(settings, alembic_at, db_conn):
    alembic_at(FIRST)
    res = stamp_op.stamp(settings, SAMPLE_HEAD, yes=True, out=quiet)
    assert res["after"] == [SAMPLE_HEAD] == version_rows(db_conn)
    applying, ok = records(settings, "stamp")
    assert applying["result"] == "applying" and applying["stamp_to"] == [SAMPLE_HEAD]
    assert applying["from"] == [FIRST]
    assert ok["result"] == "ok" and ok["op_id"] == applying["op_id"]
    assert ok["to"] == [SAMPLE_HEAD] and ok["previous_version_rows"] == [FIRST]


@pytest.mark.parametrize("say", [True, False], ids=["commit", "no"])
def test_stamp_apply_commits_only_on_the_hosts_word(settings, alembic_at, db_conn, say):
    alembic_at(FIRST)
    asked: list[dict] = []

    def on_ready(what: dict) -> bool:
        asked.append(what)
        return say

    with Agent(settings) as agent:
        agent.call("lock.acquire", purpose="stamp")
        if say:
            agent.call("stamp.apply", to=SAMPLE_HEAD, handshake=True, on_ready=on_ready)
        else:  # told not to: it rolls back and exits, without an answer
            with pytest.raises(AgentDied):
                agent.call("stamp.apply", to=SAMPLE_HEAD, handshake=True, on_ready=on_ready)
    assert asked and all(w == {"stamp_to": [SAMPLE_HEAD]} for w in asked)
    assert version_rows(db_conn) == ([SAMPLE_HEAD] if say else [FIRST])


@pytest.mark.parametrize("say", [True, False], ids=["commit", "no"])
def test_recover_stamp_commits_only_on_the_hosts_word(settings, alembic_at, db_conn, say):
    alembic_at(SAMPLE_HEAD)
    db_conn.execute("DELETE FROM alembic_version")
    asked: list[dict] = []

    def on_ready(what: dict) -> bool:
        asked.append(what)
        return say

    args = {"revisions": [SAMPLE_HEAD], "handshake": True, "on_ready": on_ready}
    with Agent(settings) as agent:
        insp = agent.call("recover.inspect")
        agent.call("lock.acquire", purpose="recover")
        args.update(expect_current=insp["current"], expect_hash=insp["live"]["hash"])
        if say:
            assert agent.call("recover.stamp", **args)["after"] == [SAMPLE_HEAD]
        else:
            with pytest.raises(AgentDied):
                agent.call("recover.stamp", **args)
    assert asked and all(w == {"stamp_to": [SAMPLE_HEAD]} for w in asked)
    assert version_rows(db_conn) == ([SAMPLE_HEAD] if say else [])


def test_stamp_whose_agent_dies_is_recorded_with_the_rows_read_back(
    settings, alembic_at, db_conn, monkeypatch
):
    alembic_at(FIRST)
    real = Agent.call

    def killed_first(self, op, **kw):  # the real agent process dies as it is asked to stamp
        if op == "stamp.apply":
            self.proc.kill()
            self.proc.wait()
        return real(self, op, **kw)

    monkeypatch.setattr(Agent, "call", killed_first)
    with pytest.raises(OpsError) as err:
        stamp_op.stamp(settings, SAMPLE_HEAD, yes=True, out=quiet)
    assert version_rows(db_conn) == [FIRST]
    assert err.value.message.startswith("stamp stopped: the dbops agent exited")
    assert f"before: {FIRST}; now: {FIRST} (read from the database" in err.value.state
    applying, died = records(settings, "stamp")
    assert applying["result"] == "applying"
    assert died["result"] == "agent_died" and died["op_id"] == applying["op_id"]
    assert died["to"] == [FIRST] and "error" in died
    assert settle_op.unsettled(settings) == []  # its outcome is recorded: nothing to settle


def died_applying(settings, action: str) -> Operation:
    """A host that wrote its "applying" line and was killed before its outcome."""
    op = Operation(settings, action)
    op.intent("applying", stamp_to=[SAMPLE_HEAD], **{"from": [FIRST]})
    return op


@pytest.mark.parametrize("action", ["stamp", "recover"])
@pytest.mark.parametrize("landed", [True, False], ids=["committed", "rolled-back"])
def test_a_version_row_rewrite_without_outcome_is_settled_from_the_database(
    settings, alembic_at, db_conn, action, landed
):
    alembic_at(SAMPLE_HEAD if landed else FIRST)
    op = died_applying(settings, action)
    [orphan] = settle_op.unsettled(settings)
    assert orphan["op_id"] == op.op_id
    said: list[str] = []
    [settled] = settle_op.settle_now(settings, said.append)
    assert settled["op_id"] == op.op_id and settled["action"] == action
    assert settled["result"] == "host_died" and settled["settled_by"] == "doctor --settle"
    assert settled["committed"] is landed and settled["to"] == version_rows(db_conn)
    assert settled["stamp_to"] == [SAMPLE_HEAD] and settled["from"] == [FIRST]
    assert ("the rewrite DID commit" if landed else "the rewrite did NOT commit") in said[0]
    assert settle_op.unsettled(settings) == []


def test_rows_that_are_neither_the_old_nor_the_new_ones_are_not_called_either(
    settings, alembic_at, db_conn
):
    alembic_at(SAMPLE_REVS[1])
    died_applying(settings, "stamp")
    said: list[str] = []
    [settled] = settle_op.settle_now(settings, said.append)
    assert settled["committed"] is None and settled["to"] == [SAMPLE_REVS[1]]
    assert "neither the old nor the new rows" in said[0]


def test_the_next_stamp_settles_a_dead_stamps_line_first(settings, alembic_at, db_conn):
    alembic_at(FIRST)
    dead = died_applying(settings, "stamp")
    said: list[str] = []
    stamp_op.stamp(settings, SAMPLE_HEAD, yes=True, out=said.append)
    assert any(line.startswith("settled:") and "did NOT commit" in line for line in said)
    results = [(r["op_id"] == dead.op_id, r["result"]) for r in records(settings, "stamp")]
    assert results == [(True, "applying"), (True, "host_died"), (False, "applying"), (False, "ok")]
    assert version_rows(db_conn) == [SAMPLE_HEAD]


@pytest.fixture
def cached(ops_env, recover_cache):
    """Settings whose recover cache is the session's (the expected schemas built once)."""
    from dbops.config import load_settings
    from tests.conftest import ROOT

    return load_settings(ROOT, environ={**ops_env, "DBOPS_CACHE_DIR": str(recover_cache)})


def test_recover_apply_whose_agent_dies_is_recorded_and_a_dead_stamp_settled_first(
    cached, alembic_at, db_conn, monkeypatch
):
    from dbops.ops import recover as recover_op

    alembic_at(SAMPLE_HEAD)
    db_conn.execute("DELETE FROM alembic_version")
    dead = died_applying(cached, "stamp")
    real = Agent.call

    def killed_first(self, op, **kw):  # the real agent process dies as it is asked to stamp
        if op == "recover.stamp":
            self.proc.kill()
            self.proc.wait()
        return real(self, op, **kw)

    monkeypatch.setattr(Agent, "call", killed_first)
    notes: list[str] = []
    with pytest.raises(OpsError) as err:
        recover_op.recover(cached, apply=True, yes=True, warn=notes.append)
    assert version_rows(db_conn) == []
    assert err.value.message.startswith("recover stopped: the dbops agent exited")
    assert "before: base; now: base (read from the database" in err.value.state
    assert err.value.next_command == "invoke recover"
    assert any(n.startswith("settled:") and "neither the old nor the new" in n for n in notes)
    stamps = [(r["op_id"] == dead.op_id, r["result"]) for r in records(cached, "stamp")]
    assert stamps == [(True, "applying"), (True, "host_died")]
    assert records(cached, "stamp")[-1]["settled_by"] == "recover"
    applying, died = records(cached, "recover")
    assert applying["result"] == "applying" and applying["stamp_to"] == [SAMPLE_HEAD]
    assert died["result"] == "agent_died" and died["op_id"] == applying["op_id"]
    assert died["to"] == [] and died["state"] == "no version row"
    assert settle_op.unsettled(cached) == []


def test_doctor_names_a_dead_stamps_line_with_what_the_rows_say(settings, alembic_at):
    from dbops.ops import doctor as doctor_op

    alembic_at(SAMPLE_HEAD)
    dead = died_applying(settings, "stamp")
    with Agent(settings) as agent:
        check = doctor_op.audit_record(doctor_op.Facts(settings, agent, schema=False))
    assert check.status == "warn" and check.data["unsettled"] == [dead.op_id]
    [said] = check.details
    assert f"rewriting the version row {FIRST} -> {SAMPLE_HEAD}" in said
    assert said.endswith("the version row says the rewrite DID commit")
    assert check.next.startswith(settle_op.SETTLE_COMMAND)
