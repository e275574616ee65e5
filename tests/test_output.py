"""Ops print through the channels they are given (out, warn), never straight to stderr:
the task chooses where lines go."""

from __future__ import annotations

from pathlib import Path

from dbops import catalog
from dbops.agent_client import Agent
from dbops.ops import backup as backup_op
from dbops.ops import drill as drill_op
from dbops.ops import recover as recover_op
from dbops.ops import restore as restore_op
from dbops.ops.touched import touched_set
from tests.fixtures.projects import SAMPLE_HEAD


def test_restore_reports_and_warns_through_the_given_channels(
    settings, pg_cluster, database, db_conn, capfd
):
    db_conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    backup_op.backup(settings, prune=False, warn=lambda line: None)
    [entry] = catalog.list_backups(settings)
    outs: list[str] = []
    warns: list[str] = []
    session = pg_cluster.connect(database)  # restore terminates the sessions, with a warning
    try:
        res = restore_op.restore(
            settings, entry["path"], yes=True, pre_backup=True, out=outs.append, warn=warns.append
        )
    finally:
        session.close()
    assert res["database"] == database
    assert [w for w in warns if w.startswith("warning: terminating ")], warns
    assert [o for o in outs if o.startswith("pre-restore backup: ")], outs
    err = capfd.readouterr().err
    assert "warning: terminating" not in err and "pre-restore backup:" not in err


def test_recover_cache_problem_is_a_warning_on_the_given_channel(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    warns: list[str] = []
    insp = {"server_major": 15, "chain": []}
    recover_op.cache_store(Path(blocker) / "key.json", insp, [], warn=warns.append)
    assert len(warns) == 1 and warns[0].startswith("note: could not write the recover cache")


def test_touched_set_and_drill_notes_go_to_the_given_channel(
    settings, invoke, pg_cluster, ops_env, monkeypatch, capfd
):
    """The sweep of a killed touched-set run's copy is said on ``warn``; so is a drill's scratch
    database that could not be dropped."""
    from dbops.agent.touched import _scratch_purpose

    assert invoke("migrate", "--no-backup").returncode == 0
    for k in ("POSTGRES_USER", "POSTGRES_DB"):
        monkeypatch.setenv(k, ops_env[k])
    leftover = f"dbops_scratch_{_scratch_purpose()}_deadbeef"
    pg_cluster.create_database(leftover)
    capfd.readouterr()
    warns: list[str] = []
    with Agent(settings) as agent:
        agent.call("lock.acquire", purpose="migrate")
        touched_set(settings, agent, "head", [SAMPLE_HEAD], warn=warns.append)
        drill_op._drop(
            agent, "not_a_scratch_database", warns.append
        )  # the agent refuses: a warning
    assert warns[0] == f"dropped {leftover}, left behind by an interrupted touched-set run", warns
    assert warns[1].startswith(
        "warning: could not drop scratch database not_a_scratch_database: "
    ), warns
    with pg_cluster.connect() as conn:
        assert not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [leftover]
        ).fetchall()
    err = capfd.readouterr().err
    assert "left behind by an interrupted" not in err and "could not drop scratch" not in err
