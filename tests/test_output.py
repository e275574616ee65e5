"""Ops print through the channels they are given (out, warn), never straight to stderr:
the task chooses where lines go."""

from __future__ import annotations

from pathlib import Path

from dbops import catalog
from dbops.ops import backup as backup_op
from dbops.ops import recover as recover_op
from dbops.ops import restore as restore_op


def test_restore_reports_and_warns_through_the_given_channels(settings, pg_cluster, database,
                                                              db_conn, capfd):
    db_conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    backup_op.backup(settings, prune=False, warn=lambda line: None)
    [entry] = catalog.list_backups(settings)
    outs: list[str] = []
    warns: list[str] = []
    session = pg_cluster.connect(database)  # restore terminates the sessions, with a warning
    try:
        res = restore_op.restore(settings, entry["path"], yes=True, pre_backup=True, out=outs.append,
                                 warn=warns.append)
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
