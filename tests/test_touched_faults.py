"""Faults of a touched (partial) pre-migrate backup, as for full ones: pg_dump killed mid-stream,
the disk full. Nothing is listed as a backup, the migration does not run, live is unchanged."""

from __future__ import annotations

import os
import signal

from dbops import catalog
from tests import test_backup_faults as faults
from tests.fixtures.projects import HEADER, SAMPLE_HEAD, make_project
from tests.test_backup_faults import (
    SLOW,
    assert_no_backup_left,
    assert_no_temp_left,
    fingerprint,
    partial_bigger_than,
    pids,
    start_invoke,
    wait_for,
)

big_template = faults.big_template  # fixtures: a fresh copy of a big database per test
database = faults.database

NEW_REV = "7c7c7c000001"
TOUCH_BIG = """
def upgrade():
    op.execute("UPDATE big SET b = upper(b) WHERE id % 2 = 0")


def downgrade():
    pass
"""


def setup(tmp_path, ops_env, alembic_at) -> dict:
    alembic_at(SAMPLE_HEAD)
    ini = make_project(tmp_path, patch_models=False)
    (ini.parent / "alembic" / "versions" / f"{NEW_REV}_big.py").write_text(
        HEADER.format(
            message="touch big",
            rev=NEW_REV,
            down=SAMPLE_HEAD,
            down_repr=repr(SAMPLE_HEAD),
            labels="None",
        )
        + TOUCH_BIG
    )
    (tmp_path / "t").mkdir()
    return {
        **ops_env,
        "DBOPS_ALEMBIC_INI": str(ini),
        "DBOPS_PREMIGRATE_BACKUP": "touched",
        "TMPDIR": str(tmp_path / "t"),
    }


def version(pg_cluster, database) -> str:
    with pg_cluster.connect(database) as conn:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_touched_backup_killed_mid_stream(
    ops_env, settings, pg_cluster, database, tmp_path, alembic_at
):
    env = setup(tmp_path, ops_env, alembic_at)
    before = fingerprint(pg_cluster, database)
    proc = start_invoke({**env, **SLOW}, "migrate")
    wait_for(
        partial_bigger_than(settings.backup_dir, 256 * 1024),
        timeout=60,
        what="the touched dump to stream",
    )
    victims = pids("^pg_dump --snapshot", env=f"TMPDIR={tmp_path / 't'}")
    assert victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "touched) backup failed, so nothing was changed" in err
    assert_no_backup_left(settings)
    assert fingerprint(pg_cluster, database) == before
    assert version(pg_cluster, database) == SAMPLE_HEAD
    assert_no_temp_left(tmp_path / "t")


def test_touched_backup_disk_full(ops_env, settings, pg_cluster, database, tmp_path, alembic_at):
    env = setup(tmp_path, ops_env, alembic_at)
    before = fingerprint(pg_cluster, database)
    proc = start_invoke(env, "migrate", prefix=["sh", "-c", 'ulimit -f 2048; exec "$@"', "sh"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "writing the backup" in err and "too large" in err.lower()
    assert "public.big: locked RowExclusive" in out  # it was a touched backup of big
    assert_no_backup_left(settings)
    assert catalog.list_backups(settings) == []
    assert fingerprint(pg_cluster, database) == before
    assert version(pg_cluster, database) == SAMPLE_HEAD
    assert_no_temp_left(tmp_path / "t")
