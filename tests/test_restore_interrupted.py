"""restore and restore-undo interrupted (Ctrl-C / SIGTERM: KeyboardInterrupt in the host) at a
named step, in-process against a real PostgreSQL: exit status 130, one "interrupted" audit
record (after the "swapping" intent when the swap had begun) with the state read back from
the server, and the live database as it was. No timing: the interruption is raised at the step."""

from __future__ import annotations

import pytest

from dbops import audit, catalog
from dbops.agent_client import Agent
from dbops.errors import OpsError
from dbops.ops import backup as backup_op
from dbops.ops import restore as restore_op
from dbops.ops import restore_swap


def quiet(_line: str) -> None:
    pass


@pytest.fixture
def backed_up(settings, db_conn):
    """A database with 100 rows and one verified backup of it: its path."""
    db_conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    db_conn.execute("INSERT INTO items SELECT generate_series(1, 100)")
    backup_op.backup(settings, prune=False, warn=quiet)
    [entry] = catalog.list_backups(settings)
    return entry["path"]


def interrupt_before_sending(monkeypatch, op: str) -> None:
    """Ctrl-C as the host is about to send ``op``: the agent is stopped (Agent.call closes it),
    so ``op`` never reaches the server."""
    send = Agent._send

    def _send(self, obj):
        if obj.get("op") == op:
            raise KeyboardInterrupt
        return send(self, obj)

    monkeypatch.setattr(Agent, "_send", _send)


def items(pg_cluster, database) -> int:
    with pg_cluster.connect(database) as conn:
        return conn.execute("SELECT count(*) FROM items").fetchone()[0]


def databases_like(pg_cluster, pattern: str) -> list[str]:
    with pg_cluster.connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", [pattern]
        ).fetchall()
    return [r[0] for r in rows]


def restore_quietly(settings, path, **flags) -> dict:
    return restore_op.restore(settings, path, yes=True, out=quiet, warn=quiet, **flags)


def test_restore_interrupted_while_pg_restore_runs_drops_the_new_copy_and_exits_130(
    settings, pg_cluster, database, backed_up, db_conn, monkeypatch
):
    db_conn.execute("INSERT INTO items VALUES (1000)")  # the live state differs from the dump

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(restore_swap, "follow_file", interrupted)
    before = databases_like(pg_cluster, f"{database}%")
    with pytest.raises(OpsError) as err:
        restore_quietly(settings, backed_up)
    assert err.value.exit_code == 130 and err.value.message == "restore interrupted"
    assert f"{database} is unchanged (the new database was dropped)" in err.value.state
    rec = audit.read(settings)[-1]
    assert rec["action"] == "restore" and rec["result"] == "interrupted"
    assert rec["error"] == "interrupted" and rec["file"] == str(backed_up)
    assert rec["state"].startswith(f"{database} is unchanged")
    assert not [r for r in audit.read(settings) if r["result"] == "swapping"]
    assert items(pg_cluster, database) == 101  # the live database as it was
    assert databases_like(pg_cluster, f"{database}%") == before


def test_restore_interrupted_at_the_swap_has_its_intent_then_interrupted_and_exits_130(
    settings, pg_cluster, database, backed_up, db_conn, monkeypatch
):
    db_conn.execute("INSERT INTO items VALUES (1000)")
    interrupt_before_sending(monkeypatch, "restore.swap")
    with pytest.raises(OpsError) as err:
        restore_quietly(settings, backed_up)
    assert err.value.exit_code == 130 and err.value.message == "restore interrupted"
    assert err.value.next_command == "invoke doctor"
    assert f"{database} is open (read from the server after the failure)" in err.value.state
    intent, outcome = audit.read(settings)[-2:]
    assert intent["result"] == "swapping" and intent["new_database"]
    assert intent["file"] == str(backed_up) and intent["to"] == outcome["to"]
    assert outcome["result"] == "interrupted" and outcome["op_id"] == intent["op_id"]
    assert items(pg_cluster, database) == 101  # the swap never reached the server


def test_an_interrupted_pre_restore_backup_stays_interrupted(
    settings, pg_cluster, database, backed_up, monkeypatch
):
    def backup_interrupted(*_args, **_kwargs):
        raise OpsError("backup interrupted", exit_code=130)

    monkeypatch.setattr(restore_swap, "take_backup", backup_interrupted)
    with pytest.raises(OpsError) as err:
        restore_quietly(settings, backed_up, pre_backup=True)
    assert err.value.exit_code == 130
    rec = audit.read(settings)[-1]
    assert rec["result"] == "interrupted"
    assert rec["error"] == "the pre-restore backup failed: backup interrupted"


def test_restore_records_ok_with_its_fields_through_one_operation(
    settings, pg_cluster, database, backed_up
):
    res = restore_quietly(settings, backed_up)
    intent, rec = audit.read(settings)[-2:]
    assert intent["result"] == "swapping" and intent["new_database"]
    assert rec["result"] == "ok" and rec["op_id"] == intent["op_id"]
    assert rec["old_database"] == res["old_database"] and rec["dropped_old"] is None
    assert rec["backup_database"] == database and rec["from"] == []
    assert rec["terminated"] == len(res["terminated"]) == 1  # the fixture's db_conn
    assert rec["timings"]["total_s"] >= rec["timings"]["pg_restore_s"] >= 0
    assert rec["duration_s"] >= rec["timings"]["total_s"] - 0.5


def test_restore_undo_interrupted_at_the_swap_exits_130_and_keeps_the_old_copy(
    settings, pg_cluster, database, backed_up, db_conn, monkeypatch
):
    kept = restore_quietly(settings, backed_up)["old_database"]
    interrupt_before_sending(monkeypatch, "restore.swap")
    with pytest.raises(OpsError) as err:
        restore_op.undo(settings, yes=True)
    assert err.value.exit_code == 130 and err.value.message == "restore-undo interrupted"
    assert err.value.next_command == "invoke doctor"
    intent, outcome = audit.read(settings)[-2:]
    assert intent["action"] == outcome["action"] == "restore-undo"
    assert intent["result"] == "swapping" and intent["swapped_in"] == kept
    assert outcome["result"] == "interrupted" and outcome["kept"] == kept
    assert outcome["state"].startswith(f"{database} is open")
    monkeypatch.undo()
    done = restore_op.undo(settings, yes=True)  # the interrupted undo left it to be done
    assert done["swapped_in"] == kept
    rec = audit.read(settings)[-1]
    assert rec["result"] == "ok" and rec["swapped_in"] == kept
    assert rec["old_database"] == done["old_database"] and "duration_s" in rec
