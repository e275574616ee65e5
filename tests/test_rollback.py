"""invoke rollback --to: every earlier revision and back; refusals that change nothing;
the plan, data-loss acceptance, the pre-rollback backup and the offer to restore instead."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from tests.fixtures.projects import (
    REVS,
    SAMPLE_HEAD,
    SAMPLE_REVS,
    catalog,
    make_project,
    version_rows,
)
from tests.fixtures.records import audit_records

NB = "--no-backup"


def test_rollback_to_each_earlier_revision_and_back_to_head(invoke, db_conn):
    assert invoke("migrate", NB).returncode == 0
    at_head = catalog(db_conn)
    for target in reversed(["base", *SAMPLE_REVS[:-1]]):
        done = invoke("rollback", "--to", target, "--accept-data-loss", "--yes", NB)
        assert done.returncode == 0, done.stderr
        assert version_rows(db_conn) == ([] if target == "base" else [target])
        assert f"verified: database is at {'base' if target == 'base' else target}" in done.stdout
        done = invoke("migrate", NB)
        assert done.returncode == 0, done.stderr
        assert f"verified: database is at {SAMPLE_HEAD}" in done.stdout
        assert "schema matches the models" in done.stdout
        assert version_rows(db_conn) == [SAMPLE_HEAD]
    assert catalog(db_conn)["columns"] == at_head["columns"]


def test_relative_and_prefix_targets(invoke, db_conn):
    assert invoke("migrate", NB).returncode == 0
    done = invoke("rollback", "--to=-2", "--accept-data-loss", NB)
    assert done.returncode == 0, done.stderr
    assert version_rows(db_conn) == [SAMPLE_REVS[-3]]
    done = invoke("rollback", "--to", SAMPLE_REVS[1][:4], "--accept-data-loss", NB)
    assert done.returncode == 0, done.stderr
    assert version_rows(db_conn) == [SAMPLE_REVS[1]]


@pytest.mark.parametrize(
    "spec,expect",
    [
        ("garbage", "names no revision"),
        ("d9", "ambiguous"),  # d90082bb79a0 and d93ad7974446
        ("d93ad7974446", "not an ancestor"),  # above the current revision
        ("-9", "goes below base"),
    ],
)
def test_bad_targets_are_refused_and_change_nothing(invoke, db_conn, ops_env, spec, expect):
    assert invoke("migrate", "--to", "1be15b655bdb", NB).returncode == 0
    before = catalog(db_conn)
    done = invoke("rollback", f"--to={spec}", "--yes", "--accept-data-loss")
    assert done.returncode != 0
    assert expect in done.stderr
    assert "candidates:" in done.stderr or expect == "goes below base"
    assert "unchanged at 1be15b655bdb" in done.stderr
    assert catalog(db_conn) == before
    assert audit_records(ops_env, "rollback") == []
    assert "pre-rollback" not in done.stdout


def test_rollback_from_an_unknown_current_is_refused(invoke, db_conn):
    assert invoke("migrate", NB).returncode == 0
    db_conn.execute("UPDATE alembic_version SET version_num = 'feedface0000'")
    before = catalog(db_conn)
    done = invoke("rollback", "--to=-1", "--yes", "--accept-data-loss")
    assert done.returncode != 0
    assert "feedface0000" in done.stderr and "invoke stamp" in done.stderr
    assert catalog(db_conn) == before


def add_session(conn, bio: str | None = "hello") -> None:
    """One user (with a bio) and one session: rows a rollback past them would lose."""
    conn.execute("INSERT INTO users (id, username, email, bio) VALUES (1, 'ann', 'a@x', %s)", [bio])
    conn.execute(
        "INSERT INTO user_sessions (id, user_id, session_token, expires_at) "
        "VALUES (1, 1, 'tok', now())"
    )


def test_data_loss_needs_acceptance_and_the_plan_says_what_is_dropped(invoke, db_conn):
    assert invoke("migrate", NB).returncode == 0
    add_session(db_conn)
    before = catalog(db_conn)
    done = invoke("rollback", "--to", "308ea353e93f", "--yes")
    assert done.returncode != 0
    out = done.stdout
    assert "DATA LOSS: drops table user_sessions: 1 row" in out
    assert (
        "99e0e8546901  add tag_stats table\n      no data loss: drops table tag_stats: 0 rows"
        in out
    )
    assert "drops column users.bio: 1 non-NULL value" in out
    assert "drops column users.last_login: 0 non-NULL values" in out
    assert "23cd436768a8  add performance indexes\n      no data loss" in out
    assert "--accept-data-loss" in done.stderr
    assert catalog(db_conn) == before


def test_dropping_only_empty_tables_and_null_columns_needs_only_yes(invoke, db_conn):
    assert invoke("migrate", NB).returncode == 0
    db_conn.execute("INSERT INTO users (id, username, email) VALUES (1, 'ann', 'a@x')")  # bio NULL
    done = invoke("rollback", "--to=308ea353e93f")
    assert done.returncode != 0
    assert "drops table user_sessions: 0 rows" in done.stdout
    assert "drops column users.bio: 0 non-NULL values" in done.stdout
    assert "DATA LOSS" not in done.stdout
    assert "--yes" in done.stderr and "--accept-data-loss" not in done.stderr
    done = invoke("rollback", "--to=308ea353e93f", "--yes", NB)
    assert done.returncode == 0, done.stderr
    assert version_rows(db_conn) == ["308ea353e93f"]


def test_rows_that_cannot_be_counted_still_need_acceptance(invoke, db_conn, pg_cluster, database):
    """A table another session holds ACCESS EXCLUSIVE can be neither copied for the downgrade
    trace nor counted (lock timeouts): the plan assumes data loss and refuses without
    --accept-data-loss."""
    assert invoke("migrate", NB).returncode == 0
    holder = pg_cluster.connect(database, autocommit=False)
    try:
        holder.execute("LOCK TABLE user_sessions IN ACCESS EXCLUSIVE MODE")
        done = invoke("rollback", "--to=-1", "--yes", NB)
    finally:
        holder.rollback()
        holder.close()
    assert done.returncode != 0
    assert "DATA LOSS: cannot tell what it destroys (copying the live schema" in done.stdout
    # pg_dump 18 locks every table in one statement: LOCK TABLE public.a, public.b, ... IN ...
    locked = r"LOCK TABLE [^)]*public\.user_sessions[^)]* IN ACCESS SHARE MODE"
    assert re.search(locked, done.stdout), done.stdout
    assert "--accept-data-loss" in done.stderr
    assert version_rows(db_conn) == [SAMPLE_HEAD]


def test_no_data_loss_plan_needs_only_yes(invoke, db_conn):
    assert invoke("migrate", "--to", "23cd436768a8", NB).returncode == 0
    done = invoke("rollback", "--to=-1")
    assert done.returncode != 0 and "--yes" in done.stderr
    done = invoke("rollback", "--to=-1", "--yes", NB)
    assert done.returncode == 0, done.stderr
    assert version_rows(db_conn) == ["1be15b655bdb"]


def test_backup_first_audit_and_the_offer_to_restore_a_backup_taken_at_the_target(
    invoke, db_conn, ops_env
):
    assert invoke("migrate", "--to", "1be15b655bdb", NB).returncode == 0
    assert invoke("migrate").returncode == 0  # its pre-migrate backup is AT 1be15b655bdb
    add_session(db_conn)
    done = invoke("rollback", "--to", "1be15b655bdb", "--accept-data-loss")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "a verified backup taken at 1be15b655bdb exists" in out and "pre-migrate" in out
    [at_target] = Path(ops_env["DBOPS_BACKUP_DIR"]).glob("*pre-migrate*.dump")
    assert f"invoke restore {at_target}" in out  # the one form of the restore command
    assert "pre-rollback backup:" in out
    [rec] = audit_records(ops_env, "rollback")
    assert rec["result"] == "ok" and rec["from"] == [SAMPLE_HEAD] and rec["to"] == ["1be15b655bdb"]
    assert rec["backup"] and "pre-rollback" in rec["backup"] and rec["backup"] in out
    assert sorted(rec["revision_hashes"]) == sorted(SAMPLE_REVS[3:])
    assert rec["accepted_data_loss"] is True


def test_not_implemented_downgrade_is_refused(invoke, tmp_path, db_conn):
    ini = make_project(tmp_path, "irreversible")
    env = {"DBOPS_ALEMBIC_INI": str(ini)}
    assert invoke("migrate", NB, env=env).returncode == 0
    done = invoke("rollback", "--to=-1", "--yes", env=env)
    assert done.returncode != 0
    assert "NOT IMPLEMENTED" in done.stdout and "not implemented" in done.stderr
    assert version_rows(db_conn) == [REVS["irreversible"].rev]


def test_revision_specs_resolve_like_alembic(tmp_path, monkeypatch):
    """Full id, unique prefix, relative, base, branch label (no database needed)."""
    import dataclasses

    from dbops.agent.plan import resolve
    from dbops.agent.protocol import AgentFailure

    monkeypatch.setitem(REVS, "flag", dataclasses.replace(REVS["flag"], labels="('flagging',)"))
    monkeypatch.setenv("POSTGRES_USER", "nobody")  # the agent masks its password in messages
    monkeypatch.setenv("POSTGRES_DB", "nothing")
    ini = make_project(tmp_path, "flag", "accepted")
    script = ScriptDirectory.from_config(Config(str(ini)))
    cur = [REVS["accepted"].rev]
    flag = REVS["flag"].rev
    assert resolve(script, "flagging", cur).revision == flag
    assert resolve(script, flag[:4], cur).revision == flag
    assert resolve(script, "-1", cur).revision == flag
    assert resolve(script, "-2", cur).revision == SAMPLE_HEAD
    assert resolve(script, "base", cur) is None
    for bad, reason in (("zzz", "unknown"), ("d9", "ambiguous")):
        with pytest.raises(AgentFailure) as exc:
            resolve(script, bad, cur)
        assert exc.value.kind == "bad_target" and exc.value.details["reason"] == reason
        assert exc.value.details["candidates"]


def test_rows_that_arrive_after_an_empty_plan_are_caught_under_the_lock(settings, db_conn, invoke):
    """Counted at plan time (0 rows: --yes is enough) and again under the lock: a row written in
    between is not dropped silently."""
    from dbops.errors import OpsError
    from dbops.ops import rollback as rollback_op

    assert invoke("migrate", NB).returncode == 0
    db_conn.execute("INSERT INTO users (id, username, email) VALUES (1, 'ann', 'a@x')")
    seen = []

    def out(line: str) -> None:
        seen.append(line)
        if "drops table user_sessions: 0 rows" in line:  # the plan is on screen: a user logs in
            db_conn.execute(
                "INSERT INTO user_sessions (id, user_id, session_token, expires_at) "
                "VALUES (1, 1, 'tok', now())"
            )

    with pytest.raises(OpsError) as exc:
        rollback_op.rollback(settings, "-1", yes=True, backup=False, out=out)
    assert "counted again under the lock: drops table user_sessions: 1 row" in exc.value.message
    assert "--accept-data-loss" in exc.value.next_command
    assert version_rows(db_conn) == [SAMPLE_HEAD]
    assert db_conn.execute("SELECT count(*) FROM user_sessions").fetchone()[0] == 1
